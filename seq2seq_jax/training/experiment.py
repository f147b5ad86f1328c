"""The experiment config: every key `python -m seq2seq_jax.train` reads, its checks, its saving.

Config files (`configs/*.py`) start from `base_config(model)` and override values; they never add
keys, so a misspelt `--config.some_key=...` is rejected by the locked config (ml_collections).
Sections: `model` (seq2seq_jax.models), `data` (seq2seq_jax.data), `optimizer`
(seq2seq_jax.training.optim), `eval`, `checkpoint`, `distributed`
(seq2seq_jax.training.parallel).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import ml_collections

from seq2seq_jax.data.config import default_data_config, validate_data_config
from seq2seq_jax.models.config import config_keys, default_model_config, preset_names
from seq2seq_jax.training.optim import OPTIMIZERS, SCHEDULES, default_optimizer_config
from seq2seq_jax.training.parallel import default_distributed_config

CONFIG_FILENAME = "config.json"
PARALLELISMS = ("jit", "pmap")
TASK_METRICS = ("exact_match", "bleu", "none")


def default_eval_config() -> ml_collections.ConfigDict:
    """The `config.eval` section."""
    c = ml_collections.ConfigDict()
    c.split = "validation"  # Split evaluated every eval_every_steps.
    c.batch_size = 0  # Global rows of teacher-forced eval batches (0 = config.batch_size).
    c.max_batches = 0  # Teacher-forced eval batches per evaluation (0 = the whole split).
    c.task_metric = "exact_match"  # "exact_match" (generated tasks), "bleu" (+chrF), "none".
    c.decode_examples = 256  # Examples of the split decoded for the task metric (0 = all).
    c.decode_batch_size = 128  # Rows per decoding call.
    c.beam_size = 1  # 1 = greedy search.
    c.alpha = 0.6  # GNMT length penalty of beam search.
    c.max_decode_length = 0  # Output buffer length L (0 = data.max_target_length).
    # Split fully decoded (all examples) once training ends, logged as `<split>_<metric>`
    # ("" = none). Generated tasks report their test split here.
    c.final_split = ""
    # Stop training after this many evaluations without a new best checkpoint.best_metric
    # (0 = never); then checkpoint and run the final evaluation.
    c.early_stopping_patience = 0
    return c


def default_checkpoint_config() -> ml_collections.ConfigDict:
    """The `config.checkpoint` section (read by seq2seq_jax.training.checkpoint)."""
    c = ml_collections.ConfigDict()
    c.enabled = True  # False: never read or write checkpoints (smoke tests, benchmarks).
    c.max_to_keep = 3  # Latest checkpoints kept.
    c.best_metric = ""  # Also keep the best checkpoints by this eval metric ("" = off).
    c.best_mode = "max"  # "max" (eval_bleu, eval_exact_match) or "min" (eval_loss).
    c.keep_best = 1
    c.async_save = True
    # Fine-tuning with init_checkpoint: grow embedding/output rows to a larger vocabulary
    # (old rows kept, new rows freshly initialised) instead of failing on the shape mismatch.
    c.extend_vocab = False
    # The final evaluation scores the mean of the parameters of the last N kept checkpoints
    # (metrics `averaged_<split>_<metric>`) and saves it as WORKDIR/averaged/<step>
    # (`decode --checkpoint=averaged`); 0 = off. Needs max_to_keep >= N.
    c.average_last = 0
    return c


def base_config(model: str = "rnnsearch") -> ml_collections.ConfigDict:
    """All keys of an experiment, at defaults; configs override values, not keys.

    Args:
      model: a model preset name (`seq2seq_jax.models.preset_names()`).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_train_steps = 1000
    # Wall-clock training budget in minutes (0 = none), summed over resumed runs and without
    # evaluation time: when it is spent, training checkpoints and runs the final evaluation.
    c.max_train_minutes = 0.0
    c.batch_size = 64  # Global rows per step (all hosts and devices together).
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 500  # 0 = only at the end.
    c.checkpoint_every_steps = 1000
    c.parallelism = "jit"  # "jit" (sharded jax.jit over a mesh) or "pmap".
    c.fsdp = 1  # Size of the mesh's fsdp axis (1 = pure data parallelism, -1 = all devices).
    c.fsdp_min_size = 1024  # Leaves with fewer elements stay replicated under fsdp.
    c.init_checkpoint = ""  # Fine-tuning: restore params only from this workdir or step dir.
    c.progress_bar = True  # tqdm bar on process 0 (step, loss, tokens/s, ETA).
    c.model = default_model_config(model)
    c.data = default_data_config()
    c.optimizer = default_optimizer_config()
    c.eval = default_eval_config()
    c.checkpoint = default_checkpoint_config()
    c.distributed = default_distributed_config()
    return c


