"""Checkpoints: the writer. An Orbax `CheckpointManager` in the workdir that resumes exactly.

The workdir's layout and every read-only query (locating steps, saved metrics, the best step,
restoring and averaging parameters) belong to `seq2seq_jax.workdir`; this module saves
`TrainState` + the Grain iterator state, keeps the latest and best steps, restores them for
resuming, and writes averaged parameters. Its names from `seq2seq_jax.workdir` are re-exported
for callers that used them here.

Orbax's own temporary directories (`<step>.orbax-checkpoint-tmp-*`) are removed when a
`Checkpointer` opens the directory, before it returns (Orbax's `cleanup_tmp_directories` does it
in a thread that outlives a failed run's removal of its new workdir and then logs an error about
the missing directory); step directories without the commit marker (a crash on a
file system without atomic rename, an interrupted copy) are moved to `checkpoints.incomplete/`
with a warning, so they can neither be resumed from nor block a new save of that step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation

from seq2seq_jax.training.state import TrainState
from seq2seq_jax.workdir.layout import (  # noqa: F401  (re-exported)
    AVERAGED_DIRNAME,
    CHECKPOINT_DIRNAME,
    COMMIT_MARKER,
    CONFIG_FILENAME,
    DATA_ITEM,
    INCOMPLETE_DIRNAME,
    STATE_ITEM,
    TOKENIZER_DIRNAME,
    CheckpointError,
    CheckpointLocation,
    averaged_step_dir,
    complete_steps,
    is_complete_step_dir,
    last_step_dirs,
    metric_score,
    params_only_dir,
    rank_best,
    resolve_checkpoint,
)
from seq2seq_jax.workdir.restore import (  # noqa: F401  (re-exported)
    abstract_tree,
    average_params,
    check_shapes,
    embedding_vocab_sizes,
    path_str,
    read_state_metadata,
    restore_params,
    shapes_by_path,
    vocab_growth,
)

PyTree = Any

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Incomplete steps.


ORBAX_TMP_MARK = ".orbax-checkpoint-tmp"  # `<step>.orbax-checkpoint-tmp-<time>`: not finalized


def remove_orbax_temporary_dirs(checkpoints_dir: Path) -> list[Path]:
    """Deletes the temporary directories of Orbax saves that never finished; returns them.

    This is what Orbax's `cleanup_tmp_directories` option does, but synchronously: its version
    runs in a background thread that is never joined when the manager closes.
    """
    removed = []
    if not checkpoints_dir.is_dir():
        return removed
    for p in sorted(checkpoints_dir.iterdir()):
        if p.is_dir() and ORBAX_TMP_MARK in p.name:
            shutil.rmtree(p)
            log.info("Removed the temporary directory of an unfinished save: %s", p)
            removed.append(p)
    return removed


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


def preservation_policy(
    max_to_keep: int | None, best_metric: str | None, best_mode: str, keep_best: int
) -> ocp_preservation.PreservationPolicy:
    """The `max_to_keep` latest steps, plus the `keep_best` best by `best_metric` if given.

    The latest step is always kept (LatestN), whatever its metric; the best set ranks NaN or
    missing metrics last, so a NaN never displaces a finite best.
    """
    latest = ocp_preservation.LatestN(n=max_to_keep)
    if best_metric is None:
        return latest
    best = ocp_preservation.BestN(
        get_metric_fn=lambda m: metric_score(m, best_metric, best_mode),
        reverse=False,
        n=keep_best,
        keep_checkpoints_without_metrics=False,
    )
    return ocp_preservation.AnyPreservationPolicy([latest, best])


def handler_registry(data: bool = True) -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """The Orbax handlers of a step's items: `state` (StandardCheckpointHandler) and, with
    `data`, the Grain iterator state (`grain.checkpoint.CheckpointHandler`)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for args in (ocp.args.StandardSave, ocp.args.StandardRestore):
        registry.add(STATE_ITEM, args, ocp.StandardCheckpointHandler)
    if data:
        for args in (grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointRestore):
            registry.add(DATA_ITEM, args, grain.checkpoint.CheckpointHandler)
    return registry


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

    def __init__(
        self,
        workdir: os.PathLike | str,
        *,
        save_every_steps: int,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
        keep_best: int = 1,
        async_save: bool = True,
    ) -> None:
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
            remove_orbax_temporary_dirs(self.directory)
            set_aside_incomplete_steps(self.directory)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("seq2seq_jax.checkpoint.set_aside")
        # `best_fn` is not redundant beside the preservation policy: in orbax-checkpoint 0.12 it
        # is what makes the manager write the `metrics` item of a save (without it the metrics
        # are dropped and no step can be ranked after a restart; tests/test_checkpoint.py).
        track = None if best_metric is None else (lambda m: metric_score(m, best_metric, best_mode))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=preservation_policy(max_to_keep, best_metric, best_mode, keep_best),
            best_fn=track,
            best_mode="max",
            cleanup_tmp_directories=False,  # Done above, before returning.
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=handler_registry()
        )

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
        return rank_best(
            {s: self.metrics(s) for s in self.all_steps()}, self.best_metric, self.best_mode
        )

    def should_save(self, step: int) -> bool:
        """Whether `save(step, ...)` without `force` writes a checkpoint."""
        return step > 0 and step % self.save_every_steps == 0

    # -- save -------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: TrainState,
        data_iterator: Any = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
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
            raise CheckpointError(
                f"saving step {step} to {self.directory} failed: the "
                "checkpoint directory is gone or not a directory"
            )
        items = {STATE_ITEM: ocp.args.StandardSave(state.checkpoint_items())}
        if data_iterator is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data_iterator)
        clean = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        try:
            started = self._manager.save(
                step, args=ocp.args.Composite(**items), metrics=clean, force=True
            )
        except Exception as e:  # Re-raised with the directory and step named.
            raise CheckpointError(
                f"saving step {step} to {self.directory} failed: {type(e).__name__}: {e}"
            ) from e
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
            raise CheckpointError(
                f"saving step {step} to {self.directory} failed: {type(e).__name__}: {e}"
            ) from e
        step, self._pending_step = self._pending_step, None
        if step is not None and jax.process_index() == 0:
            if not is_complete_step_dir(self.directory / str(step)):
                raise CheckpointError(
                    f"saving step {step} to {self.directory} failed: "
                    f"{self.directory / str(step)} was not committed "
                    "(see the Orbax errors logged above)"
                )

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

    def restore(
        self, target: TrainState, data_iterator: Any = None, step: int | None = None
    ) -> TrainState:
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
        check_shapes(
            shapes_by_path(saved["params"]), shapes_by_path(target.params), location.step_dir
        )
        items = {STATE_ITEM: ocp.args.StandardRestore(abstract_tree(target.checkpoint_items()))}
        data_file = None if data_iterator is None else data_state_file(location.step_dir)
        if data_file == _this_process_data_file(location.step_dir):
            items[DATA_ITEM] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            restored = self._manager.restore(location.step, args=ocp.args.Composite(**items))
        except Exception as e:  # Orbax/TensorStore raise many types; name the directory.
            raise CheckpointError(
                _restore_failure(location.step_dir, saved["opt_state"], target.opt_state, e)
            ) from e
        if data_file is not None and DATA_ITEM not in items:
            _set_state_from_other_process_count(data_iterator, data_file)
        return target.replace(**restored[STATE_ITEM])


