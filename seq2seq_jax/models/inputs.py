"""Checks and masks at the model boundary, shared by both model families.

Shape glossary: B batch, S source length, T target length.

Every public model method validates its id / segmentation / position arrays here with `chex`
(rank, integer dtype, equal shapes), so a wrong mask shape fails with a message naming the
argument instead of broadcasting silently.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

Array = chex.Array


def check_ids(
    name: str,
    ids: Array,
    segmentation: Array | None = None,
    position: Array | None = None,
) -> None:
    """Asserts that `ids` is int [B, L] and its segmentation / position arrays match it.

    Args:
      name: 'inputs' or 'targets', used in the messages.
      ids: int [B, L] token ids.
      segmentation: optional int [B, L].
      position: optional int [B, L].

    Raises:
      AssertionError: naming the argument and the shapes involved.
    """
    if ids.ndim != 2:
        raise AssertionError(f"{name} must be [B, L] token ids, got shape {tuple(ids.shape)}")
    chex.assert_type(ids, int)
    for suffix, extra in (("segmentation", segmentation), ("position", position)):
        if extra is None:
            continue
        if tuple(extra.shape) != tuple(ids.shape):
            raise AssertionError(
                f"{name}_{suffix} has shape {tuple(extra.shape)} but {name} has shape "
                f"{tuple(ids.shape)}; they must be equal [B, L]"
            )
        chex.assert_type(extra, int)


def check_same_batch(inputs: Array, targets: Array) -> None:
    """Asserts that source and target batches have the same batch size."""
    if inputs.shape[0] != targets.shape[0]:
        raise AssertionError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} differ in batch size"
        )


def valid_mask(ids: Array, segmentation: Array | None, pad_id: int) -> Array:
    """bool [B, L]: True on real tokens (segment != 0 when packed, else id != pad)."""
    if segmentation is not None:
        return segmentation != 0
    return ids != pad_id


def default_positions(ids: Array, position: Array | None) -> Array:
    """int [B, L] positions: `position` when given, else 0..L-1 on every row."""
    if position is not None:
        return position
    return jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32)[None], ids.shape)


def head_mean(weights: Array, num_heads: int) -> Array:
    """Averages attention weights over heads: [B, H, ..., S] -> [B, ..., S] (no-op for H=1)."""
    if num_heads == 1:
        return weights
    return jnp.mean(weights, axis=1)
