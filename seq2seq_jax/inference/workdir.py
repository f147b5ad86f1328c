"""Restoring a trained model for decoding from a self-contained workdir (read-only).

A workdir holds `config.json`, `tokenizer/` and `checkpoints/<step>/` (see
`seq2seq_jax.workdir`, which owns the layout and the read-only queries used here). Nothing here
writes to it, so decoding is safe while training still runs in the same workdir (the only Orbax
manager opened is read-only: it cannot clean up the trainer's in-flight temporary
directories).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from seq2seq_jax import data as data_lib
from seq2seq_jax import models
from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.inference.ensemble import same_vocabulary
from seq2seq_jax.ops import all_finite

PyTree = Any
# `--checkpoint`: a step of `checkpoints/`, or a parameters-only checkpoint the final evaluation
# saved (`workdir.PARAMS_ONLY_KINDS`: `averaged/`, `ema/`).
CHECKPOINT_CHOICES = ("latest", "best", *workdir_lib.PARAMS_ONLY_KINDS)


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """Everything needed to decode with a workdir's checkpoint.

    Attributes:
      config: the resolved experiment config of the run (`config.json`).
      model_config: the decode-mode `ModelConfig` (deterministic).
      model: the Linen module built from it.
      params: the checkpoint's parameters (on the first local device).
      source_tokenizer: the run's source tokenizer.
      target_tokenizer: the run's target tokenizer.
      step: the restored training step.
      step_dir: the Orbax step directory read.
    """

    config: ml_collections.ConfigDict
    model_config: models.ModelConfig
    model: nn.Module
    params: PyTree
    source_tokenizer: Any
    target_tokenizer: Any
    step: int
    step_dir: Path


def best_step(workdir: os.PathLike | str, metric: str, mode: str) -> int:
    """The complete step with the best finite `metric` (ties: the later step).

    Raises:
      FileNotFoundError: no complete checkpoint in the workdir.
      ValueError: no checkpoint has a finite value of `metric`.
    """
    checkpoints_dir = workdir_lib.resolve_checkpoint(workdir).step_dir.parent  # Raises if none.
    step = workdir_lib.best_step(checkpoints_dir, metric, mode)
    if step is None:
        raise ValueError(
            f"no checkpoint in {checkpoints_dir} has a value of {metric!r} "
            f"(steps: {workdir_lib.complete_steps(checkpoints_dir)}); use the "
            "latest or a step number instead"
        )
    return step


def choose_step(
    workdir: Path, config: ml_collections.ConfigDict, checkpoint: str, step: int | None
) -> int | None:
    """The step to restore: `step` if given, else 'latest' (None) or 'best' by the run's metric.

    Raises:
      ValueError: unknown `checkpoint`, both a step and 'best', or 'best' without a tracked metric.
    """
    if checkpoint not in CHECKPOINT_CHOICES:
        raise ValueError(
            f"--checkpoint must be one of {list(CHECKPOINT_CHOICES)}, got {checkpoint!r}"
        )
    if checkpoint in workdir_lib.PARAMS_ONLY_KINDS:
        raise ValueError(f"choose_step: the {checkpoint} checkpoint has no step of its own here")
    if step is not None:
        if checkpoint == "best":
            raise ValueError("give either --checkpoint=best or --checkpoint_step, not both")
        return step
    if checkpoint == "latest":
        return None
    metric = config.get("checkpoint", {}).get("best_metric", "")
    if not metric:
        raise ValueError(
            f"--checkpoint=best: the run in {workdir} tracked no best metric "
            "(config.checkpoint.best_metric is empty)"
        )
    return best_step(workdir, metric, config.checkpoint.get("best_mode", "max"))


def _build_model(
    config: ml_collections.ConfigDict, source_tok: Any, target_tok: Any
) -> tuple[models.ModelConfig, nn.Module]:
    model_config = models.ModelConfig.from_config(
        config.model,
        source_vocab_size=source_tok.vocab_size,
        target_vocab_size=target_tok.vocab_size,
        bos_id=target_tok.bos_id,
        eos_id=target_tok.eos_id,
    ).replace(deterministic=True)
    return model_config, models.build_model(model_config)


def _abstract_params(model: nn.Module) -> PyTree:
    """Parameter shapes/dtypes, placed on the first local device (decoding runs there)."""
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0)))["params"]
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)


def _locate(
    path: Path, config: ml_collections.ConfigDict, checkpoint: str, step: int | None, average: int
) -> tuple[workdir_lib.CheckpointLocation, list[Path]]:
    """The checkpoint to restore and the step directories to average (empty: none)."""
    if average < 0:
        raise ValueError(f"--average_checkpoints must be >= 0, got {average}")
    if average and (checkpoint != "latest" or step is not None):
        raise ValueError(
            "--average_checkpoints averages the last kept checkpoints: give it "
            "without --checkpoint=best/averaged/ema and --checkpoint_step"
        )
    if checkpoint in workdir_lib.PARAMS_ONLY_KINDS:
        if step is not None:
            raise ValueError(
                f"give either --checkpoint={checkpoint} or --checkpoint_step, not both"
            )
        step_dir = workdir_lib.params_only_step_dir(path, checkpoint)
        return workdir_lib.resolve_checkpoint(step_dir), []
    location = workdir_lib.resolve_checkpoint(path, choose_step(path, config, checkpoint, step))
    return location, workdir_lib.last_step_dirs(path, average) if average else []


def restore_from_workdir(
    workdir: os.PathLike | str,
    *,
    checkpoint: str = "latest",
    step: int | None = None,
    dtype: str | None = None,
    average: int = 0,
) -> RestoredModel:
    """Loads config, tokenizers and a checkpoint's parameters from a training workdir.

    Args:
      workdir: the training run's directory.
      checkpoint: 'latest', 'best' (by the run's `config.checkpoint.best_metric`) or
        'averaged' (`WORKDIR/averaged/`, saved with `config.checkpoint.average_last`) or 'ema'
        (`WORKDIR/ema/`, saved with `config.optimizer.ema_decay`).
      step: restore this step instead (with `checkpoint='latest'`).
      average: if > 0, the mean of the parameters of the last `average` kept checkpoints
        (`step` is then the latest of them).
      dtype: run the model in this dtype (parameters cast once after the restore, see
        `models.with_dtype`); None keeps the run's `model.dtype` / `model.param_dtype`.

    Returns:
      A `RestoredModel`.

    Raises:
      FileNotFoundError: missing workdir, config, tokenizer or checkpoint (naming the path).
      ValueError: bad option, corrupt checkpoint (`CheckpointError`) or parameters that do not
        match the config's model (all named).
    """
    path = Path(workdir).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"workdir does not exist: {path}")
    config = workdir_lib.load_config(path)
    tokenizer_dir = path / workdir_lib.TOKENIZER_DIRNAME
    source_tok, target_tok = data_lib.load_tokenizers(str(tokenizer_dir))
    location, averaged = _locate(path, config, checkpoint, step, average)
    model_config, model = _build_model(config, source_tok, target_tok)
    if averaged:
        params = workdir_lib.average_params(averaged, _abstract_params(model))
        location = workdir_lib.resolve_checkpoint(averaged[-1])
    else:
        params = workdir_lib.restore_params(location.step_dir, _abstract_params(model))
    if not bool(all_finite(params)):
        raise ValueError(
            f"checkpoint {location.step_dir} holds non-finite parameters (NaN or "
            "Inf): the run diverged; decode an earlier step with --checkpoint_step"
        )
    if dtype is not None:
        model_config, params = models.with_dtype(model_config, params, dtype)
        model = models.build_model(model_config)
    return RestoredModel(
        config,
        model_config,
        model,
        params,
        source_tok,
        target_tok,
        location.step,
        location.step_dir,
    )


def split_workdirs(workdir: str) -> list[str]:
    """The workdirs of `--workdir=DIR` or of an ensemble `--workdir=DIR1,DIR2,...`."""
    dirs = [d.strip() for d in str(workdir).split(",")]
    if not all(dirs):
        raise ValueError(f"--workdir={workdir}: an empty workdir in the comma-separated list")
    return dirs


def restore_ensemble(workdirs: Sequence[os.PathLike | str], **kwargs: Any) -> list[RestoredModel]:
    """`restore_from_workdir` of each workdir (same `kwargs`), checked to form an ensemble: the
    same target vocabulary (the searches average log-probabilities over it) and the same source
    vocabulary (the members read the same source ids). Models of either family may be mixed.

    Raises:
      ValueError: naming both workdirs when their vocabularies differ; as `restore_from_workdir`.
    """
    restored = [restore_from_workdir(w, **kwargs) for w in workdirs]
    first = restored[0]
    for w, other in zip(workdirs[1:], restored[1:], strict=True):
        for side in ("target", "source"):
            if not same_vocabulary(
                getattr(first, f"{side}_tokenizer"), getattr(other, f"{side}_tokenizer")
            ):
                raise ValueError(
                    f"--workdir: {workdirs[0]} and {w} have different {side} "
                    "vocabularies; an ensemble's models must share them"
                )
    return restored
