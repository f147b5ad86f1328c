"""Logit filters for sampling: temperature, top-k and top-p (nucleus).

Shape glossary: N rows, V vocabulary. Filtered-out entries are set to `-inf`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the entries of each row that are >= the row's k-th largest value (ties kept).

    Args:
      logits: [N, V].
      k: static number of entries to keep; 0 (or >= V) disables the filter.

    Returns:
      [N, V] logits with the rest set to `-inf`.
    """
    if k < 0:
        raise ValueError(f"top_k must be >= 0, got {k}.")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [N, 1]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits: jax.Array, p: float | jax.Array) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most probable entries whose mass reaches `p`.

    Entries are taken in order of decreasing probability until their cumulative probability is
    >= p; every entry as probable as the last one taken is kept too (ties are never split). The
    most probable entry is always kept.

    Args:
      logits: [N, V].
      p: probability mass in (0, 1]; 1 disables the filter. May be traced.

    Returns:
      [N, V] logits with the rest set to `-inf`.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [N, V]
    sorted_probs = -jnp.sort(-probs, axis=-1)
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    taken = mass_before < p  # a prefix of the sorted entries, never empty
    threshold = jnp.min(jnp.where(taken, sorted_probs, jnp.inf), axis=-1, keepdims=True)
    keep = (probs >= threshold) | (p >= 1.0)
    return jnp.where(keep, logits, -jnp.inf)


def filter_logits(
    logits: jax.Array,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int = 0,
    top_p: float | jax.Array = 1.0,
) -> jax.Array:
    """Applies temperature, then top-k, then top-p (the order of Hugging Face's samplers).

    Args:
      logits: [N, V] logits or log-probabilities.
      temperature: > 0; logits are divided by it.
      top_k: static; 0 disables.
      top_p: in (0, 1]; 1 disables.

    Returns:
      float32 [N, V] filtered, temperature-scaled logits for `jax.random.categorical`.
    """
    logits = logits.astype(jnp.float32) / temperature
    return top_p_filter(top_k_filter(logits, top_k), top_p)
