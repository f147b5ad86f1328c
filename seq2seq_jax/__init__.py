"""seq2seq_jax: sequence-to-sequence models in JAX/Flax with masked additive attention."""

from seq2seq_jax.layers import masks
from seq2seq_jax.layers.attention import AdditiveAttention, DotProductAttention, masked_softmax

__version__ = "0.1.0"

__all__ = ["AdditiveAttention", "DotProductAttention", "masked_softmax", "masks", "__version__"]
