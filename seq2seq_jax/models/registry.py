"""Model registry: model names -> Linen module classes; raises on an unknown name.

What a family can do is declared on its class (`EncoderDecoder.supports_packing`, ...);
`check_batching` reads it for the config check, so nothing tests model names.

Shape glossary: B batch, S source length, T target length.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from seq2seq_jax.models.base import EncoderDecoder
from seq2seq_jax.models.config import ModelConfig, resolve_preset
from seq2seq_jax.models.rnnsearch import RNNSearch
from seq2seq_jax.models.transformer import Transformer

_MODELS: dict[str, type[EncoderDecoder]] = {"rnnsearch": RNNSearch, "transformer": Transformer}


def model_names() -> tuple[str, ...]:
    """The registered model names."""
    return tuple(_MODELS)


def get_model_class(name: str) -> type[EncoderDecoder]:
    """The module class registered as `name`.

    Raises:
      ValueError: unknown name, listing the known ones.
    """
    if name not in _MODELS:
        from seq2seq_jax.models.config import preset_names

        raise ValueError(
            f"Unknown model name {name!r}; known models: {list(_MODELS)}, presets "
            f"(in config.model.name): {list(preset_names())}"
        )
    return _MODELS[name]


def check_batching(model_name: str, batching: str) -> None:
    """Rejects a `config.data.batching` the model family cannot train on.

    Args:
      model_name: `config.model.name`, a family or a preset (an unknown name is left to
        `ModelConfig.validate`, which lists the known ones).
      batching: `config.data.batching` ('pad', 'bucket' or 'pack').

    Raises:
      ValueError: one line naming both keys, e.g. 'pack' for RNNsearch, whose recurrence would
        carry its state from one packed example into the next.
    """
    family = resolve_preset({"name": model_name}).get("name")
    if family not in _MODELS:
        return
    cls = _MODELS[family]
    if batching == "pack" and not cls.supports_packing:
        raise ValueError(
            f"config.data.batching='pack' is not supported by config.model.name={model_name!r} "
            f"({cls.__name__}.supports_packing is False: a recurrent encoder/decoder would carry "
            "its state across the examples of a packed row); use 'bucket' or 'pad'"
        )


def build_model(model_config: ModelConfig) -> nn.Module:
    """An (unbound) model module for `model_config` (validated first)."""
    return get_model_class(model_config.name)(model_config.validate())


def with_dtype(model_config: ModelConfig, params: Any, dtype: str) -> tuple[ModelConfig, Any]:
    """The config and parameters to run a trained model in `dtype` (e.g. bfloat16 inference).

    Floating-point parameters are cast once (integer leaves are kept), and the config's compute
    and parameter dtypes both become `dtype`; matmuls still accumulate in float32 and logits
    stay float32 (`seq2seq_jax.ops`).

    Raises:
      ValueError: naming `dtype` if it is not a floating-point dtype.
    """
    try:
        target = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e
    if not jnp.issubdtype(target, jnp.floating):
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype!r}")
    cast = lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x
    new_config = model_config.replace(dtype=target.name, param_dtype=target.name).validate()
    return new_config, jax.tree.map(cast, params)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (works on `jax.eval_shape` results too)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


def init_variables(
    model: nn.Module,
    rng: jax.Array,
    *,
    batch_size: int = 1,
    source_length: int = 8,
    target_length: int = 8,
) -> dict[str, Any]:
    """Initialises `model`'s variables from dummy int32 batches [B, S] and [B, T].

    Parameter shapes do not depend on the lengths (learned position tables are sized by
    `config.max_len`).
    """
    inputs = jnp.ones((batch_size, source_length), jnp.int32)
    targets = jnp.ones((batch_size, target_length), jnp.int32)
    return model.init({"params": rng}, inputs, targets, train=False)


def make_tokens_to_logits(model: nn.Module, variables: dict[str, Any]):
    """The decoding library's step function bound to `variables`.

    Returns:
      fn(ids int32 [N], cache) -> (logits float32 [N, V], attention float32 [N, S], cache),
      where `cache` comes from
      `model.apply(variables, encoded, inputs, method=model.init_decode_cache)`.
    """

    def tokens_to_logits(ids: jax.Array, cache: Any):
        return model.apply(variables, ids, cache, method=model.decode_step)

    return tokens_to_logits


def init_decode_cache(
    model: nn.Module,
    variables: dict[str, Any],
    inputs: jax.Array,
    *,
    inputs_segmentation: jax.Array | None = None,
    max_decode_length: int | None = None,
) -> Any:
    """Encodes `inputs` int [N, S] and returns the decoding cache (leaves with leading dim N).

    `max_decode_length` sizes the Transformer's key/value cache (default `config.max_len`); the
    RNN ignores it.
    """
    encoded = model.apply(
        variables, inputs, inputs_segmentation=inputs_segmentation, method=model.encode
    )
    return model.apply(
        variables,
        encoded,
        inputs,
        inputs_segmentation=inputs_segmentation,
        max_decode_length=max_decode_length,
        method=model.init_decode_cache,
    )