def _restore_failure(
    step_dir: Path, saved_opt_state: PyTree, target_opt_state: PyTree, error: Exception
) -> str:
    """A short message for a failed restore: the optimizer-state difference if there is one."""
    saved, target = shapes_by_path(saved_opt_state), shapes_by_path(target_opt_state)
    differences = sorted(set(saved) ^ set(target))
    differences += sorted(k for k in set(saved) & set(target) if saved[k] != target[k])
    if differences:
        return (
            f"cannot restore {step_dir}: its optimizer state does not match the configured "
            f"optimizer ({len(differences)} differing entries, e.g. {differences[:3]}); "
            "resuming needs the optimizer the run was saved with (to start another optimizer "
            "from these parameters, fine-tune into a new workdir with init_checkpoint)"
        )
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
        raise CheckpointError(
            f"{step_dir} holds no data-iterator state; it cannot resume the data stream"
        )
    count = int(saved[0].stem.rsplit("-of-", 1)[1])
    return step_dir / DATA_ITEM / f"process_{jax.process_index() % count}-of-{count}.json"


def _set_state_from_other_process_count(iterator: Any, state_file: Path) -> None:
    """Sets a `grain.DatasetIterator` from a state saved by another number of processes."""
    if not isinstance(iterator, grain.DatasetIterator):
        raise CheckpointError(
            f"{state_file.parent} was saved by another number of processes; "
            f"{type(iterator).__name__} state cannot be carried over"
        )
    log.warning(
        "Data state saved by another number of processes: process %d of %d restores "
        "%s (the pipeline decides how exactly it resumes)",
        jax.process_index(),
        jax.process_count(),
        state_file,
    )
    iterator.set_state(json.loads(state_file.read_text()))


# ------------------------------------------------------------------------------------------------
# Checkpoint averaging.


def save_averaged(workdir: os.PathLike | str, step: int, params: PyTree) -> Path:
    """Saves averaged parameters as `WORKDIR/averaged/<step>` (replacing older averages)."""
    return save_params_only(workdir, "averaged", step, params)


def save_params_only(workdir: os.PathLike | str, kind: str, step: int, params: PyTree) -> Path:
    """Saves parameters as `WORKDIR/<averaged|ema>/<step>` (`PARAMS_ONLY_KINDS`), replacing
    older ones of that kind.

    Returns:
      The committed step directory (readable by `restore_params`).
    """
    directory = params_only_dir(workdir, kind)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False
    )
    with ocp.CheckpointManager(
        directory, options=options, handler_registry=handler_registry(data=False)
    ) as m:
        m.save(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave({"params": params})}),
            force=True,
        )
        m.wait_until_finished()
    return directory / str(step)
