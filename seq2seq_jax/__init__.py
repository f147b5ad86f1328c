"""seq2seq_jax: sequence-to-sequence models in JAX/Flax with masked additive attention.

The most used names are re-exported here; the submodules hold the rest:
`seq2seq_jax.layers` (masks, attention, RNN and Transformer blocks), `seq2seq_jax.models`,
`seq2seq_jax.decoding`, `seq2seq_jax.data` (TFDS/Grain, imported on demand because TFDS is
heavy), `seq2seq_jax.training`, `seq2seq_jax.evaluation`.

The re-exports are resolved on first use (PEP 562), so importing the package itself is cheap:
`python -m seq2seq_jax.train` can re-execute itself (`seq2seq_jax.hugepages`) before JAX loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seq2seq_jax._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AdditiveAttention": "seq2seq_jax.layers.attention",
    "DecodeResult": "seq2seq_jax.decoding",
    "DotProductAttention": "seq2seq_jax.layers.attention",
    "ModelConfig": "seq2seq_jax.models",
    "RNNSearch": "seq2seq_jax.models",
    "Transformer": "seq2seq_jax.models",
    "beam_search": "seq2seq_jax.decoding",
    "build_model": "seq2seq_jax.models",
    "default_model_config": "seq2seq_jax.models",
    "greedy_search": "seq2seq_jax.decoding",
    "make_tokens_to_logits": "seq2seq_jax.models",
    "masked_softmax": "seq2seq_jax.layers.attention",
    "masks": "seq2seq_jax.layers",
    "sample": "seq2seq_jax.decoding",
    "shift_right": "seq2seq_jax.models",
}

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

if TYPE_CHECKING:
    from seq2seq_jax.decoding import DecodeResult, beam_search, greedy_search, sample
    from seq2seq_jax.layers import masks
    from seq2seq_jax.layers.attention import (
        AdditiveAttention,
        DotProductAttention,
        masked_softmax,
    )
    from seq2seq_jax.models import (
        ModelConfig,
        RNNSearch,
        Transformer,
        build_model,
        default_model_config,
        make_tokens_to_logits,
        shift_right,
    )


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
