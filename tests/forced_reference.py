"""Independent references for the decode CLI's scores: teacher-forced log-probabilities computed
directly with `model.apply` (all target positions at once, in one padded batch), never through
the decoding step or the searches."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _pad(rows: Sequence[np.ndarray]) -> np.ndarray:
    out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def teacher_forced_log_probs(
    model, params, sources: Sequence[np.ndarray], targets: Sequence[np.ndarray]
) -> np.ndarray:
    """float64 [n, T, V] log-softmax of the teacher-forced logits of n (source, target) pairs,
    padded with 0, the pad id (0) excluded from the softmax as the searches exclude it."""

    @jax.jit
    def log_probs(inputs, outputs):
        logits = model.apply({"params": params}, inputs, outputs).astype(jnp.float32)
        return jax.nn.log_softmax(logits.at[..., 0].set(-jnp.inf), axis=-1)

    return np.asarray(log_probs(_pad(sources), _pad(targets)), np.float64)


def forced_scores(
    members: Sequence[tuple], sources: Sequence[np.ndarray], targets: Sequence[np.ndarray]
) -> np.ndarray:
    """log P(target | source) summed over each target's tokens (EOS included) of one model
    (`members = [(model, params)]`) or of the equal-weight ensemble of several: at each position
    the normalised mean of the members' log-probabilities. float64 [n]."""
    mean = np.mean([teacher_forced_log_probs(m, p, sources, targets) for m, p in members], axis=0)
    top = np.max(mean, axis=-1, keepdims=True)
    log_z = np.log(np.sum(np.exp(mean - top), axis=-1)) + top[..., 0]  # exp(-inf) = 0
    scores = []
    for i, target in enumerate(targets):
        t = np.arange(len(target))
        scores.append(np.sum(mean[i, t, np.asarray(target)] - log_z[i, t]))
    return np.asarray(scores)
