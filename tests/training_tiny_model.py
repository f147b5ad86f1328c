"""A tiny model with the seq2seq model call signature, for model-agnostic training tests.

Not a stand-in for the real models (those are tested end to end in test_train_cli.py): the train
and eval steps only need `apply(variables, inputs, targets, *, <segmentation/position>, train)`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class TinySeq2Seq(nn.Module):
    """Masked mean of source embeddings + shifted target embeddings -> logits [B, T, V]."""

    vocab: int = 16
    width: int = 16
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        inputs,
        targets,
        *,
        inputs_segmentation,
        targets_segmentation,
        inputs_position,
        targets_position,
        train,
    ):
        del targets_segmentation, inputs_position, targets_position
        src = nn.Embed(self.vocab, self.width, name="src_embed")(inputs)  # [B, S, D]
        mask = (inputs_segmentation > 0)[..., None].astype(jnp.float32)  # [B, S, 1]
        ctx = jnp.sum(src * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # [B, D]
        dec_in = jnp.concatenate([jnp.ones_like(targets[:, :1]), targets[:, :-1]], axis=1)
        tgt = nn.Embed(self.vocab, self.width, name="tgt_embed")(dec_in)  # [B, T, D]
        h = jnp.tanh(nn.Dense(self.width, name="hidden")(tgt + ctx[:, None]))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.vocab, name="out")(h)  # [B, T, V]


def make_batch(
    seed: int, batch: int = 16, src_len: int = 6, tgt_len: int = 5, vocab: int = 16
) -> dict[str, np.ndarray]:
    """Random padded batch dict (ids 2..vocab-1, random lengths >= 1, 0 = padding)."""
    rng = np.random.default_rng(seed)

    def side(length):
        ids = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
        lens = rng.integers(1, length + 1, size=(batch,))
        real = np.arange(length)[None] < lens[:, None]
        ids = np.where(real, ids, 0).astype(np.int32)
        pos = np.where(real, np.arange(length)[None], 0).astype(np.int32)
        return ids, real.astype(np.int32), pos

    inputs, in_seg, in_pos = side(src_len)
    targets, tg_seg, tg_pos = side(tgt_len)
    return {
        "inputs": inputs,
        "targets": targets,
        "inputs_segmentation": in_seg,
        "targets_segmentation": tg_seg,
        "inputs_position": in_pos,
        "targets_position": tg_pos,
    }
