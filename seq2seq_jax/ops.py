"""Array operations written for XLA's CPU backend; they compute the same results everywhere.

- `first_argmax`: `jnp.argmax` (the first maximum; the first NaN if there is one) as a max and a
  min-index reduction. XLA lowers `jnp.argmax` to one variadic (value, index) reduction, which
  the CPU backend runs ~4x slower. Used by every greedy-decoding step and train-step accuracy.
- `top_k`: `lax.top_k` through block maxima (beam search's candidate selection).
- `accumulate_in_float32`, `float32_product`: the `dot_general`s of the models' Dense and output
  layers, so bfloat16 models multiply bf16 x bf16 into float32.
- `bfloat16_forward_product`: the output layer's product with bfloat16 operands in the forward
  pass only (`model.output_product='bfloat16_forward'`); its gradient is float32's.
- `all_finite`: whether a pytree holds no NaN/Inf (the train step's non-finite guard, and the
  check `decode` makes on a restored checkpoint).

`python -m benchmarks.run` measures what each buys (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def all_finite(tree: Any) -> jax.Array:
    """Whether every element of every floating-point leaf of `tree` is finite (a bool scalar).

    Works on jax and numpy leaves, inside `jit` or outside; integer leaves are ignored.
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.ones((), jnp.bool_)
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


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


def accumulate_in_float32(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.dot_general` that accumulates in float32 and returns the inputs' dtype.

    The `dot_general` of the models' Dense layers. In float32 it is the plain product. With
    bfloat16 inputs XLA's CPU backend runs bf16 x bf16 -> bf16 at or below the float32 rate, but
    bf16 x bf16 -> float32 at ~1.8x it (AVX512-BF16; measured [2048, 1280] x [1280, 8000]: 341 vs
    185 GFLOP/s for float32), and float32 accumulation is the more accurate product too; GPUs and
    TPUs accumulate bf16 products in float32 either way.
    """
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32
    )
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))


def float32_product(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`lax.dot_general` accumulating and returning float32 (output layers: float32 logits)."""
    del preferred_element_type
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _bfloat16_forward_dot(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> jax.Array:
    return jax.lax.dot_general(
        lhs.astype(jnp.bfloat16),
        rhs.astype(jnp.bfloat16),
        dimension_numbers,
        preferred_element_type=jnp.float32,
    )


def _bfloat16_forward_dot_fwd(lhs, rhs, dimension_numbers):
    return _bfloat16_forward_dot(lhs, rhs, dimension_numbers), (lhs, rhs)


def _bfloat16_forward_dot_bwd(dimension_numbers, residuals, g):
    lhs, rhs = residuals
    _, vjp = jax.vjp(lambda a, b: float32_product(a, b, dimension_numbers), lhs, rhs)
    return vjp(g)


_bfloat16_forward_dot.defvjp(_bfloat16_forward_dot_fwd, _bfloat16_forward_dot_bwd)


def bfloat16_forward_product(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """`float32_product` whose forward pass multiplies bfloat16-rounded operands (float32
    accumulation, float32 result); the backward pass is `float32_product`'s, from the float32
    operands (a straight-through gradient of the rounding).

    Why only the forward: XLA's CPU backend runs a bf16 x bf16 -> float32 product ~1.9x faster
    than float32 when both operands are plain row-major arrays (the output layer's forward,
    features [N, F] x kernel [F, V]), but converts a transposed bf16 operand (both gradient
    products, g x kernel^T and features^T x g) back to float32, so a bf16 backward buys nothing
    there (measured on the [2048, 1280] x [1280, 8000] Multi30k output layer: forward 306 -> 156
    ms, backward 480 -> 545 ms). Logit error: one bf16 rounding of each operand (~2^-9
    relative); the result and gradients are float32.
    """
    del precision, preferred_element_type
    return _bfloat16_forward_dot(lhs, rhs, _hashable(dimension_numbers))


def _hashable(dimension_numbers: Any) -> Any:
    (lc, rc), (lb, rb) = dimension_numbers
    return ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))


# `model.output_product` -> the output layer's `dot_general` (the one owner of the choice: the
# model config validates against its keys).
OUTPUT_PRODUCTS = {"float32": float32_product, "bfloat16_forward": bfloat16_forward_product}


def output_product(name: str):
    """The output layer's `dot_general` for `model.output_product` (`OUTPUT_PRODUCTS`)."""
    if name not in OUTPUT_PRODUCTS:
        raise ValueError(f"model.output_product={name!r}; choose one of {list(OUTPUT_PRODUCTS)}")
    return OUTPUT_PRODUCTS[name]


def top_k(x: jax.Array, k: int, *, block: int = 64) -> tuple[jax.Array, jax.Array]:
    """`jax.lax.top_k` over the last axis (same values, same indices), faster for small k.

    XLA's CPU TopK costs ~1.4 ns per input element whatever k is (3.6 ms for beam search's
    [64, 5 x 8000] candidates, every step). Here the last axis is cut into blocks of `block`
    elements; the k blocks with the largest maxima (ties: lower block first) hold the k largest
    elements (ties: lower index first), because every block ranked before an element's block
    contains an element ranked before it. So one max-reduction over `x`, a TopK over the block
    maxima and a TopK over k gathered blocks replace the TopK over `x`. Rows too short for that
    to pay use `lax.top_k` directly.

    Args:
      x: [..., n] values (NaN-free).
      k: 1 <= k <= n.
      block: elements per block.

    Returns:
      (values [..., k] in descending order, int32 indices [..., k]), as `lax.top_k`.
    """
    n = x.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"top_k needs 1 <= k <= {n} (the last axis of shape {x.shape}), got {k}")
    if n < 4 * k * block:
        return jax.lax.top_k(x, k)
    blocks = -(-n // block)
    pad = blocks * block - n  # -inf padding sits after every real element: never chosen
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
    grouped = padded.reshape(*x.shape[:-1], blocks, block)  # [..., blocks, block]
    _, chosen = jax.lax.top_k(jnp.max(grouped, axis=-1), k)  # [..., k]
    chosen = jnp.sort(chosen, axis=-1)  # in index order, so position ties follow index ties
    gathered = jnp.take_along_axis(grouped, chosen[..., None], axis=-2)  # [..., k, block]
    values, where = jax.lax.top_k(gathered.reshape(*x.shape[:-1], k * block), k)
    index = jnp.take_along_axis(chosen, where // block, axis=-1) * block + where % block
    return values, index.astype(jnp.int32)
