"""Building blocks: masks and attention (and the RNN / Transformer layers)."""

from seq2seq_jax.layers import masks
from seq2seq_jax.layers.attention import (
    AdditiveAttention,
    DotProductAttention,
    get_attention_class,
    masked_softmax,
)

__all__ = [
    "AdditiveAttention",
    "DotProductAttention",
    "get_attention_class",
    "masked_softmax",
    "masks",
]
