"""The experiment config: every key `python -m seq2seq_jax.train` reads, its checks, its saving.

Config files (`configs/*.py`) start from `base_config(model)` and override values; they never add
keys, so a misspelt `--config.some_key=...` is rejected by the locked config (ml_collections).
Sections: `model` (seq2seq_jax.models), `data` (seq2seq_jax.data), `optimizer`
(seq2seq_jax.training.optim), `eval`, `checkpoint`, `distributed`
(seq2seq_jax.training.parallel).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import math
import os
import re
import socket
import traceback
from pathlib import Path
from typing import Any

import ml_collections

from seq2seq_jax.data.config import DataConfig, default_data_config, validate_data_config
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.models.config import config_keys, default_model_config, preset_names
from seq2seq_jax.models.registry import check_batching
from seq2seq_jax.training.optim import default_optimizer_config, validate_optimizer_config
from seq2seq_jax.training.parallel import default_distributed_config
from seq2seq_jax.workdir.layout import (  # noqa: F401  (save_config, load_config re-exported)
    CONFIG_FILENAME,
    CONFIG_HISTORY_DIRNAME,
    LOCK_FILENAME,
    TOKENIZER_DIRNAME,
    load_config,
    save_config,
)

# Keys a resumed run may not change (fnmatch patterns over dotted keys): they decide the
# parameter shapes, the tokenizer, the data stream or the optimiser state's structure. Every
# other key (num_train_steps, the learning rate, eval and checkpoint cadence, ...) may change.
RESUME_FIXED_KEYS = (
    "model.*",
    "data.*",
    "batch_size",
    "seed",
    "optimizer.name",
    "optimizer.accumulate_steps",
    "optimizer.freeze",
    "optimizer.ema_decay",
)
RESUME_FREE_KEYS = (
    "model.dropout_rate",
    "model.attention_dropout_rate",
    "model.dtype",
    "data.prefetch",
    "data.cache_max_examples",
    "data.eval_split",
    # Where the files are (a moved dataset is the same data), and the
    # evaluation splits (not read by the train stream).
    "data.*_source",
    "data.*_target",
    "data.*_tsv",
    "data.tfds_data_dir",
    "data.tokenizer_dir",
    "data.num_validation_examples",
    "data.num_test_examples",
)
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
    c.beam_size = SearchConfig.beam_size  # 1 = greedy search.
    c.alpha = SearchConfig.alpha  # GNMT length penalty of beam search.
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
            unknown += [
                f"config.{section}.{k}"
                for k in config[section].keys()
                if k not in reference[section]
            ]
    if "model" in config:
        unknown += [f"config.model.{k}" for k in config.model.keys() if k not in config_keys()]
    return unknown


def validate_config(config: ml_collections.ConfigDict) -> DataConfig:
    """Checks keys and values that can be checked before building anything.

    Returns:
      `config.data` parsed once (`seq2seq_jax.data.DataConfig`), for the data pipeline.

    Raises:
      ValueError: a one-line message naming the key.
    """
    unknown = _unknown_keys(config)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    data_config = validate_data_config(config.data)
    _choice("parallelism", config.parallelism, PARALLELISMS)
    check_batching(config.model.name, config.data.batching)  # The model's capabilities.
    validate_optimizer_config(config.optimizer)
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
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, int | float)
        or not (math.isfinite(minutes) and minutes >= 0)
    ):
        raise ValueError(f"config.max_train_minutes must be a finite number >= 0, got {minutes!r}")
    for key, value in (
        ("eval.early_stopping_patience", config.eval.early_stopping_patience),
        ("checkpoint.average_last", config.checkpoint.average_last),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"config.{key} must be an int >= 0, got {value!r}")
    if config.eval.early_stopping_patience and not config.checkpoint.best_metric:
        raise ValueError(
            "config.eval.early_stopping_patience needs config.checkpoint.best_metric "
            "(the metric whose new best resets the patience)"
        )
    if config.eval.early_stopping_patience and not config.eval_every_steps:
        raise ValueError("config.eval.early_stopping_patience needs config.eval_every_steps > 0")
    average = config.checkpoint.average_last
    if average and (not config.checkpoint.enabled or config.checkpoint.max_to_keep < average):
        raise ValueError(
            f"config.checkpoint.average_last={average} needs checkpoints enabled and "
            f"config.checkpoint.max_to_keep >= {average} (got "
            f"{config.checkpoint.max_to_keep})"
        )
    if average and not config.eval.final_split:
        raise ValueError(
            "config.checkpoint.average_last needs config.eval.final_split (the split "
            "the average is scored on)"
        )
    return data_config


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


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def resume_conflicts(
    saved: ml_collections.ConfigDict | dict, config: ml_collections.ConfigDict | dict
) -> list[str]:
    """The keys of `RESUME_FIXED_KEYS` whose value differs between a workdir's saved config and
    the config of a run that would resume it, as `key: saved -> new` strings (sorted)."""
    old = _flatten(saved.to_dict() if hasattr(saved, "to_dict") else dict(saved))
    new = _flatten(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    # A key added to the project after the workdir was trained is absent from its config.json;
    # its default is the behaviour the run had, so the default value is compatible.
    defaults = _flatten(base_config().to_dict())
    defaults.update({f"model.{k}": v for k, v in default_model_config().items()})
    same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)  # noqa: E731
    out = []
    for key in sorted(set(old) | set(new)):
        fixed = any(fnmatch.fnmatchcase(key, p) for p in RESUME_FIXED_KEYS)
        if not fixed or any(fnmatch.fnmatchcase(key, p) for p in RESUME_FREE_KEYS):
            continue
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == "<absent>" and key in defaults and same(b, defaults[key]):
            continue
        if not same(a, b):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def check_resume(
    config: ml_collections.ConfigDict, workdir: os.PathLike | str, has_checkpoints: bool
) -> None:
    """Refuses a run that would resume a workdir trained with an incompatible config.

    A workdir whose `config.json` exists and that holds checkpoints or a tokenizer must agree
    with `config` on every `RESUME_FIXED_KEYS` key (`RESUME_FREE_KEYS` excepted).

    Raises:
      ValueError: naming the workdir and each differing key with both values.
    """
    path = Path(workdir)
    if not (path / CONFIG_FILENAME).is_file():
        return
    if not has_checkpoints and not (path / TOKENIZER_DIRNAME).is_dir():
        return
    conflicts = resume_conflicts(load_config(path), config)
    if conflicts:
        raise ValueError(
            f"workdir {str(path)!r} was trained with another config; these keys may not change "
            f"on resume: {'; '.join(conflicts)} (use a fresh workdir, or init_checkpoint to "
            "fine-tune from it)"
        )


def config_file_error(config_arg: str, error: BaseException) -> str | None:
    """Describes in one line an error raised by a config file itself.

    Args:
      config_arg: the `--config` value, 'FILE[:ARG]'.
      error: what loading it raised (a SyntaxError in the file, an exception in its
        `get_config`, or ml_collections' re-raise of one with the traceback as text).

    Returns:
      'FILE: ErrorType: message (line N)', or None when no line of FILE is involved.
    """
    path = config_arg.split(":", 1)[0]
    real = os.path.realpath(path)
    if (
        isinstance(error, SyntaxError)
        and error.filename
        and (os.path.realpath(error.filename) == real)
    ):
        return f"{path}: {type(error).__name__}: {error.msg} (line {error.lineno})"
    lines = [
        f.lineno
        for f in traceback.extract_tb(error.__traceback__)
        if os.path.realpath(f.filename) == real
    ]
    text = str(error)
    # ml_collections re-raises TypeError/ValueError with the traceback as text.
    lines += [
        int(n)
        for f, n in re.findall(r'File "([^"]+)", line (\d+)', text)
        if os.path.realpath(f) == real
    ]
    if not lines:
        return None
    body = [x.strip() for x in text.splitlines() if x.strip()]
    last = body[-1] if body else type(error).__name__
    message = (
        last
        if re.match(r"^\w+(Error|Exception|Warning)\b", last)
        else (f"{type(error).__name__}: {last}")
    )
    return f"{path}: {message} (line {lines[-1]})"


class WorkdirLock:
    """An exclusive lock on a workdir for one training run (`WORKDIR/train.lock`, `flock`).

    The operating system releases it when the process ends, however it ends (SIGKILL too), so
    no stale lock is ever left. The file records the holder's host and pid for the error a
    second run gets. Only process 0 of a multi-host run takes it.
    """

    def __init__(self, workdir: os.PathLike | str):
        self.path = Path(workdir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock.

        Raises:
          RuntimeError: another process holds it (naming the workdir, host and pid).
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(
                f"workdir {str(self.path.parent)!r} is in use by another training "
                f"run ({holder}); wait for it to end or use another workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (the file stays: removing it would race with a waiting run)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


__all__ = [
    "base_config",
    "validate_config",
    "prepare_workdir",
    "save_config",
    "load_config",
    "resume_conflicts",
    "check_resume",
    "WorkdirLock",
    "RESUME_FIXED_KEYS",
    "RESUME_FREE_KEYS",
    "config_file_error",
    "default_eval_config",
    "default_checkpoint_config",
    "preset_names",
    "CONFIG_FILENAME",
]
