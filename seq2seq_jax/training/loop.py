"""`train_and_evaluate(config, workdir)`: the loop behind `python -m seq2seq_jax.train`.

Split into `setup_experiment` (everything that can fail on bad input, wrapped into one-line
`SetupError`s), `evaluate` (teacher-forced loss / perplexity / token accuracy), `decode_and_score`
(task metric from decoding) and the step loop, which logs, evaluates, checkpoints, resumes, and
saves on SIGTERM before exiting cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from seq2seq_jax import data as data_lib
from seq2seq_jax import models
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.inference.translate import BatchTranslator
from seq2seq_jax.training import decode_eval, experiment, optim, parallel, steps, trainer
from seq2seq_jax.training.metrics_writer import MetricsWriter, plot_learning_curves
from seq2seq_jax.training.state import TrainState
from seq2seq_jax.workdir.layout import CURVES_FILENAME, TOKENIZER_DIRNAME

log = logging.getLogger(__name__)


class SetupError(Exception):
    """A problem with the config, the workdir or the inputs, found before training starts."""


class TrainingDiverged(Exception):
    """A non-finite step under `optimizer.nonfinite='abort'`, or too many consecutive skipped
    ones under 'skip'; nothing poisoned was saved."""


@dataclasses.dataclass
class Experiment:
    """Everything built by `setup_experiment`."""

    config: ml_collections.ConfigDict
    workdir: Path
    source_tokenizer: Any
    target_tokenizer: Any
    model_config: models.ModelConfig
    model: Any
    schedule: Any
    state: TrainState
    placement: trainer.Placement
    train_step: Any
    eval_step: Any
    train_iter: Any
    translator: BatchTranslator  # The task metric's, built once (decode_eval.make_translator).
    data_config: data_lib.DataConfig  # `config.data` parsed once (experiment.validate_config).


def _build_model(config, source_tok, target_tok):
    model_config = models.ModelConfig.from_config(
        config.model,
        source_vocab_size=source_tok.vocab_size,
        target_vocab_size=target_tok.vocab_size,
        bos_id=target_tok.bos_id,
        eos_id=target_tok.eos_id,
    )
    return model_config, models.build_model(model_config)


def _placement_args(config) -> dict[str, Any]:
    parallel.check_batch_size(config.batch_size, config.parallelism)
    if config.parallelism == "jit":
        return {"mesh": parallel.make_mesh(config.fsdp), "fsdp_min_size": config.fsdp_min_size}
    return {}


def _build(config: ml_collections.ConfigDict, workdir: Path, staging: str) -> Experiment:
    """Builds the experiment without writing to the workdir (a new tokenizer goes to `staging`)."""
    data_config = experiment.validate_config(config)
    placement_args = _placement_args(config)
    from seq2seq_jax.training import checkpoint

    experiment.check_resume(
        config, workdir, bool(checkpoint.complete_steps(workdir / checkpoint.CHECKPOINT_DIRNAME))
    )
    source_tok, target_tok = _tokenizers(data_config, workdir, staging)
    model_config, model = _build_model(config, source_tok, target_tok)
    tx, schedule = optim.make_optimizer(config.optimizer, config.num_train_steps)
    lengths = (config.data.max_source_length, config.data.max_target_length)
    state, placement = trainer.init_train_state(
        model,
        tx,
        seed=config.seed,
        parallelism=config.parallelism,
        init_lengths=(min(lengths[0], 8), min(lengths[1], 8)),
        **placement_args,
    )
    train_step, eval_step = trainer.make_step_fns(
        placement, label_smoothing=config.label_smoothing, nonfinite=config.optimizer.nonfinite
    )
    train_iter = data_lib.make_train_iterator(
        data_config,
        source_tok,
        target_tok,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=jax.device_count(),
    )
    decode_model = models.build_model(model_config.replace(deterministic=True))
    translator = decode_eval.make_translator(
        decode_model,
        SearchConfig.from_config(config),
        source_tokenizer=source_tok,
        target_tokenizer=target_tok,
        max_source_length=config.data.max_source_length,
        batch_size=config.eval.decode_batch_size,
    )
    return Experiment(
        config,
        workdir,
        source_tok,
        target_tok,
        model_config,
        model,
        schedule,
        state,
        placement,
        train_step,
        eval_step,
        train_iter,
        translator,
        data_config,
    )


def _tokenizers(data_config, workdir: Path, staging: str):
    """Process 0 builds the tokenizer first; the others then load it from the workdir.

    A single-process run keeps a newly trained tokenizer in `staging` until `_commit`; in a
    multi-host run process 0 saves it in the workdir before the barrier (after the config and
    resume checks passed), since the other processes read it from there.
    """
    multi = jax.process_count() > 1
    if jax.process_index() == 0:
        pair = data_lib.get_tokenizers(
            data_config, str(workdir), staging_dir=None if multi else staging
        )
    if multi:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("seq2seq_jax.tokenizers")
    if jax.process_index() != 0:
        pair = data_lib.get_tokenizers(data_config, str(workdir))
    return pair


def _commit(exp: Experiment, staging: str) -> None:
    """Writes the run's config (keeping earlier versions) and a newly trained tokenizer into the
    workdir: the first writes of a run, made once it is known to start (process 0)."""
    if jax.process_index() != 0:
        return
    staged = Path(staging) / TOKENIZER_DIRNAME
    target = exp.workdir / TOKENIZER_DIRNAME
    if staged.is_dir() and not target.exists():
        tmp = exp.workdir / f".tokenizer.{os.getpid()}.tmp"
        shutil.copytree(staged, tmp)
        tmp.replace(target)
    experiment.save_config(exp.config, exp.workdir)


_SETUP_ERRORS = (ValueError, KeyError, TypeError, FileNotFoundError, OSError)


def setup_experiment(
    config: ml_collections.ConfigDict, workdir: str, staging: str | None = None
) -> Experiment:
    """Validates the config and the workdir, builds tokenizers, model, state and data.

    Nothing is written to the workdir (see `train_and_evaluate`): a tokenizer trained here is
    saved under `staging` for the caller to commit. When `staging` is None it goes to a
    temporary directory that is removed before this returns or raises (the tokenizers live in
    memory; nothing is left in the system's temporary directory).

    Raises:
      SetupError: a one-line description of what is wrong (bad key or value, unknown model,
        unwritable workdir, a resume with changed model/data keys, batch size not divisible by
        the device count, missing data).
    """
    if staging is None:
        with tempfile.TemporaryDirectory(prefix="seq2seq_jax.") as tmp:
            return setup_experiment(config, workdir, tmp)
    try:
        path = experiment.prepare_workdir(workdir)
        return _build(config, path, staging)
    except _SETUP_ERRORS as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise SetupError(" ".join(str(message).split())) from e


def eval_batch_size(config: ml_collections.ConfigDict) -> int:
    """Global rows of the teacher-forced eval batches."""
    return int(config.eval.batch_size or config.batch_size)


def evaluate(exp: Experiment, state: TrainState, split: str) -> dict[str, float]:
    """Teacher-forced loss, nll, perplexity and token accuracy over `split` (`eval_` names)."""
    c = exp.config
    batches = data_lib.make_eval_batches(
        exp.data_config,
        exp.source_tokenizer,
        exp.target_tokenizer,
        split=split,
        batch_size=eval_batch_size(c) // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total = None
    for i, batch in enumerate(batches):
        if c.eval.max_batches and i >= c.eval.max_batches:
            break
        metrics = exp.eval_step(state, trainer.put_batch(batch, exp.placement))
        total = steps.accumulate(total, trainer.metrics_to_host(metrics, exp.placement))
    return steps.summarize(total, prefix="eval_") if total else {}


def decode_and_score(
    exp: Experiment, params: Any, split: str, max_examples: int, prefix: str
) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """Decodes the first `max_examples` (0 = all) of `split` with `params` and scores them.

    Returns:
      `({prefix + metric: value}, [(source, reference, hypothesis), ...])`.
    """
    c = exp.config
    if c.eval.task_metric == "none":
        return {}, []
    pairs = data_lib.load_texts(exp.data_config, split, max_examples or None)
    hyps = decode_eval.decode_texts(exp.translator, params, [s for s, _ in pairs])
    refs = [t for _, t in pairs]
    scores = decode_eval.score(hyps, refs, c.eval.task_metric)
    examples = [(s, r, h) for (s, r), h in zip(pairs, hyps, strict=True)]
    return {prefix + k: v for k, v in scores.items()}, examples


class Preemption:
    """Turns SIGTERM into a flag the loop checks after each step (installed on the main thread).

    In a multi-host run the flag is OR-ed across processes (an all-gather), so all of them save
    the same step; to keep that collective off the other steps, it runs only at sync points:
    the steps every process treats alike that the loop syncs at anyway (log, evaluation and
    checkpoint steps, the last step). A preempted multi-host run therefore saves at the next
    such step (at most `log_every_steps` steps later); a single process at the next step.
    """

    def __init__(self) -> None:
        self._requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        del signum, frame
        when = (
            "after this step"
            if jax.process_count() == 1
            else ("at the next log or checkpoint step")
        )
        log.warning("SIGTERM received: saving a checkpoint %s, then exiting", when)
        self._requested = True

    def __enter__(self) -> Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # Not the main thread: leave the default handler.
            self._previous = None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def requested(self, *, sync_point: bool = True) -> bool:
        """Whether any process received SIGTERM.

        Args:
          sync_point: whether every process calls this at this step (see the class). One
            process reads its own flag at every step; several all-gather their flags only at
            sync points and answer False elsewhere.
        """
        if jax.process_count() == 1:
            return self._requested
        if not sync_point:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
        return bool(np.any(flags))


def _open_checkpointer(exp: Experiment):
    c = exp.config
    if not c.checkpoint.enabled:
        return None
    from seq2seq_jax.training import checkpoint

    return checkpoint.Checkpointer(
        exp.workdir,
        save_every_steps=c.checkpoint_every_steps,
        max_to_keep=c.checkpoint.max_to_keep,
        best_metric=c.checkpoint.best_metric or None,
        best_mode=c.checkpoint.best_mode,
        keep_best=c.checkpoint.keep_best,
        async_save=c.checkpoint.async_save,
    )


def _restore(exp: Experiment, ckpt) -> TrainState:
    """Resumes from the workdir's latest checkpoint, else starts fresh (or from init_checkpoint)."""
    host_state = trainer.state_to_host_layout(exp.state, exp.placement)
    if ckpt is not None and ckpt.latest_step() is not None:
        log.info("Resuming from %s, step %d", ckpt.directory, ckpt.latest_step())
        host_state = ckpt.restore(host_state, data_iterator=exp.train_iter)
    elif exp.config.init_checkpoint:
        from seq2seq_jax.training import checkpoint

        log.info("Initialising parameters from %s", exp.config.init_checkpoint)
        params = checkpoint.restore_params(
            exp.config.init_checkpoint,
            host_state.params,
            extend_vocab=exp.config.checkpoint.extend_vocab,
        )
        host_state = host_state.replace(params=params)
    else:
        return exp.state
    return parallel.replicate(host_state) if exp.placement.parallelism == "pmap" else host_state


def _save(ckpt, exp: Experiment, step: int, state: TrainState, metrics=None, force=False) -> None:
    if ckpt is None:
        return
    if not (force or ckpt.should_save(step)):
        return
    ckpt.save(
        step,
        trainer.state_to_host_layout(state, exp.placement),
        exp.train_iter,
        metrics=metrics,
        force=force,
    )


def _progress(exp: Experiment, start: int):
    from tqdm.auto import tqdm

    enabled = exp.config.progress_bar and jax.process_index() == 0
    return tqdm(
        total=exp.config.num_train_steps,
        initial=start,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
        desc="train",
    )


def _train_summary(
    exp: Experiment, state: TrainState, window: dict, seconds: float, step: int
) -> dict[str, float]:
    summary = steps.summarize(window, prefix="train_")
    summary["train_tokens_per_second"] = float(window["loss"][1]) / max(seconds, 1e-9)
    updates = step // int(exp.config.optimizer.accumulate_steps)
    summary["learning_rate"] = float(exp.schedule(updates))
    return summary


def _run_eval(exp: Experiment, state: TrainState, step: int, writer: MetricsWriter) -> dict:
    c = exp.config
    metrics = evaluate(exp, state, c.eval.split)
    task, examples = decode_and_score(
        exp,
        trainer.host_params(state, exp.placement),
        c.eval.split,
        c.eval.decode_examples,
        "eval_",
    )
    metrics.update(task)
    writer.write(step, metrics)
    for source, reference, hypothesis in examples[:3]:
        log.info("step %d | %s -> %s (reference: %s)", step, source, hypothesis, reference)
    log.info("step %d | %s", step, _fmt(metrics))
    return metrics


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def _is_due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


class StopRules:
    """The time budget (`max_train_minutes`) and early stopping, carried across resumed runs.

    Training time (evaluations excluded) is logged as `train_minutes` with every train summary;
    a resumed run continues from the last logged value, and the best `checkpoint.best_metric`
    and the evaluations since it are recomputed from `metrics.jsonl`.
    """

    def __init__(self, config: ml_collections.ConfigDict, history: list[dict[str, Any]]):
        self.budget_seconds = float(config.max_train_minutes) * 60.0
        self.patience = int(config.eval.early_stopping_patience)
        self.metric = config.checkpoint.best_metric
        self.sign = 1.0 if config.checkpoint.best_mode == "max" else -1.0
        minutes = [r["train_minutes"] for r in history if "train_minutes" in r]
        self.previous_seconds = 60.0 * float(minutes[-1]) if minutes else 0.0
        self.best, self.since_best = -math.inf, 0
        for record in history:
            self.update(record)

    def update(self, metrics: dict[str, Any]) -> None:
        """Counts an evaluation's `best_metric` (NaN never counts as a new best)."""
        if not self.metric or self.metric not in metrics:
            return
        score = self.sign * float(metrics[self.metric])
        if math.isfinite(score) and score > self.best:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1

    def budget_spent(self, seconds: float, *, sync_point: bool = True) -> bool:
        """Whether `seconds` of training in this run spend the budget (process 0 decides: the
        clocks of hosts differ). Several processes decide only at a `sync_point` (a step at
        which every process calls this with True: the broadcast is a collective), so the
        budget costs no collective at the other steps; one process decides at every step."""
        if not self.budget_seconds:
            return False
        spent = self.previous_seconds + seconds >= self.budget_seconds
        if jax.process_count() > 1:
            if not sync_point:
                return False
            from jax.experimental import multihost_utils

            spent = bool(multihost_utils.broadcast_one_to_all(np.asarray(spent, np.int32)))
        return spent

    def patience_spent(self) -> bool:
        """Whether `patience` evaluations passed without a new best (the same on all hosts)."""
        return bool(self.patience) and self.since_best >= self.patience


class NonfiniteGuard:
    """Applies `optimizer.nonfinite` on the host: reads each step's `nonfinite` flag one step
    late (no stall of the device queue) and all of them before a save or evaluation.

    The flags are global (summed over devices and hosts), so every process takes the same
    decision. `total` counts skipped steps over resumed runs (`nonfinite_total` in
    metrics.jsonl).
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        placement: trainer.Placement,
        history: list[dict[str, Any]],
    ):
        self.mode = config.optimizer.nonfinite
        self.limit = int(config.optimizer.max_consecutive_nonfinite)
        self.placement = placement
        self.unchecked: list[tuple[int, Any]] = []
        self.consecutive = 0
        totals = [r["nonfinite_total"] for r in history if "nonfinite_total" in r]
        self.total = int(totals[-1]) if totals else 0

    def add(self, step: int, metrics: Any) -> None:
        """Registers step `step`'s metrics; checks the steps before it."""
        self.unchecked.append((step, metrics["nonfinite"][0]))
        while len(self.unchecked) > 1:
            self._check(*self.unchecked.pop(0))

    def flush(self) -> None:
        """Checks every registered step (call before saving or evaluating the state)."""
        while self.unchecked:
            self._check(*self.unchecked.pop(0))

    def _check(self, step: int, flag: Any) -> None:
        if self.mode == "ignore":
            return
        if not float(trainer.metrics_to_host(flag, self.placement)):
            self.consecutive = 0
            return
        if self.mode == "abort":
            raise TrainingDiverged(
                f"non-finite loss or parameters at step {step} (optimizer.nonfinite='abort')"
            )
        self.total += 1
        self.consecutive += 1
        log.warning(
            "step %d | non-finite step skipped (%d in a row, %d in all)",
            step,
            self.consecutive,
            self.total,
        )
        if self.consecutive >= self.limit:
            raise TrainingDiverged(
                f"{self.consecutive} consecutive non-finite steps up to step {step} "
                f"(optimizer.nonfinite='skip', max_consecutive_nonfinite={self.limit})"
            )


def _log_new_shape(batch: dict[str, np.ndarray], seen: set) -> None:
    shape = (batch["inputs"].shape, batch["targets"].shape)
    if shape not in seen:
        seen.add(shape)
        log.info(
            "train step: new batch shape inputs %s, targets %s (compiling; %d shapes so far)",
            *shape,
            len(seen),
        )


def _train_loop(
    exp: Experiment,
    state: TrainState,
    ckpt,
    writer: MetricsWriter,
    preemption: Preemption,
    rules: StopRules,
    guard: NonfiniteGuard,
) -> tuple[TrainState, int, bool]:
    """Runs the steps from `state.step` to the end (or a stop rule); returns
    (state, step reached, preempted).

    Raises:
      TrainingDiverged: from `guard`, before the poisoned state is logged, evaluated or saved.
    """
    c = exp.config
    step = start = int(jax.device_get(trainer.state_to_host_layout(state, exp.placement).step))
    pending, tick, seen = [], time.perf_counter(), set()
    began = tick  # Training time of this run = now - began - evaluation time.
    if step < c.num_train_steps and rules.budget_spent(0.0):
        log.info(
            "step %d | max_train_minutes=%g already spent by the earlier runs",
            step,
            c.max_train_minutes,
        )
        return state, step, False
    with _progress(exp, start) as bar:
        while step < c.num_train_steps:
            host_batch = next(exp.train_iter)
            _log_new_shape(host_batch, seen)
            state, metrics = exp.train_step(state, trainer.put_batch(host_batch, exp.placement))
            step += 1
            pending.append(metrics)
            guard.add(step, metrics)
            bar.update(1)
            at_save = ckpt is not None and ckpt.should_save(step)
            at_log = _is_due(step, c.log_every_steps, c.num_train_steps)
            at_eval = _is_due(step, c.eval_every_steps, c.num_train_steps)
            # Steps at which all processes meet (the same on every host): the multi-host
            # decisions (time budget, SIGTERM) are all-gathered there only.
            sync_point = step == c.num_train_steps or at_save or at_log or at_eval
            stop = rules.budget_spent(time.perf_counter() - began, sync_point=sync_point)
            last = step == c.num_train_steps or stop
            if last or at_save or at_eval:
                guard.flush()  # Nothing non-finite is saved or evaluated.
            if last or at_log:
                guard.flush()
                window = None
                for m in pending:
                    window = steps.accumulate(window, trainer.metrics_to_host(m, exp.placement))
                summary = _train_summary(exp, state, window, time.perf_counter() - tick, step)
                summary["nonfinite_total"] = guard.total
                summary["train_minutes"] = (
                    rules.previous_seconds + time.perf_counter() - began
                ) / 60.0
                writer.write(step, summary)
                bar.set_postfix(
                    loss=f"{summary['train_loss']:.3f}",
                    tok_s=f"{summary['train_tokens_per_second']:.0f}",
                )
                pending, tick = [], time.perf_counter()
            eval_metrics = None
            if last or at_eval:
                started = time.perf_counter()
                eval_metrics = _run_eval(exp, state, step, writer)
                rules.update(eval_metrics)
                evaluation = time.perf_counter() - started  # Not training time.
                tick, began = tick + evaluation, began + evaluation
                if rules.patience_spent():
                    log.info(
                        "step %d | early stopping: %d evaluations without a new best %s",
                        step,
                        rules.since_best,
                        rules.metric,
                    )
                    stop = True
            if preemption.requested(sync_point=sync_point or last):
                guard.flush()
                _save(ckpt, exp, step, state, eval_metrics, force=True)
                return state, step, True
            _save(ckpt, exp, step, state, eval_metrics, force=last or stop)
            if stop:
                log.info(
                    "step %d | training stopped (max_train_minutes=%g, early stopping patience=%d)",
                    step,
                    c.max_train_minutes,
                    rules.patience,
                )
                break
    return state, step, False


def _final_evaluation(
    exp: Experiment, state: TrainState, step: int, writer: MetricsWriter, ckpt
) -> dict[str, float]:
    """Decodes all of `eval.final_split` (e.g. the test split) once training has ended.

    With `checkpoint.average_last=N` it also scores the mean of the last N kept checkpoints
    (`averaged_<split>_<metric>`) and saves that mean as `WORKDIR/averaged/<step>`; with
    `optimizer.ema_decay` > 0 it scores the moving average of the parameters
    (`ema_<split>_<metric>`) and saves it as `WORKDIR/ema/<step>` (saved even without a split).
    """
    from seq2seq_jax.training import checkpoint

    split = exp.config.eval.final_split
    metrics: dict[str, float] = {}
    if split:
        params = trainer.host_params(state, exp.placement)
        metrics, _ = decode_and_score(exp, params, split, 0, f"{split}_")
    average = int(exp.config.checkpoint.average_last)
    if split and average and ckpt is not None:
        ckpt.wait()  # The final save must be committed before it is averaged.
        step_dirs = checkpoint.last_step_dirs(exp.workdir, average)
        params = checkpoint.average_params(step_dirs, params)
        scores, _ = decode_and_score(exp, params, split, 0, f"averaged_{split}_")
        metrics.update(scores)
        metrics["averaged_checkpoints"] = len(step_dirs)
        if jax.process_index() == 0:
            path = checkpoint.save_averaged(exp.workdir, step, params)
            log.info(
                "final | saved the mean of steps %s as %s", [int(d.name) for d in step_dirs], path
            )
    ema = _ema_params(exp, state)
    if ema is not None:
        if split:
            scores, _ = decode_and_score(exp, ema, split, 0, f"ema_{split}_")
            metrics.update(scores)
        if ckpt is not None:
            if jax.process_count() > 1:  # Process 0 writes it: gather the global arrays.
                from jax.experimental import multihost_utils

                ema = multihost_utils.process_allgather(ema, tiled=True)
            if jax.process_index() == 0:
                path = checkpoint.save_params_only(exp.workdir, "ema", step, ema)
                log.info("final | saved the moving average of the parameters as %s", path)
    if metrics:
        writer.write(step, metrics)
        log.info("final | %s", _fmt(metrics))
    return metrics


def _ema_params(exp: Experiment, state: TrainState) -> Any:
    """The bias-corrected moving average of the parameters (None: off or no update yet)."""
    decay = float(exp.config.optimizer.get("ema_decay", 0.0))
    if not decay:
        return None
    host = trainer.state_to_host_layout(state, exp.placement)
    ema = optim.ema_params(host.opt_state, decay, host.params)
    return None if ema is None else jax.tree.map(jax.numpy.asarray, ema)


def _describe(exp: Experiment) -> None:
    host = trainer.state_to_host_layout(exp.state, exp.placement)
    log.info(
        "Model %s: %d parameters; %d devices on %d hosts (%s, fsdp=%d)",
        exp.model_config.name,
        models.count_params(host.params),
        jax.device_count(),
        jax.process_count(),
        exp.config.parallelism,
        exp.config.fsdp,
    )
    frozen = optim.frozen_paths(host.params, exp.config.optimizer.freeze)
    if frozen:
        log.info("Frozen parameters: %s", ", ".join(frozen))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Writes `config.json`, `tokenizer/`, `checkpoints/`, `metrics.jsonl`, `tensorboard/` and
    `learning_curves.png` in the workdir. On SIGTERM it saves the step reached and returns.

    Args:
      config: the experiment config (`seq2seq_jax.training.experiment.base_config` keys).
      workdir: the run's directory.

    Returns:
      The last logged metrics by name (train, eval and final-split ones), plus `step` and
      `preempted`.

    Nothing is written to the workdir before the run is known to start: the config, the
    resume compatibility (`experiment.check_resume`), the data, the model and the checkpoint
    restore are checked first, holding the workdir's lock (`experiment.WorkdirLock`). A
    rejected run leaves an existing workdir as it was, and removes one it created.

    Raises:
      SetupError: bad config / workdir / batch size / model name, a workdir in use by another
        run or trained with an incompatible config (before training starts).
      TrainingDiverged: a non-finite step (`optimizer.nonfinite`), after the pending good saves
        finished.
    """
    is_main = jax.process_index() == 0
    path = Path(workdir).expanduser()
    created = not path.exists()
    try:
        return _run(config, workdir, is_main)
    except SetupError:
        if created and is_main:  # A rejected first run leaves no workdir behind.
            shutil.rmtree(path, ignore_errors=True)
        raise


def _run(config: ml_collections.ConfigDict, workdir: str, is_main: bool) -> dict[str, Any]:
    """`train_and_evaluate` once the workdir's prior existence is known."""
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="seq2seq_jax."))
        exp, state, ckpt = _start(config, workdir, staging, stack, is_main)
        _commit(exp, staging)  # The run starts: its first writes to the workdir.
        writer = stack.enter_context(MetricsWriter(exp.workdir, enabled=is_main))
        preemption = stack.enter_context(Preemption())
        start = int(jax.device_get(trainer.state_to_host_layout(state, exp.placement).step))
        writer.drop_after(start)
        history = _history(writer.path)
        rules = StopRules(exp.config, history)
        guard = NonfiniteGuard(exp.config, exp.placement, history)
        try:
            state, step, preempted = _train_loop(exp, state, ckpt, writer, preemption, rules, guard)
        except TrainingDiverged as e:
            if ckpt is not None:
                ckpt.wait()
            latest = ckpt.latest_step() if ckpt is not None else None
            kept = (
                f"the latest checkpoint is the last good one, step {latest}"
                if latest is not None
                else "no checkpoint was saved"
            )
            raise TrainingDiverged(
                f"{e}; nothing non-finite was saved, {kept} ({exp.workdir})"
            ) from None
        final = {} if preempted else _final_evaluation(exp, state, step, writer, ckpt)
    if is_main and writer.path.exists():
        plot_learning_curves(writer.path, exp.workdir / CURVES_FILENAME)
    return {**_last_values(writer.path), **final, "step": step, "preempted": preempted}


