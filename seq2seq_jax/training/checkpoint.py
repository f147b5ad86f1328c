"""Checkpoints: an Orbax `CheckpointManager` in the workdir that resumes exactly.

Layout of a self-contained workdir (the config and tokenizer are written by the training loop and
the data module; this module only knows where they live):

```
WORKDIR/
  config.json                  resolved experiment config          (CONFIG_FILENAME)
  tokenizer/                   the tokenizer(s) of the data module  (TOKENIZER_DIRNAME)
  checkpoints/                 Orbax CheckpointManager root        (CHECKPOINT_DIRNAME)
    <step>/state/              TrainState.checkpoint_items(): step, params, opt_state, rng
    <step>/data/               Grain iterator state, one JSON file per process
    <step>/metrics/            metrics given to `save` (only when a best metric is tracked)
  checkpoints.incomplete/      step directories set aside because they were never committed
  averaged/<step>/state/       {params}: the mean of the last N checkpoints (AVERAGED_DIRNAME,
                               written by the final evaluation with checkpoint.average_last=N)
```

A step directory is complete when Orbax committed it (`commit_success.txt`, written last, before
the atomic rename of the temporary directory). Orbax's own temporary directories
(`<step>.orbax-checkpoint-tmp-*`) are removed when a `Checkpointer` opens the directory; step
directories without the commit marker (a crash on a file system without atomic rename, an
interrupted copy) are moved to `checkpoints.incomplete/` with a warning, so they can neither be
resumed from nor block a new save of that step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation

from seq2seq_jax.training.state import TrainState

PyTree = Any

CHECKPOINT_DIRNAME = "checkpoints"
INCOMPLETE_DIRNAME = "checkpoints.incomplete"
CONFIG_FILENAME = "config.json"
TOKENIZER_DIRNAME = "tokenizer"
STATE_ITEM = "state"
DATA_ITEM = "data"
COMMIT_MARKER = "commit_success.txt"
AVERAGED_DIRNAME = "averaged"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint is corrupt or incomplete, or a save failed (the message names the path)."""


# ------------------------------------------------------------------------------------------------
# Locating checkpoints.


def is_complete_step_dir(path: os.PathLike | str) -> bool:
    """Whether `path` is a committed Orbax step directory holding a saved `TrainState`."""
    path = Path(path)
    return (path.is_dir() and path.name.isdigit() and (path / COMMIT_MARKER).is_file()
            and (path / STATE_ITEM).is_dir())


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
        raise FileNotFoundError(f"no complete checkpoint of step {step} in {checkpoints_dir} "
                                f"(steps: {steps})")
    chosen = steps[-1] if step is None else step
    return CheckpointLocation(step_dir=checkpoints_dir / str(chosen), step=chosen,
                              workdir=checkpoints_dir.parent)


def set_aside_incomplete_steps(checkpoints_dir: Path) -> list[Path]:
    """Moves uncommitted step directories to `checkpoints.incomplete/`; returns their new paths."""
    moved = []
    if not checkpoints_dir.is_dir():
        return moved
    for p in sorted(checkpoints_dir.iterdir()):
        if p.is_dir() and p.name.isdigit() and not (p / COMMIT_MARKER).is_file():
            target = checkpoints_dir.parent / INCOMPLETE_DIRNAME / f"{p.name}.{time.time_ns()}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(p), str(target))
            log.warning("Set aside incomplete checkpoint %s -> %s", p, target)
            moved.append(target)
    return moved


# ------------------------------------------------------------------------------------------------
# Keep-best by a metric.


def metric_score(metrics: Mapping[str, Any] | None, name: str, mode: str) -> float:
    """Ranking score of a checkpoint's metrics, higher is better; NaN/missing rank last (-inf)."""
    value = float("nan") if not metrics or name not in metrics else float(metrics[name])
    if not math.isfinite(value):
        return -math.inf
    return value if mode == "max" else -value


