"""Boolean attention masks: padding, causal, packed-segment, and their combination.

Shape glossary: B batch, H heads, T query length, S key length, L any sequence length.

Every mask is boolean, `True` where attention is allowed, and broadcastable to [B, H, T, S]:

* `padding_mask(ids)` -> [B, L]: a key (or query) padding mask;
* `causal_mask(T)` -> [1, T, T]: query t may see keys 0..t;
* `segment_mask(q_seg, k_seg)` -> [B, T, S]: packed examples only see their own segment;
  segment id 0 is padding and sees nothing;
* `combine(*masks)` -> the `&` of all masks after lifting each to a common rank.

Attention modules accept [B, S] (one padding mask for every query), [B, T, S], or
[B, H, T, S] (see `seq2seq_jax.layers.attention`).
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

Array = chex.Array


def padding_mask(
    ids: Array | None = None,
    *,
    lengths: Array | None = None,
    max_length: int | None = None,
    pad_id: int = 0,
) -> Array:
    """Padding mask from token ids or from sequence lengths.

    Args:
      ids: int [B, L] token ids; positions equal to `pad_id` are masked.
      lengths: int [B] number of real tokens per row (alternative to `ids`).
      max_length: L, required with `lengths`.
      pad_id: the padding id (0 in this project).

    Returns:
      bool [B, L], True on real tokens.
    """
    if (ids is None) == (lengths is None):
        raise ValueError("padding_mask needs exactly one of `ids` or `lengths`.")
    if ids is not None:
        chex.assert_rank(ids, 2)
        return ids != pad_id
    chex.assert_rank(lengths, 1)
    if max_length is None:
        raise ValueError("padding_mask(lengths=...) needs `max_length`.")
    return jnp.arange(max_length)[None, :] < lengths[:, None]


def causal_mask(length: int) -> Array:
    """Causal mask: query t sees keys 0..t.

    Returns:
      bool [1, T, T].
    """
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None]


def segment_mask(query_segmentation: Array, key_segmentation: Array) -> Array:
    """Packed-segment mask: a query sees only keys of its own (non-zero) segment.

    Args:
      query_segmentation: int [B, T], 1..n per packed example, 0 on padding.
      key_segmentation: int [B, S], same convention.

    Returns:
      bool [B, T, S].
    """
    chex.assert_rank([query_segmentation, key_segmentation], 2)
    chex.assert_equal_shape_prefix([query_segmentation, key_segmentation], 1)
    q = query_segmentation[:, :, None]
    k = key_segmentation[:, None, :]
    return (q == k) & (q != 0) & (k != 0)


def combine(*masks: Array | None) -> Array | None:
    """`&` of masks of ranks 2 ([B, S]), 3 ([B|1, T, S]) or 4 ([B|1, H|1, T, S]).

    A rank-2 mask [B, S] is a key mask and becomes [B, 1, S] (every query); ranks are then
    aligned by inserting a heads axis. `None` entries are ignored; all `None` gives `None`.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    rank = max(m.ndim for m in present)
    lifted = []
    for m in present:
        chex.assert_type(m, bool)
        if m.ndim not in (2, 3, 4):
            raise AssertionError(f"mask of shape {m.shape}: expected rank 2, 3 or 4")
        if m.ndim == 2:
            m = m[:, None, :]
        if rank == 4 and m.ndim == 3:
            m = m[:, None]
        lifted.append(m)
    out = lifted[0]
    for m in lifted[1:]:
        out = out & m
    return out
