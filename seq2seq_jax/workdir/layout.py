"""The workdir's layout, its config and the read-only queries on its checkpoints.

```
WORKDIR/
  config.json                  resolved experiment config                  (CONFIG_FILENAME)
  config_history/<n>.json      earlier versions of it, never overwritten   (CONFIG_HISTORY_DIRNAME)
  train.lock                   flock held by the training process 0        (LOCK_FILENAME)
  tokenizer/                   the tokenizer(s) of the data module         (TOKENIZER_DIRNAME)
  metrics.jsonl                one JSON object per logged step             (METRICS_FILENAME)
  tensorboard/                 TensorBoard event files                     (TENSORBOARD_DIRNAME)
  learning_curves.png          written at the end of training              (CURVES_FILENAME)
  checkpoints/                 Orbax CheckpointManager root                (CHECKPOINT_DIRNAME)
    <step>/state/              TrainState.checkpoint_items(): step, params, opt_state, rng
    <step>/data/               Grain iterator state, one JSON file per process
    <step>/metrics/            metrics given to `save` (only when a best metric is tracked)
  checkpoints.incomplete/      step directories set aside because they were never committed
  averaged/<step>/state/       {params}: the mean of the last N checkpoints (AVERAGED_DIRNAME,
                               written by the final evaluation with checkpoint.average_last=N)
  ema/<step>/state/            {params}: the moving average of the parameters (EMA_DIRNAME,
                               written by the final evaluation with optimizer.ema_decay > 0)
```

A step directory is complete when Orbax committed it (`commit_success.txt`, written last, before
the atomic rename of the temporary directory; orbax-checkpoint >= 0.12.3 writes it on local
disks too). Nothing here writes a checkpoint: `seq2seq_jax.training.checkpoint` is the writer,
`seq2seq_jax.training.experiment` takes the lock. Reading is safe while a trainer runs in the
same workdir: the metrics of a step are read through a read-only Orbax `CheckpointManager`,
which neither saves, deletes nor cleans up temporary directories.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import ml_collections

CONFIG_FILENAME = "config.json"
CONFIG_HISTORY_DIRNAME = "config_history"  # Earlier config.json versions: 1.json, 2.json, ...
LOCK_FILENAME = "train.lock"
TOKENIZER_DIRNAME = "tokenizer"
METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
CURVES_FILENAME = "learning_curves.png"
CHECKPOINT_DIRNAME = "checkpoints"
INCOMPLETE_DIRNAME = "checkpoints.incomplete"
AVERAGED_DIRNAME = "averaged"
EMA_DIRNAME = "ema"
# Parameters-only checkpoints written by the final evaluation: kind -> (directory, how to get one).
PARAMS_ONLY_KINDS = {
    "averaged": (
        AVERAGED_DIRNAME,
        "train with config.checkpoint.average_last=N, or decode with --average_checkpoints=N",
    ),
    "ema": (EMA_DIRNAME, "train with config.optimizer.ema_decay > 0"),
}
STATE_ITEM = "state"  # Orbax items of a step directory.
DATA_ITEM = "data"
COMMIT_MARKER = "commit_success.txt"


class CheckpointError(ValueError):
    """A checkpoint is corrupt or incomplete, or a save failed (the message names the path)."""


# ------------------------------------------------------------------------------------------------
# The config.


def save_config(config: ml_collections.ConfigDict, workdir: os.PathLike | str) -> Path:
    """Writes the resolved config as `WORKDIR/config.json` (sorted keys) and returns its path.

    A different earlier `config.json` is kept as `WORKDIR/config_history/<n>.json` (n = 1, 2,
    ... in order), so no version of a run's config is ever lost.
    """
    path = Path(workdir) / CONFIG_FILENAME
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    if path.is_file():
        old = path.read_text()
        if old == text:
            return path
        history = Path(workdir) / CONFIG_HISTORY_DIRNAME
        history.mkdir(exist_ok=True)
        numbers = [int(p.stem) for p in history.glob("*.json") if p.stem.isdigit()]
        _atomic_write(history / f"{max(numbers, default=0) + 1}.json", old)
    _atomic_write(path, text)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_config(workdir: os.PathLike | str) -> ml_collections.ConfigDict:
    """Reads `WORKDIR/config.json` back into a ConfigDict (tuples come back as lists).

    Raises:
      FileNotFoundError: there is no config.json.
      ValueError: it is not a JSON object (the message names the file, line and column).
    """
    path = Path(workdir) / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILENAME} in workdir {str(workdir)!r}")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(
            f"{path} holds a JSON {type(value).__name__}, not an object of config sections"
        )
    return ml_collections.ConfigDict(value)


# ------------------------------------------------------------------------------------------------
# Locating checkpoints.


def is_complete_step_dir(path: os.PathLike | str) -> bool:
    """Whether `path` is a committed Orbax step directory holding a saved `TrainState`."""
    path = Path(path)
    return (
        path.is_dir()
        and path.name.isdigit()
        and (path / COMMIT_MARKER).is_file()
        and (path / STATE_ITEM).is_dir()
    )


def complete_steps(checkpoints_dir: os.PathLike | str) -> list[int]:
    """Sorted steps of the complete step directories under `checkpoints_dir` ([] if absent)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoints_dir.iterdir() if is_complete_step_dir(p))


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where one checkpoint step lives and, when it sits in a workdir, that workdir's files.

    Attributes:
      step_dir: the Orbax step directory (`.../checkpoints/<step>`).
      step: the training step it holds.
      workdir: the workdir around it, or None when the step directory is not inside one.
    """

    step_dir: Path
    step: int
    workdir: Path | None

    @property
    def config_path(self) -> Path | None:
        """`WORKDIR/config.json` if it exists."""
        return _existing(self.workdir, CONFIG_FILENAME)

    @property
    def tokenizer_dir(self) -> Path | None:
        """`WORKDIR/tokenizer/` if it exists."""
        return _existing(self.workdir, TOKENIZER_DIRNAME)


def _existing(workdir: Path | None, name: str) -> Path | None:
    if workdir is None or not (workdir / name).exists():
        return None
    return workdir / name


def resolve_checkpoint(path: os.PathLike | str, step: int | None = None) -> CheckpointLocation:
    """Finds the checkpoint step that `path` designates.

    Args:
      path: a workdir (its latest complete step is used), its `checkpoints/` directory, or one
        step directory (`WORKDIR/checkpoints/<step>`).
      step: with a workdir or checkpoints directory, this step instead of the latest.

    Returns:
      The step directory, its step and the enclosing workdir (None if there is none).

    Raises:
      FileNotFoundError: `path` does not exist or holds no complete checkpoint (or not `step`).
      CheckpointError: `path` is a step directory that was never committed.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path does not exist: {path}")
    if path.name.isdigit() and (path / STATE_ITEM).exists():
        if not is_complete_step_dir(path):
            raise CheckpointError(f"incomplete checkpoint (no {COMMIT_MARKER}): {path}")
        if step is not None and step != int(path.name):
            raise ValueError(f"step={step} requested but {path} holds step {path.name}")
        workdir = path.parent.parent if path.parent.name == CHECKPOINT_DIRNAME else None
        return CheckpointLocation(step_dir=path, step=int(path.name), workdir=workdir)
    checkpoints_dir = path if path.name == CHECKPOINT_DIRNAME else path / CHECKPOINT_DIRNAME
    steps = complete_steps(checkpoints_dir)
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint in {path} (looked in {checkpoints_dir})")
    if step is not None and step not in steps:
        raise FileNotFoundError(
            f"no complete checkpoint of step {step} in {checkpoints_dir} (steps: {steps})"
        )
    chosen = steps[-1] if step is None else step
    return CheckpointLocation(
        step_dir=checkpoints_dir / str(chosen), step=chosen, workdir=checkpoints_dir.parent
    )