def preservation_policy(max_to_keep: int | None, best_metric: str | None,
                        best_mode: str, keep_best: int) -> ocp_preservation.PreservationPolicy:
    """The `max_to_keep` latest steps, plus the `keep_best` best by `best_metric` if given.

    The latest step is always kept (LatestN), whatever its metric; the best set ranks NaN or
    missing metrics last, so a NaN never displaces a finite best.
    """
    latest = ocp_preservation.LatestN(n=max_to_keep)
    if best_metric is None:
        return latest
    best = ocp_preservation.BestN(
        get_metric_fn=lambda m: metric_score(m, best_metric, best_mode),
        reverse=False, n=keep_best, keep_checkpoints_without_metrics=False)
    return ocp_preservation.AnyPreservationPolicy([latest, best])


# ------------------------------------------------------------------------------------------------
# Abstract targets and shape checks.


def _replicated_sharding() -> jax.sharding.Sharding:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_tree(tree: PyTree) -> PyTree:
    """`jax.ShapeDtypeStruct`s with shardings for a tree of arrays or abstract arrays.

    Leaves keep their own sharding (a `jax.Array`'s, or a `ShapeDtypeStruct`'s `sharding=`);
    leaves without one are restored replicated over all devices.
    """
    default = None

    def one(x):
        nonlocal default
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            default = default or _replicated_sharding()
            sharding = default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


def path_str(path: tuple[Any, ...]) -> str:
    """'/'-joined key path, e.g. `encoder/embed/embedding` (as in optim.py's param paths)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """`{path: shape}` of every leaf of `tree` (arrays, abstract arrays or Orbax metadata)."""
    return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(saved: Mapping[str, tuple[int, ...]], target: Mapping[str, tuple[int, ...]],
                 where: Path, *, what: str = "parameter") -> None:
    """Raises if `saved` and `target` differ in paths or shapes, naming every difference."""
    missing = sorted(set(target) - set(saved))
    unexpected = sorted(set(saved) - set(target))
    mismatched = sorted(k for k in set(saved) & set(target) if saved[k] != target[k])
    problems = [f"{what} {k} missing from the checkpoint" for k in missing]
    problems += [f"checkpoint {what} {k} {saved[k]} not in the model" for k in unexpected]
    problems += [f"{what} {k}: checkpoint shape {saved[k]} != model shape {target[k]}"
                 for k in mismatched]
    if problems:
        raise ValueError(f"checkpoint {where} does not match the model: " + "; ".join(problems))


def read_state_metadata(step_dir: Path) -> dict[str, Any]:
    """The saved `TrainState` items' metadata tree (shapes, dtypes) of a step directory."""
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(step_dir / STATE_ITEM).tree
    except Exception as e:  # Orbax raises many types for unreadable metadata; re-raise as ours.
        raise CheckpointError(f"corrupt checkpoint {step_dir}: cannot read its metadata "
                              f"({type(e).__name__}: {e})") from e
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise CheckpointError(f"corrupt checkpoint {step_dir}: no saved parameters in "
                              f"{step_dir / STATE_ITEM}")
    return dict(tree)


# ------------------------------------------------------------------------------------------------
# The checkpointer used by the training loop.


