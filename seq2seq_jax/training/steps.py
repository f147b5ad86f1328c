"""Pure train and eval steps, model-agnostic, the same functions under `jax.jit` and `jax.pmap`.

Shapes: B batch rows (global under jit, per device under pmap), S source length, T target
length, V target vocabulary.

Metrics are `(sum, weight)` pairs (`Metrics`), summed over devices and over logging windows, and
divided only when logged (`summarize`). The loss is label-smoothed cross-entropy over real target
tokens (`targets != 0`, pad id 0), normalised by the number of real target tokens of the *global*
batch: under pmap the per-device gradients of the loss sums are summed with `psum` and divided
by the `psum` of the token counts, so both compilations compute the same gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seq2seq_jax.ops import all_finite, first_argmax
from seq2seq_jax.training.optim import NONFINITE_MODES
from seq2seq_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, tuple[jax.Array, jax.Array]]  # name -> (sum, weight)

MODEL_KEYS = ("inputs_segmentation", "targets_segmentation", "inputs_position", "targets_position")


def cross_entropy_with_smoothing(
    logits: jax.Array,  # [B, T, V]
    targets: jax.Array,  # [B, T] int
    weights: jax.Array,  # [B, T] float, 0 on padding
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Label-smoothed cross-entropy, summed over weighted tokens.

    The smoothed target puts `1 - label_smoothing` on the true token and spreads the rest evenly
    over the other V - 1 tokens; the entropy of that target is subtracted, so a perfect
    prediction of the smoothed distribution has loss 0 (as in Flax's wmt example).

    Returns:
      `(loss_sum, weight_sum)`, float32 scalars.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    # log p(y) = logit_y - logsumexp(logits), with logit_y a masked sum rather than a gather:
    # the gather's transpose is a scatter into a zero [B, T, V] tensor (two extra passes over
    # the largest tensor of the step on CPU); the masked sum's gradient fuses into the softmax.
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
    true_lp = _true_class_logit(logits, targets) - log_z  # [B, T]
    if label_smoothing > 0.0:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        rest_lp = jnp.sum(logits, axis=-1) - vocab * log_z - true_lp  # sum of the others' log p
        normalizer = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low))
        per_token = -(confidence * true_lp + low * rest_lp) - normalizer
    else:
        per_token = -true_lp
    weights = weights.astype(jnp.float32)
    return jnp.sum(per_token * weights), jnp.sum(weights)


def _true_class_logit(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """logits[..., targets] for logits [..., V] and int targets [...]."""
    hit = jnp.arange(logits.shape[-1], dtype=targets.dtype) == targets[..., None]
    return jnp.sum(jnp.where(hit, logits, 0.0), axis=-1)


def token_metrics(
    logits: jax.Array,  # [B, T, V]
    targets: jax.Array,  # [B, T]
    label_smoothing: float,
) -> Metrics:
    """Loss (smoothed), nll (unsmoothed, for perplexity) and token accuracy as (sum, weight)."""
    weights = (targets != 0).astype(jnp.float32)  # [B, T]
    loss = cross_entropy_with_smoothing(logits, targets, weights, label_smoothing)
    nll = cross_entropy_with_smoothing(logits, targets, weights, 0.0)
    correct = (first_argmax(logits, axis=-1) == targets).astype(jnp.float32) * weights
    return {"loss": loss, "nll": nll, "accuracy": (jnp.sum(correct), loss[1])}


def apply_model(
    state: TrainState,
    params: Any,
    batch: Batch,
    *,
    train: bool,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Teacher-forced logits `[B, T, V]` (float32) of the model behind `state.apply_fn`."""
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    logits = state.apply_fn(
        {"params": params},
        batch["inputs"],
        batch["targets"],
        **{k: batch[k] for k in MODEL_KEYS},
        train=train,
        rngs=rngs,
    )
    return logits.astype(jnp.float32)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
    nonfinite: str = "abort",
) -> tuple[TrainState, Metrics]:
    """One optimiser step on `batch`.

    Args:
      state: the train state (replicated per device under pmap, sharded under jit).
      batch: the batch dict (docs/ARCHITECTURE.md), `[B, S]` / `[B, T]` int32.
      label_smoothing: label-smoothing mass in [0, 1).
      axis_name: the pmap axis name; None under jit.
      nonfinite: `NONFINITE_MODES`. A step is non-finite when its loss or any updated
        parameter is NaN/Inf. 'skip' keeps the parameters and optimiser state of such a step
        unchanged (the step count and so the data and dropout stream still advance); 'abort'
        and 'ignore' apply the update (the train loop stops a run at the first non-finite step
        under 'abort', before anything poisoned is saved).

    Returns:
      `(new_state, metrics)`; metrics are global (summed over devices) `(sum, weight)` pairs:
      loss, nll, accuracy, grad_norm (of the gradient before clipping), nonfinite (1 for a
      non-finite step), nonfinite_skipped (1 for a step skipped under 'skip'), target_tokens
      (real target tokens of the step) and padding (fraction of the batch's target positions
      that are padding).
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"optimizer.nonfinite={nonfinite!r} is not one of {list(NONFINITE_MODES)}")
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:  # Different masks per device, as a global batch would have.
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        logits = apply_model(state, params, batch, train=True, dropout_rng=dropout_rng)
        weights = (batch["targets"] != 0).astype(jnp.float32)
        loss_sum, weight = cross_entropy_with_smoothing(
            logits, batch["targets"], weights, label_smoothing
        )
        return loss_sum, logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = token_metrics(logits, batch["targets"], label_smoothing)
    if axis_name is not None:
        grads = jax.lax.psum(grads, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
    num_tokens = metrics["loss"][1]
    grads = jax.tree.map(lambda g: g / jnp.maximum(num_tokens, 1.0), grads)
    new_state = state.apply_gradients(grads)
    one = jnp.ones((), jnp.float32)
    finite = jnp.isfinite(metrics["loss"][0]) & all_finite(new_state.params)
    if nonfinite == "skip":
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = new_state.replace(
            params=jax.tree.map(keep, new_state.params, state.params),
            opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
        )
    bad = 1.0 - finite.astype(jnp.float32)
    metrics["nonfinite"] = (bad, one)  # Logged as the fraction of non-finite steps.
    positions = jnp.asarray(batch["targets"].size, jnp.float32)  # B x T target positions
    if axis_name is not None:
        positions = jax.lax.psum(positions, axis_name)
    metrics["target_tokens"] = (num_tokens, one)  # Logged as real target tokens per step.
    metrics["padding"] = (positions - num_tokens, positions)  # Fraction of padded positions.
    metrics["grad_norm"] = (optax.tree.norm(grads), one)
    skipped = bad if nonfinite == "skip" else jnp.zeros((), jnp.float32)
    metrics["nonfinite_skipped"] = (skipped, one)  # Logged as the fraction of skipped steps.
    return new_state, metrics


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    label_smoothing: float = 0.0,
    axis_name: str | None = None,
) -> Metrics:
    """Teacher-forced evaluation metrics (loss, nll, accuracy) of `batch`, no dropout."""
    logits = apply_model(state, state.params, batch, train=False)
    metrics = token_metrics(logits, batch["targets"], label_smoothing)
    if axis_name is not None:
        metrics = jax.lax.psum(metrics, axis_name)
    return metrics


def summarize(metrics: dict[str, tuple[Any, Any]], prefix: str = "") -> dict[str, float]:
    """Divides `(sum, weight)` pairs into floats and adds perplexity = exp(nll) (capped)."""
    out = {}
    for name, (total, weight) in metrics.items():
        total, weight = float(np.asarray(total)), float(np.asarray(weight))
        out[prefix + name] = total / weight if weight > 0 else float("nan")
    if prefix + "nll" in out:
        out[prefix + "perplexity"] = float(np.exp(min(out[prefix + "nll"], 50.0)))
    return out


def accumulate(total: dict | None, metrics: dict) -> dict:
    """Adds the `(sum, weight)` pairs of `metrics` into `total` (host numpy)."""
    metrics = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(metrics))
    if total is None:
        return metrics
    return jax.tree.map(np.add, total, metrics)