def last_step_dirs(workdir: os.PathLike | str, n: int) -> list[Path]:
    """The step directories of the last `n` complete checkpoints of a workdir, ascending.

    Raises:
      FileNotFoundError: the workdir holds no complete checkpoint.
      ValueError: `n` < 1.
    """
    if n < 1:
        raise ValueError(f"the number of checkpoints to average must be >= 1, got {n}")
    checkpoints_dir = resolve_checkpoint(workdir).step_dir.parent  # Raises if there is none.
    return [checkpoints_dir / str(s) for s in complete_steps(checkpoints_dir)[-n:]]


def params_only_dir(workdir: os.PathLike | str, kind: str) -> Path:
    """`WORKDIR/averaged` or `WORKDIR/ema` (`PARAMS_ONLY_KINDS`), the root of its step dirs."""
    if kind not in PARAMS_ONLY_KINDS:
        raise ValueError(
            f"unknown parameters-only checkpoint {kind!r}; known: {list(PARAMS_ONLY_KINDS)}"
        )
    return Path(workdir).expanduser().absolute() / PARAMS_ONLY_KINDS[kind][0]


def params_only_step_dir(workdir: os.PathLike | str, kind: str) -> Path:
    """The latest `WORKDIR/<averaged|ema>/<step>` directory.

    Raises:
      FileNotFoundError: the run saved no such parameters (naming the directory).
    """
    directory = params_only_dir(workdir, kind)
    steps = complete_steps(directory)
    if not steps:
        raise FileNotFoundError(
            f"no {kind} checkpoint in {directory} ({PARAMS_ONLY_KINDS[kind][1]})"
        )
    return directory / str(steps[-1])