class Checkpointer:
    """Saves and restores `TrainState` + Grain iterator state in `WORKDIR/checkpoints`.

    Use it as a context manager so pending asynchronous saves are finished (and their failures
    raised) on normal exit and on exceptions:

    ```
    with Checkpointer(workdir, save_every_steps=1000, max_to_keep=3,
                      best_metric="eval_bleu") as ckpt:
        if ckpt.latest_step() is not None:
            state = ckpt.restore(state, data_iterator=train_iter)
        for step in range(int(state.step) + 1, num_steps + 1):
            state, _ = train_step(state, next(train_iter))
            ckpt.save(step, state, train_iter, metrics=eval_metrics_or_None)
    ```
    """

    def __init__(self, workdir: os.PathLike | str, *, save_every_steps: int,
                 max_to_keep: int | None = 3, best_metric: str | None = None,
                 best_mode: Literal["max", "min"] = "max", keep_best: int = 1,
                 async_save: bool = True) -> None:
        """Opens (creating if needed) `WORKDIR/checkpoints`.

        Args:
          workdir: the run's workdir.
          save_every_steps: `save` writes when `step % save_every_steps == 0` (or `force`).
          max_to_keep: how many of the latest checkpoints to keep (None: all).
          best_metric: metric name (a key of the `metrics` given to `save`) whose best
            `keep_best` checkpoints are kept besides the latest ones; NaN never counts as best.
          best_mode: "max" (e.g. eval_bleu) or "min" (e.g. eval_loss).
          keep_best: how many best checkpoints to keep when `best_metric` is set.
          async_save: write in a background thread after copying arrays to host.
        """
        if save_every_steps < 1:
            raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.workdir = Path(workdir).expanduser().absolute()
        self.directory = self.workdir / CHECKPOINT_DIRNAME
        self.save_every_steps = save_every_steps
        self.best_metric, self.best_mode = best_metric, best_mode
        self._async = async_save
        self._pending_step: int | None = None
        self._closed = False
        if jax.process_index() == 0:
            set_aside_incomplete_steps(self.directory)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("seq2seq_jax.checkpoint.set_aside")
        track = None if best_metric is None else (lambda m: metric_score(m, best_metric,
                                                                         best_mode))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy(max_to_keep, best_metric, best_mode,
                                                    keep_best),
            best_fn=track, best_mode="max", cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                           DATA_ITEM: grain.checkpoint.CheckpointHandler()})

    # -- queries ----------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Steps of the committed checkpoints, ascending (pending async saves excluded)."""
        return complete_steps(self.directory)

    def latest_step(self) -> int | None:
        """The latest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def metrics(self, step: int) -> dict[str, Any] | None:
        """The metrics saved with `step` (None if none were saved or no metric is tracked)."""
        return self._manager.metrics(step)

    def best_step(self) -> int | None:
        """The committed step with the best finite `best_metric`, or None."""
        if self.best_metric is None:
            return None
        scored = [(metric_score(self.metrics(s), self.best_metric, self.best_mode), s)
                  for s in self.all_steps()]
        scored = [(score, s) for score, s in scored if math.isfinite(score)]
        return max(scored)[1] if scored else None

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without `force` writes a checkpoint."""
        return step > 0 and step % self.save_every_steps == 0

    # -- save -------------------------------------------------------------------------------

    def save(self, step: int, state: TrainState, data_iterator: Any = None,
             metrics: Mapping[str, Any] | None = None, force: bool = False) -> bool:
        """Saves `state` (and the Grain iterator's position) as checkpoint `step`.

        Args:
          step: the training step reached (normally `int(state.step)`).
          state: the (unreplicated) `TrainState`; its arrays are copied to host before return.
          data_iterator: a Grain `DatasetIterator` / `DataLoaderIterator` positioned after the
            last batch consumed by `state`; its state is read before `save` returns.
          metrics: scalars by name, e.g. `{"eval_bleu": 27.1}`; kept for keep-best.
          force: save even if `step` is not a multiple of `save_every_steps` (preemption, end).

        Returns:
          True if a save was started, False if skipped (not due, or `step` already saved).

        Raises:
          CheckpointError: this or the previous (asynchronous) save failed.
        """
        if self._closed:
            raise CheckpointError(f"save({step}) on a closed Checkpointer ({self.directory})")
        self._finish_pending()
        if not (force or self.should_save(step)) or step in self.all_steps():
            return False
        if not self.directory.is_dir():
            raise CheckpointError(f"saving step {step} to {self.directory} failed: the "
                                  "checkpoint directory is gone or not a directory")
        items = {STATE_ITEM: ocp.args.StandardSave(state.checkpoint_items())}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
        clean = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        try:
            started = self._manager.save(step, args=ocp.args.Composite(**items), metrics=clean,
                                         force=True)
        except Exception as e:  # Re-raised with the directory and step named.
            raise CheckpointError(f"saving step {step} to {self.directory} failed: "
                                  f"{type(e).__name__}: {e}") from e
        if started:
            self._pending_step = step
            if not self._async:
                self._finish_pending()
        return bool(started)

    def _finish_pending(self) -> None:
        """Waits for the pending save and raises if it did not commit."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:
            step, self._pending_step = self._pending_step, None
            raise CheckpointError(f"saving step {step} to {self.directory} failed: "
                                  f"{type(e).__name__}: {e}") from e
        step, self._pending_step = self._pending_step, None
        if step is not None and jax.process_index() == 0:
            if not is_complete_step_dir(self.directory / str(step)):
                raise CheckpointError(f"saving step {step} to {self.directory} failed: "
                                      f"{self.directory / str(step)} was not committed "
                                      "(see the Orbax errors logged above)")

    def wait(self) -> None:
        """Blocks until the pending save is committed; raises `CheckpointError` if it failed."""
        self._finish_pending()

    def close(self) -> None:
        """Finishes the pending save (raising if it failed) and releases Orbax's resources."""
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
            return False
        try:
            self.close()
        except Exception:  # Keep the original exception; the failed save is logged.
            log.exception("checkpoint save failed while handling %s", exc_type.__name__)
        return False

    # -- restore ----------------------------------------------------------------------------

    def restore(self, target: TrainState, data_iterator: Any = None,
                step: int | None = None) -> TrainState:
        """Restores checkpoint `step` (default: latest committed) onto `target`'s shardings.

        Args:
          target: a `TrainState` whose array leaves are concrete arrays or
            `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`; the restored arrays get those
            shardings (any device count or mesh), leaves without one are replicated. Its
            `apply_fn` and `tx` are kept.
          data_iterator: a Grain iterator of the same pipeline; set in place to the saved
            position.
          step: the step to restore.

        Returns:
          `target` with step, params, opt_state and rng replaced by the saved ones.

        Raises:
          FileNotFoundError: no committed checkpoint (of `step`) in the directory.
          ValueError: parameter paths or shapes differ from `target`'s (all differences named).
          CheckpointError: the checkpoint is corrupt or lacks the data-iterator state.
        """
        self._finish_pending()
        location = resolve_checkpoint(self.directory, step)
        saved = read_state_metadata(location.step_dir)
        check_shapes(shapes_by_path(saved["params"]), shapes_by_path(target.params),
                     location.step_dir)
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_tree(target.checkpoint_items()))}
        data_file = None if data_iterator is None else data_state_file(location.step_dir)
        if data_file == _this_process_data_file(location.step_dir):
            items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(location.step, args=ocp.args.Composite(**items))
        except Exception as e:  # Orbax/TensorStore raise many types; name the directory.
            raise CheckpointError(_restore_failure(location.step_dir, saved["opt_state"],
                                                   target.opt_state, e)) from e
        if data_file is not None and DATA_ITEM not in items:
            _set_state_from_other_process_count(data_iterator, data_file)
        return target.replace(**restored[STATE_ITEM])


