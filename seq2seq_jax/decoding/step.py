"""Calling a model's decoding step: shape checks and log-probabilities.

The step contract (docs/ARCHITECTURE.md): `tokens_to_logits(ids: int32[N], cache) ->
(logits: float32[N, V], attention: float32[N, S], new_cache)`, every cache leaf with leading
dimension N. Shape glossary: N rows of the step (B, or B*K under beam search), V vocabulary,
S source length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
TokensToLogits = Callable[[jax.Array, PyTree], tuple[jax.Array, jax.Array, PyTree]]

PAD_ID = 0  # pad is 0 always (docs/ARCHITECTURE.md); it is never generated.


class StepShapes(NamedTuple):
    """Static sizes of a decoding step."""

    rows: int  # N
    vocab: int  # V
    source: int  # S


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree
    )


def cache_rows(cache: PyTree) -> int:
    """Returns the common leading dimension N of every cache leaf.

    Raises:
      ValueError: if the cache has no leaves, a scalar leaf, or leaves of different leading dims.
    """
    leaves = jax.tree_util.tree_leaves_with_path(cache)
    if not leaves:
        raise ValueError("decoding cache has no array leaves: cannot infer the batch size.")
    dims = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if not shape:
            raise ValueError(
                f"cache leaf {jax.tree_util.keystr(path)} is a scalar; every cache "
                "leaf needs a leading batch dimension."
            )
        dims[jax.tree_util.keystr(path)] = shape[0]
    if len(set(dims.values())) != 1:
        raise ValueError(f"cache leaves have different leading dimensions: {dims}.")
    return next(iter(dims.values()))


def probe_step(tokens_to_logits: TokensToLogits, cache: PyTree) -> StepShapes:
    """Traces one step abstractly (no compute) and checks it honours the step contract.

    Args:
      tokens_to_logits: the model's step function.
      cache: the initial cache, every leaf with leading dimension N.

    Returns:
      The static sizes (N, V, S).

    Raises:
      ValueError: naming the offending output when shapes or the cache structure do not match.
    """
    rows = cache_rows(cache)
    ids = jax.ShapeDtypeStruct((rows,), jnp.int32)
    logits, attention, new_cache = jax.eval_shape(tokens_to_logits, ids, _abstract(cache))
    if len(logits.shape) != 2 or logits.shape[0] != rows:
        raise ValueError(
            f"tokens_to_logits returned logits of shape {logits.shape}; "
            f"expected [N, V] with N={rows}."
        )
    if attention.shape[:1] != (rows,) or len(attention.shape) != 2:
        raise ValueError(
            f"tokens_to_logits returned attention of shape {attention.shape}; "
            f"expected [N, S] with N={rows}."
        )
    before, after = _abstract(cache), _abstract(new_cache)
    if jax.tree_util.tree_structure(before) != jax.tree_util.tree_structure(after) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(
            jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True
        )
    ):
        raise ValueError(
            "tokens_to_logits must return a cache with the same structure, shapes and "
            f"dtypes as its input; got {after} for input {before}."
        )
    if logits.shape[1] < 2:
        raise ValueError(f"vocabulary size must be >= 2, got logits of shape {logits.shape}.")
    return StepShapes(rows=rows, vocab=logits.shape[1], source=attention.shape[1])


def step_log_probs(logits: jax.Array) -> jax.Array:
    """Float32 log-softmax of step logits with the pad id forbidden (`-inf`).

    Args:
      logits: [N, V] step logits, any float dtype.

    Returns:
      float32 [N, V] log-probabilities; column `PAD_ID` is `-inf`.
    """
    logits = logits.astype(jnp.float32).at[:, PAD_ID].set(-jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)