def averaged_step_dir(workdir: os.PathLike | str) -> Path:
    """The latest `WORKDIR/averaged/<step>` directory (`params_only_step_dir`)."""
    return params_only_step_dir(workdir, "averaged")


# ------------------------------------------------------------------------------------------------
# Metrics saved with checkpoints, and the best step.


def metric_score(metrics: Mapping[str, Any] | None, name: str, mode: str) -> float:
    """Ranking score of a checkpoint's metrics, higher is better; NaN/missing rank last (-inf)."""
    value = float("nan") if not metrics or name not in metrics else float(metrics[name])
    if not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


def rank_best(
    metrics_by_step: Mapping[int, Mapping[str, Any] | None], metric: str, mode: str
) -> int | None:
    """The step with the best finite `metric` (ties: the later step); None if none has one.
    NaN, infinite or missing values never count as best."""
    scored = [(metric_score(m, metric, mode), s) for s, m in metrics_by_step.items()]
    scored = [(score, s) for score, s in scored if math.isfinite(score)]
    return max(scored)[1] if scored else None


def saved_metrics(
    checkpoints_dir: os.PathLike | str, steps: Collection[int] | None = None
) -> dict[int, dict[str, Any] | None]:
    """`{step: metrics saved with it, or None}` for `steps` (default: the complete steps),
    read through a read-only Orbax `CheckpointManager`: it neither saves, deletes nor cleans up
    temporary directories, so it is safe beside a running trainer.

    Raises:
      CheckpointError: saved metrics that cannot be read (naming the directory).
    """
    import orbax.checkpoint as ocp

    checkpoints_dir = Path(checkpoints_dir)
    steps = complete_steps(checkpoints_dir) if steps is None else list(steps)
    if not steps:
        return {}
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False
    )
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # Orbax warns that a read-only manager is read-only.
    try:
        with ocp.CheckpointManager(checkpoints_dir, options=options) as manager:
            out = {}
            for step in steps:
                value = manager.metrics(step)
                out[step] = None if value is None else dict(value)
            return out
    except Exception as e:  # Orbax raises several types for unreadable JSON.
        raise CheckpointError(
            f"corrupt checkpoint metrics in {checkpoints_dir}: {type(e).__name__}: {e}"
        ) from e
    finally:
        absl.setLevel(level)


def best_step(checkpoints_dir: os.PathLike | str, metric: str, mode: str) -> int | None:
    """The complete step of `checkpoints_dir` with the best finite saved `metric` (ties: the
    later step), or None when no step has one."""
    return rank_best(saved_metrics(checkpoints_dir), metric, mode)