def _restore_failure(step_dir: Path, saved_opt_state: PyTree, target_opt_state: PyTree,
                     error: Exception) -> str:
    """A short message for a failed restore: the optimizer-state difference if there is one."""
    saved, target = shapes_by_path(saved_opt_state), shapes_by_path(target_opt_state)
    differences = sorted(set(saved) ^ set(target))
    differences += sorted(k for k in set(saved) & set(target) if saved[k] != target[k])
    if differences:
        return (f"cannot restore {step_dir}: its optimizer state does not match the configured "
                f"optimizer ({len(differences)} differing entries, e.g. {differences[:3]}); "
                "resuming needs the optimizer the run was saved with (to start another optimizer "
                "from these parameters, fine-tune into a new workdir with init_checkpoint)")
    detail = " ".join(str(error).split())
    detail = detail if len(detail) <= 600 else detail[:600] + " ..."
    return f"cannot restore {step_dir}: {type(error).__name__}: {detail}"


# ------------------------------------------------------------------------------------------------
# Data-iterator state: one JSON file per process (`process_<i>-of-<n>.json`, Grain's handler).


def _this_process_data_file(step_dir: Path) -> Path:
    index, count = jax.process_index(), jax.process_count()
    return step_dir / DATA_ITEM / f"process_{index}-of-{count}.json"


def data_state_file(step_dir: Path) -> Path:
    """This process's data-iterator state file, or the nearest one of a run with another
    process count (process `index % n` of the `n` that saved).

    Raises:
      CheckpointError: the step holds no data-iterator state.
    """
    exact = _this_process_data_file(step_dir)
    if exact.is_file():
        return exact
    saved = sorted((step_dir / DATA_ITEM).glob("process_*-of-*.json"))
    if not saved:
        raise CheckpointError(f"{step_dir} holds no data-iterator state; it cannot resume the "
                              "data stream")
    count = int(saved[0].stem.rsplit("-of-", 1)[1])
    return step_dir / DATA_ITEM / f"process_{jax.process_index() % count}-of-{count}.json"


