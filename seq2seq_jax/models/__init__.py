"""Encoder-decoder models: RNNsearch and a Transformer with additive cross-attention.

Build one from the experiment config:

    model_config = ModelConfig.from_config(config.model, source_vocab_size=..., ...)
    model = build_model(model_config)
"""

from seq2seq_jax.models.base import EncoderDecoder
from seq2seq_jax.models.config import (
    ModelConfig,
    config_keys,
    default_model_config,
    preset_names,
    rnnsearch_reference_config,
)
from seq2seq_jax.models.registry import (
    build_model,
    check_batching,
    count_params,
    get_model_class,
    init_decode_cache,
    init_variables,
    make_tokens_to_logits,
    model_names,
    with_dtype,
)
from seq2seq_jax.models.rnnsearch import RNNSearch
from seq2seq_jax.models.shift import shift_right
from seq2seq_jax.models.transformer import Transformer

__all__ = [
    "EncoderDecoder",
    "ModelConfig",
    "RNNSearch",
    "Transformer",
    "build_model",
    "check_batching",
    "config_keys",
    "count_params",
    "default_model_config",
    "get_model_class",
    "init_decode_cache",
    "init_variables",
    "make_tokens_to_logits",
    "model_names",
    "preset_names",
    "rnnsearch_reference_config",
    "shift_right",
    "with_dtype",
]
