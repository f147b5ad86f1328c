"""Array operations written for speed on XLA's CPU backend (and no slower elsewhere).

`first_argmax` is `jnp.argmax` (the first maximum; the first NaN if there is one) as a max
followed by a min-index reduction. XLA lowers `jnp.argmax` to one variadic (value, index)
reduction, which the CPU backend runs ~4x slower than the two plain reductions here
(`python -m benchmarks.run` measures what this buys: it is on every greedy-decoding step and in
every train step's accuracy).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def first_argmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Index of the first maximum of `x` along `axis`, exactly as `jnp.argmax` returns it.

    Args:
      x: a float array with a non-empty `axis`.
      axis: the reduced axis.

    Returns:
      int32 indices, `x.shape` without `axis`.
    """
    size = x.shape[axis]
    if size == 0:
        raise ValueError(f"first_argmax of an empty axis {axis} (shape {x.shape}).")
    top = jnp.max(x, axis=axis, keepdims=True)
    hit = x == top
    if jnp.issubdtype(x.dtype, jnp.inexact):
        hit = hit | jnp.isnan(x)  # argmax returns the first NaN; max is NaN then, == is False
    shape = [1] * x.ndim
    shape[axis] = size
    index = jnp.arange(size, dtype=jnp.int32).reshape(shape)
    return jnp.min(jnp.where(hit, index, size), axis=axis)


def accumulate_in_float32(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                          precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """`lax.dot_general` that accumulates in float32 and returns the inputs' dtype.

    The `dot_general` of the models' Dense layers. In float32 it is the plain product. With
    bfloat16 inputs XLA's CPU backend runs bf16 x bf16 -> bf16 at or below the float32 rate, but
    bf16 x bf16 -> float32 at ~1.8x it (AVX512-BF16; measured [2048, 1280] x [1280, 8000]: 341 vs
    185 GFLOP/s for float32), and float32 accumulation is the more accurate product too; GPUs and
    TPUs accumulate bf16 products in float32 either way.
    """
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=jnp.float32)
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def float32_product(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any,
                    precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """`lax.dot_general` accumulating and returning float32 (output layers: float32 logits)."""
    del preferred_element_type
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32)