def _set_state_from_other_process_count(iterator: Any, state_file: Path) -> None:
    """Sets a `grain.DatasetIterator` from a state saved by another number of processes."""
    if not isinstance(iterator, grain.DatasetIterator):
        raise CheckpointError(f"{state_file.parent} was saved by another number of processes; "
                              f"{type(iterator).__name__} state cannot be carried over")
    log.warning("Data state saved by another number of processes: process %d of %d restores "
                "%s (the pipeline decides how exactly it resumes)", jax.process_index(),
                jax.process_count(), state_file)
    iterator.set_state(json.loads(state_file.read_text()))


# ------------------------------------------------------------------------------------------------
# Fine-tuning and decoding: parameters only.


def embedding_vocab_sizes(params: PyTree) -> set[int]:
    """First-axis sizes of the `embedding` tables (Flax `nn.Embed`) of a parameter tree."""
    return {int(shape[0]) for path, shape in shapes_by_path(params).items()
            if path.rsplit("/", 1)[-1] == "embedding" and shape}


def vocab_growth(saved: Mapping[str, tuple[int, ...]], target: Mapping[str, tuple[int, ...]],
                 vocab_sizes: Collection[int]) -> dict[str, int]:
    """`{path: axis}` of parameters whose shapes differ only by a growing vocabulary axis.

    A parameter qualifies when it has the same rank in both trees, exactly one axis differs,
    that axis is larger in `target`, and its new size is one of `vocab_sizes` (e.g. an
    embedding `[V, D]`, an output kernel `[D, V]` or bias `[V]` after adding tokens). Any other
    difference (a changed width, say) is left for `check_shapes` to report.
    """
    growth = {}
    for path in set(saved) & set(target):
        old, new = saved[path], target[path]
        if old == new or len(old) != len(new):
            continue
        axes = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if len(axes) == 1 and old[axes[0]] < new[axes[0]] and new[axes[0]] in vocab_sizes:
            growth[path] = axes[0]
    return growth


def _restore_params_tree(step_dir: Path, abstract: PyTree) -> PyTree:
    """Reads only `params` from a step directory into `abstract`'s shapes/dtypes/shardings."""
    item = {"params": abstract}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / STATE_ITEM,
            args=ocp.args.PyTreeRestore(
                item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True))
    except Exception as e:  # Orbax/TensorStore raise many types; name the directory.
        raise CheckpointError(f"cannot restore parameters from {step_dir}: "
                              f"{type(e).__name__}: {e}") from e
    return restored["params"]


