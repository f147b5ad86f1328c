"""Where training numbers go: `metrics.jsonl`, TensorBoard events, a learning-curve PNG.

`metrics.jsonl` has one JSON object a line: `{"step": 100, "train_loss": 2.1, ...}` or
`{"step": 500, "eval_loss": ..., "eval_exact_match": ...}`. TensorBoard event files are written by
tensorboardX (no TensorFlow) into `WORKDIR/tensorboard/`, one scalar per metric name.
Only process 0 writes; other processes get a writer that does nothing.

A resumed run calls `drop_after(step)` with the step it restored: `metrics.jsonl` loses the
lines after it, and the TensorBoard writer opens with `purge_step=step + 1`, whose event tells
TensorBoard to hide the points of steps >= step + 1 written by the interrupted run (they would
otherwise show twice, the stale curve beside the redone one).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seq2seq_jax.workdir.layout import METRICS_FILENAME, TENSORBOARD_DIRNAME

_EVENT_FILES = itertools.count()  # Event file names unique within a process (see below).


def _jsonable(value: Any) -> Any:
    value = float(value) if not isinstance(value, (int, str, bool)) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsWriter:
    """Appends scalars to `metrics.jsonl` and TensorBoard; use as a context manager."""

    def __init__(
        self, workdir: os.PathLike | str, *, enabled: bool = True, tensorboard: bool = True
    ) -> None:
        """Opens the writers (nothing is opened when `enabled` is False).

        Args:
          workdir: the run's workdir (must exist).
          enabled: False on every process but 0.
          tensorboard: also write TensorBoard event files.
        """
        self.workdir = Path(workdir)
        self.path = self.workdir / METRICS_FILENAME
        self.enabled = enabled
        self._tensorboard = enabled and tensorboard
        self._purge_step: int | None = None
        self._tb = None  # Opened on the first write (after `drop_after` set the purge step).

    def _tensorboard_writer(self):
        if self._tb is None and self._tensorboard:
            from tensorboardX import SummaryWriter

            # tensorboardX names a file by the second and host only and truncates a file of
            # that name: a suffix keeps two writers of the same second from erasing each other.
            self._tb = SummaryWriter(
                logdir=str(self.workdir / TENSORBOARD_DIRNAME),
                purge_step=self._purge_step,
                filename_suffix=f".{os.getpid()}.{next(_EVENT_FILES)}",
            )
        return self._tb

    def drop_after(self, step: int) -> None:
        """Forgets what was written after `step` (a resumed run rewrites what it will redo).

        `metrics.jsonl` loses its lines with `step` > `step`, and a torn last line that a
        killed run left; the file is replaced atomically, so a kill during the rewrite loses
        nothing. TensorBoard hides the points of steps > `step` from the earlier event files:
        the event writer opens with `purge_step=step + 1` (reopened if it was open already).
        """
        if not self.enabled:
            return
        if self._tensorboard:
            self.close()
            self._purge_step = int(step) + 1
        if not self.path.exists():
            return
        kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(self.path)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Writes one line `{"step": step, **scalars}` (non-finite values become null)."""
        if not self.enabled or not scalars:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard_writer()
        if tb is not None:
            for name, value in scalars.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    tb.add_scalar(name, float(value), int(step))
            tb.flush()

    def close(self) -> None:
        """Flushes and closes TensorBoard."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def read_metrics(path: os.PathLike | str) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file, in order.

    A last line cut short (a run killed or out of disk space while appending) is skipped.

    Raises:
      ValueError: a line before the last is not a JSON object (naming the file and line).
    """
    with open(path) as f:
        lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == lines[-1][0]:
                break
            raise ValueError(f"{path}, line {i}: not a JSON record ({e})") from e
        records.append(record)
    return records


def _series(records: list[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_learning_curves(metrics_path: os.PathLike | str, png_path: os.PathLike | str) -> Path:
    """Draws losses (left) and the evaluation task metrics (right) against the step.

    Args:
      metrics_path: a `metrics.jsonl` file.
      png_path: where to write the PNG.

    Returns:
      The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    fig, (ax_loss, ax_task) = plt.subplots(1, 2, figsize=(11, 4))
    for name in ("train_loss", "eval_loss"):
        steps, values = _series(records, name)
        if steps:
            ax_loss.plot(steps, values, marker="." if name.startswith("eval") else None, label=name)
    ax_loss.set(xlabel="step", ylabel="loss (label-smoothed CE)", title="Loss")
    task = ("eval_exact_match", "eval_bleu", "eval_chrf", "eval_accuracy")
    for name in task:
        steps, values = _series(records, name)
        if steps:
            ax_task.plot(steps, values, marker=".", label=name)
    ax_task.set(xlabel="step", title="Evaluation")
    for ax in (ax_loss, ax_task):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
