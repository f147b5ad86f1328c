"""Decoder inputs: the targets shifted right behind BOS. The one place this is done.

Shape glossary: B batch, T target length.

Every model's teacher-forced `decode` calls `shift_right`; nothing else builds decoder inputs.
With packed rows (`segmentation` given) every example starts with its own BOS, so no example
reads the previous example's last token.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp

Array = chex.Array


def shift_right(
    targets: Array,
    *,
    bos_id: int,
    pad_id: int = 0,
    segmentation: Array | None = None,
) -> Array:
    """Shifts targets right by one position, segment by segment, with BOS at each start.

    decoder_input[b, t] = BOS if t is the first position of its segment, else targets[b, t-1];
    padding positions (target == pad, or segment 0) get `pad_id`.

    Args:
      targets: int [B, T] target ids (no BOS), `pad_id` on padding.
      bos_id: the BOS id (from the tokenizer, via ModelConfig).
      pad_id: the padding id.
      segmentation: optional int [B, T] packed-example ids (1..n, 0 on padding).

    Returns:
      int [B, T] decoder inputs, same dtype as `targets`.
    """
    targets = jnp.asarray(targets)
    chex.assert_rank(targets, 2)
    if segmentation is None:
        valid = targets != pad_id  # [B, T]
        start = jnp.zeros(targets.shape, bool).at[:, 0].set(True)
    else:
        segmentation = jnp.asarray(segmentation)
        chex.assert_equal_shape([targets, segmentation])
        valid = segmentation != 0
        previous = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]  # [B, T]
        start = segmentation != previous
    shifted = jnp.pad(targets, ((0, 0), (1, 0)), constant_values=pad_id)[:, :-1]  # [B, T]
    out = jnp.where(start, jnp.asarray(bos_id, targets.dtype), shifted)
    return jnp.where(valid, out, jnp.asarray(pad_id, targets.dtype))
