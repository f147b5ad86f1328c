"""Length handling for decoding: the GNMT length penalty and per-example maximum lengths.

Shape glossary: B batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.decoding.options import SearchConfig


def gnmt_length_penalty(length: jax.Array | int, alpha: jax.Array | float) -> jax.Array:
    """GNMT length penalty `((5 + length) / 6) ** alpha` (Wu et al., 2016).

    Args:
      length: hypothesis length(s) in tokens, EOS included; any shape.
      alpha: strength; 0 disables the penalty (scores are plain log-probabilities). May be traced.

    Returns:
      float32 array of the shape of `length`.
    """
    length = jnp.asarray(length, jnp.float32)
    return ((5.0 + length) / 6.0) ** jnp.asarray(alpha, jnp.float32)


def max_length_from_source(
    source_lengths: jax.Array | np.ndarray,
    *,
    a: float = SearchConfig.length_ratio,
    b: float = SearchConfig.length_offset,
    cap: int,
) -> jax.Array:
    """Per-example maximum output length `ceil(a * source_length + b)`, clipped to [1, cap].

    Args:
      source_lengths: int [B], number of real source tokens (EOS included) of each example.
      a: multiplier of the source length.
      b: additive slack.
      cap: upper bound; use the static `max_decode_length` (buffer size) of the search.

    Returns:
      int32 [B] maximum lengths, to pass as `max_length` with `max_decode_length=cap`.
    """
    if cap < 1:
        raise ValueError(f"max_length_from_source: cap must be >= 1, got {cap}.")
    lengths = jnp.ceil(a * jnp.asarray(source_lengths, jnp.float32) + b)
    return jnp.clip(lengths, 1, cap).astype(jnp.int32)


def resolve_max_length(
    max_length: int | jax.Array, max_decode_length: int | None, batch: int
) -> tuple[int, jax.Array]:
    """Turns the `max_length` arguments of a search into a static buffer size and limits.

    Args:
      max_length: a Python int shared by all examples, or an int array [B] of per-example limits
        (or a scalar array, e.g. traced under jit).
      max_decode_length: static buffer length L; required when `max_length` is an array,
        defaults to `max_length` when it is an int.
      batch: B.

    Returns:
      (L, limits) with limits int32 [B] clipped to [1, L].

    Raises:
      ValueError: on a non-positive length or a per-example array of the wrong shape.
    """
    if isinstance(max_length, int | np.integer):
        length = int(max_decode_length if max_decode_length is not None else max_length)
        if max_length < 1 or length < 1:
            raise ValueError(
                f"max_length must be >= 1, got max_length={max_length}, "
                f"max_decode_length={max_decode_length}."
            )
        return length, jnp.full((batch,), min(int(max_length), length), jnp.int32)
    if max_decode_length is None:
        raise ValueError(
            "max_length is an array of per-example limits: pass the static buffer "
            "size max_decode_length=<int> as well."
        )
    if int(max_decode_length) < 1:
        raise ValueError(f"max_decode_length must be >= 1, got {max_decode_length}.")
    if jnp.shape(max_length) not in ((), (batch,)):
        raise ValueError(
            f"max_length array must have shape [B]=({batch},) or be a scalar, "
            f"got {jnp.shape(max_length)}."
        )
    limits = jnp.clip(jnp.asarray(max_length, jnp.int32), 1, int(max_decode_length))
    limits = jnp.broadcast_to(limits, (batch,))
    return int(max_decode_length), limits