def restore_params(path: os.PathLike | str, target_params: PyTree, *,
                   extend_vocab: bool = False,
                   vocab_sizes: Collection[int] | None = None) -> PyTree:
    """Restores only the parameters of a checkpoint, checked against the model's.

    Args:
      path: a workdir (latest complete step), its `checkpoints/` directory or a step directory.
      target_params: the model's parameters, freshly initialised (concrete arrays) or abstract
        (`jax.ShapeDtypeStruct`, optionally with `sharding=`); they give the tree, shapes,
        dtypes and shardings of the result.
      extend_vocab: accept parameters whose shape grows along exactly one axis to one of
        `vocab_sizes` (a larger vocabulary): the checkpoint's rows are kept and the new ones
        taken from `target_params`, which must then be concrete arrays.
      vocab_sizes: the model's vocabulary sizes (source and target); default: the first axis
        of the target's `embedding` tables.

    Returns:
      A tree like `target_params` holding the checkpoint's values.

    Raises:
      FileNotFoundError: `path` does not exist or holds no complete checkpoint.
      ValueError: a parameter is missing, unexpected, or of another shape (all are named, with
        both shapes), or `extend_vocab` is used with abstract target parameters.
      CheckpointError: the checkpoint is incomplete or corrupt.
    """
    location = resolve_checkpoint(path)
    saved = shapes_by_path(read_state_metadata(location.step_dir)["params"])
    target = shapes_by_path(target_params)
    if vocab_sizes is None:
        vocab_sizes = embedding_vocab_sizes(target_params)
    growth = vocab_growth(saved, target, vocab_sizes) if extend_vocab else {}
    check_shapes({k: target[k] if k in growth else v for k, v in saved.items()}, target,
                 location.step_dir)
    abstract_leaves = [path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(
        target_params)[0] if path_str(p) in growth and not isinstance(x, jax.Array)]
    if abstract_leaves:
        raise ValueError(f"extend_vocab needs initialised target parameters (the new rows come "
                         f"from them); abstract: {abstract_leaves}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree(target_params))
    abstract = [jax.ShapeDtypeStruct(saved[path_str(p)], x.dtype, sharding=_replicated_like(x))
                if path_str(p) in growth else x for p, x in flat]
    restored = _restore_params_tree(location.step_dir,
                                    jax.tree_util.tree_unflatten(treedef, abstract))
    if not growth:
        return restored
    return _merge_grown(restored, target_params, growth, location.step_dir)


def _replicated_like(x: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
    """A replicated sharding on the devices (and mesh) of `x`'s sharding."""
    if isinstance(x.sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
    if len(x.sharding.device_set) == 1:
        return x.sharding
    return _replicated_sharding()


def _merge_grown(restored: PyTree, fresh: PyTree, growth: Mapping[str, int],
                 step_dir: Path) -> PyTree:
    """Writes the checkpoint's rows into the fresh parameters along each grown axis."""
    def merge(path, old, new):
        key = path_str(path)
        if key not in growth:
            return old
        index = tuple(slice(0, n) if i == growth[key] else slice(None)
                      for i, n in enumerate(old.shape))
        merged = jax.jit(lambda fresh_rows, saved_rows: fresh_rows.at[index].set(saved_rows),
                         out_shardings=new.sharding)(new, old.astype(new.dtype))
        log.info("extend_vocab: %s %s -> %s (new rows freshly initialised) from %s", key,
                 tuple(old.shape), tuple(new.shape), step_dir)
        return merged

    return jax.tree_util.tree_map_with_path(merge, restored, fresh)


# ------------------------------------------------------------------------------------------------
# Checkpoint averaging.


def average_params(step_dirs: Collection[os.PathLike | str], target_params: PyTree) -> PyTree:
    """The element-wise mean of the parameters of several checkpoint steps.

    Args:
      step_dirs: step directories (e.g. the last N of `complete_steps`), at least one.
      target_params: concrete or abstract parameters giving tree, shapes, dtypes, shardings.

    Returns:
      A tree like `target_params`: the mean (accumulated in float32, cast back to each leaf's
      dtype).

    Raises:
      ValueError: no step directory, or one whose parameters do not match (named).
    """
    step_dirs = [Path(d) for d in step_dirs]
    if not step_dirs:
        raise ValueError("average_params needs at least one checkpoint step directory")
    total = None
    for step_dir in step_dirs:
        params = restore_params(step_dir, target_params)
        params32 = jax.tree.map(lambda x: x.astype(np.float32), params)
        total = params32 if total is None else jax.tree.map(np.add, total, params32)
    dtypes = jax.tree.map(lambda x: x.dtype, abstract_tree(target_params))
    return jax.tree.map(lambda x, d: (x / len(step_dirs)).astype(d), total, dtypes)


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


def save_averaged(workdir: os.PathLike | str, step: int, params: PyTree) -> Path:
    """Saves averaged parameters as `WORKDIR/averaged/<step>` (replacing older averages).

    Returns:
      The committed step directory (readable by `restore_params`).
    """
    directory = Path(workdir).expanduser().absolute() / AVERAGED_DIRNAME
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           enable_async_checkpointing=False)
    with ocp.CheckpointManager(directory, options=options,
                               item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler()}) as m:
        m.save(step, args=ocp.args.Composite(
            **{STATE_ITEM: ocp.args.StandardSave({"params": params})}), force=True)
        m.wait_until_finished()
    return directory / str(step)


def averaged_step_dir(workdir: os.PathLike | str) -> Path:
    """The latest `WORKDIR/averaged/<step>` directory.

    Raises:
      FileNotFoundError: the run saved no average (naming the directory).
    """
    directory = Path(workdir).expanduser().absolute() / AVERAGED_DIRNAME
    steps = complete_steps(directory)
    if not steps:
        raise FileNotFoundError(f"no averaged checkpoint in {directory} (train with "
                                "config.checkpoint.average_last=N, or decode with "
                                "--average_checkpoints=N)")
    return directory / str(steps[-1])
