"""seq2seq_jax: sequence-to-sequence models in JAX/Flax with masked additive attention.

The most used names are re-exported here; the submodules hold the rest:
`seq2seq_jax.layers` (masks, attention, RNN and Transformer blocks), `seq2seq_jax.models`,
`seq2seq_jax.decoding`, `seq2seq_jax.data` (TFDS/Grain, imported on demand because TFDS is
heavy), `seq2seq_jax.training`, `seq2seq_jax.evaluation`.
"""

from seq2seq_jax.decoding import DecodeResult, beam_search, greedy_search, sample
from seq2seq_jax.layers import masks
from seq2seq_jax.layers.attention import AdditiveAttention, DotProductAttention, masked_softmax
from seq2seq_jax.models import (
    ModelConfig,
    RNNSearch,
    Transformer,
    build_model,
    default_model_config,
    make_tokens_to_logits,
    shift_right,
)

__version__ = "0.1.0"

__all__ = [
    "AdditiveAttention",
    "DecodeResult",
    "DotProductAttention",
    "ModelConfig",
    "RNNSearch",
    "Transformer",
    "__version__",
    "beam_search",
    "build_model",
    "default_model_config",
    "greedy_search",
    "make_tokens_to_logits",
    "masked_softmax",
    "masks",
    "sample",
    "shift_right",
]