def _start(
    config: ml_collections.ConfigDict,
    workdir: str,
    staging: str,
    stack: contextlib.ExitStack,
    is_main: bool,
) -> tuple[Experiment, TrainState, Any]:
    """Locks the workdir (process 0), builds the experiment and restores its latest checkpoint.

    Raises:
      SetupError: anything that rejects the run; nothing was written to the workdir then.
    """
    try:
        path = experiment.prepare_workdir(workdir)
        if is_main:
            stack.enter_context(experiment.WorkdirLock(path))
    except (ValueError, RuntimeError) as e:
        raise SetupError(" ".join(str(e).split())) from e
    exp = setup_experiment(config, str(path), staging)
    _describe(exp)
    ckpt = _open_checkpointer(exp)
    if ckpt is not None:
        stack.enter_context(ckpt)  # Finishes pending saves on exit, also on exceptions.
    try:
        state = _restore(exp, ckpt)
    except (ValueError, FileNotFoundError) as e:
        raise SetupError(" ".join(str(e).split())) from e
    exp.state = None  # The loop owns (and donates) the state from here on.
    return exp, state, ckpt


def _history(path: Path) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` (empty when absent or off process 0)."""
    if not path.exists():
        return []
    from seq2seq_jax.training.metrics_writer import read_metrics

    return list(read_metrics(path))


def _last_values(path: Path) -> dict[str, float]:
    """The latest value of every metric in `metrics.jsonl` (empty off process 0)."""
    if not path.exists():
        return {}
    from seq2seq_jax.training.metrics_writer import read_metrics

    latest: dict[str, float] = {}
    for record in read_metrics(path):
        latest.update({k: v for k, v in record.items() if k != "step"})
    return latest