def split_config_arg(arg: str | None, variants: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Splits a config file's argument '[VARIANT][:REST]' (`--config=file.py:fast:/data`).

    Returns:
      (the variant or None, the rest or None): 'fast' -> ('fast', None), 'fast:/d' ->
      ('fast', '/d'), '/d' -> (None, '/d').
    """
    if not arg:
        return None, None
    head, _, rest = arg.partition(":")
    if head in variants:
        return head, rest or None
    return None, arg


def _choice(name: str, value: Any, known: tuple[str, ...]) -> None:
    if value not in known:
        raise ValueError(f"config.{name}={value!r} is not one of {list(known)}")


def _unknown_keys(config: ml_collections.ConfigDict) -> list[str]:
    reference = base_config()
    unknown = [f"config.{k}" for k in config.keys() if k not in reference]
    for section in ("optimizer", "eval", "checkpoint", "distributed"):
        if section in config:
            unknown += [f"config.{section}.{k}" for k in config[section].keys()
                        if k not in reference[section]]
    if "model" in config:
        unknown += [f"config.model.{k}" for k in config.model.keys() if k not in config_keys()]
    return unknown


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks keys and values that can be checked before building anything.

    Raises:
      ValueError: a one-line message naming the key.
    """
    unknown = _unknown_keys(config)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    validate_data_config(config.data)
    _choice("parallelism", config.parallelism, PARALLELISMS)
    _choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
    _choice("optimizer.schedule", config.optimizer.schedule, SCHEDULES)
    _choice("eval.task_metric", config.eval.task_metric, TASK_METRICS)
    for key in ("num_train_steps", "batch_size", "log_every_steps", "checkpoint_every_steps"):
        if int(config[key]) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {config[key]}")
    if int(config.eval_every_steps) < 0:
        raise ValueError(f"config.eval_every_steps must be >= 0, got {config.eval_every_steps}")
    if not 0.0 <= float(config.label_smoothing) < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.eval.beam_size < 1:
        raise ValueError(f"config.eval.beam_size must be >= 1, got {config.eval.beam_size}")
    minutes = config.max_train_minutes
    if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not (
            math.isfinite(minutes) and minutes >= 0):
        raise ValueError(f"config.max_train_minutes must be a finite number >= 0, got {minutes!r}")
    for key, value in (("eval.early_stopping_patience", config.eval.early_stopping_patience),
                       ("checkpoint.average_last", config.checkpoint.average_last)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.{key} must be an int >= 0, got {value!r}")
    if config.eval.early_stopping_patience and not config.checkpoint.best_metric:
        raise ValueError("config.eval.early_stopping_patience needs config.checkpoint.best_metric "
                         "(the metric whose new best resets the patience)")
    if config.eval.early_stopping_patience and not config.eval_every_steps:
        raise ValueError("config.eval.early_stopping_patience needs config.eval_every_steps > 0")
    average = config.checkpoint.average_last
    if average and (not config.checkpoint.enabled or config.checkpoint.max_to_keep < average):
        raise ValueError(f"config.checkpoint.average_last={average} needs checkpoints enabled and "
                         f"config.checkpoint.max_to_keep >= {average} (got "
                         f"{config.checkpoint.max_to_keep})")
    if average and not config.eval.final_split:
        raise ValueError("config.checkpoint.average_last needs config.eval.final_split (the split "
                         "the average is scored on)")


def prepare_workdir(workdir: str) -> Path:
    """Creates the workdir and checks that it is writable (one-line error otherwise)."""
    path = Path(workdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_test.{os.getpid()}"  # Unique: hosts may share the workdir.
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"workdir {str(path)!r} is not writable: {e.strerror or e}") from e
    return path


def save_config(config: ml_collections.ConfigDict, workdir: os.PathLike | str) -> Path:
    """Writes the resolved config as `WORKDIR/config.json` (sorted keys) and returns its path."""
    path = Path(workdir) / CONFIG_FILENAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def load_config(workdir: os.PathLike | str) -> ml_collections.ConfigDict:
    """Reads `WORKDIR/config.json` back into a ConfigDict (tuples come back as lists)."""
    path = Path(workdir) / CONFIG_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILENAME} in workdir {str(workdir)!r}")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


__all__ = ["base_config", "validate_config", "prepare_workdir", "save_config", "load_config",
           "default_eval_config", "default_checkpoint_config", "preset_names", "CONFIG_FILENAME"]
