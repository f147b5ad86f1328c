"""The frozen, typed model configuration and its named presets.

`ModelConfig` is built once from the experiment's `config.model` (an `ml_collections.ConfigDict`)
plus the tokenizer's vocabulary sizes and special ids; train / eval / decode variants are made
with `.replace(...)`. Every field is static (hashable), so a `ModelConfig` can be a `jit` static
argument and a Linen module attribute. Modules never read a `ConfigDict`.

Presets (`default_model_config(name)`): `rnnsearch` (small defaults), `rnnsearch_reference`
(the PyTorch peer's sizes, shared/DESIGN.md section 4), `rnnsearch50` (Bahdanau et al. 2015),
`transformer` (small pre-LN Transformer with additive cross-attention) and
`transformer_multi30k` (the sizes of shared/bench/torch_transformer.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax.numpy as jnp
import ml_collections

from seq2seq_jax.ops import OUTPUT_PRODUCTS

MODEL_NAMES = ("rnnsearch", "transformer")
CELL_TYPES = ("gru", "lstm")
ATTENTION_TYPES = ("additive", "dot")
BRIDGES = ("mean", "final", "backward", "zero")
POSITION_EMBEDDINGS = ("sinusoidal", "learned")
INIT_SCHEMES = ("flax", "torch")  # seq2seq_jax.models.init

# The PyTorch peer's vocabulary size and special ids (shared/bench/torch_rnnsearch.py).
REFERENCE_VOCAB_SIZE = 8000
REFERENCE_BOS_ID = 1
REFERENCE_EOS_ID = 2


def _static(default: Any) -> Any:
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class ModelConfig:
    """Everything a model needs; all fields static and hashable.

    Attributes:
      name: model family, one of `MODEL_NAMES` (see `seq2seq_jax.models.registry`).
      source_vocab_size: V_src, from the tokenizer.
      target_vocab_size: V, from the tokenizer.
      pad_id: padding id (always 0 in this project).
      bos_id: begin-of-sequence id (decoder's first input), from the tokenizer.
      eos_id: end-of-sequence id, from the tokenizer.
      emb_dim: token embedding width E (Transformer: also the model width D).
      encoder_hidden_size: RNN encoder units per direction.
      decoder_hidden_size: RNN decoder units.
      cell_type: 'gru' or 'lstm' (RNNsearch).
      encoder_layers: stacked encoder layers (both families).
      decoder_layers: stacked decoder layers (both families).
      bidirectional: RNN encoder reads both directions (annotations of 2 * encoder_hidden_size).
      bridge: initial RNN decoder state: 'mean' = tanh(W mean of annotations), 'final' =
        tanh(W [last forward state; first backward state]), 'backward' = tanh(W first backward
        state) (Bahdanau et al. 2015; needs `bidirectional`), 'zero'.
      input_feeding: Luong-style: attention after the cell with s_t as query, and the previous
        context fed into the next step's input; otherwise Bahdanau (query s_{t-1}).
      maxout_size: deep output with maxout of this many units (0: a plain linear output).
      attention_type: cross-attention, 'additive' (Bahdanau, default) or 'dot'.
      attention_dim: additive attention hidden size A (0: the query width).
      num_heads: Transformer self-attention heads and cross-attention heads (RNNsearch: 1).
      normalize_attention: weight-normalised additive scores (Bahdanau's `normalize`).
      mlp_dim: Transformer feed-forward width.
      position_embedding: Transformer positions, 'sinusoidal' or 'learned'.
      max_len: the longest position the Transformer embeds / caches.
      dropout_rate: dropout on embeddings, between layers and on residual branches.
      attention_dropout_rate: dropout on Transformer self-attention weights.
      share_embeddings: one embedding table for source and target (needs equal vocabularies).
      tie_output_embeddings: output projection is the target embedding transposed.
      dtype: compute dtype name ('float32', 'bfloat16', ...); logits stay float32.
      output_product: the output layer's product, 'float32' (default) or 'bfloat16_forward'
        (the forward logits from bfloat16-rounded operands with float32 accumulation, the
        gradient in float32: ~1.9x faster on CPUs with AVX512-BF16 for that product; see
        `seq2seq_jax.ops.bfloat16_forward_product`). Not with tie_output_embeddings.
      param_dtype: parameter dtype name.
      init_scheme: parameter initialisation, 'flax' (the modules' own initialisers) or
        'torch' (PyTorch's layer defaults, for parity with PyTorch peers; see
        `seq2seq_jax.models.init`).
      deterministic: if True, dropout is off even when a method is called with `train=True`
        (the eval / decode variant: `config.replace(deterministic=True)`).
    """

    name: str = _static("rnnsearch")
    source_vocab_size: int = _static(32)
    target_vocab_size: int = _static(32)
    pad_id: int = _static(0)
    bos_id: int = _static(1)
    eos_id: int = _static(2)
    emb_dim: int = _static(64)
    encoder_hidden_size: int = _static(64)
    decoder_hidden_size: int = _static(128)
    cell_type: str = _static("gru")
    encoder_layers: int = _static(1)
    decoder_layers: int = _static(1)
    bidirectional: bool = _static(True)
    bridge: str = _static("mean")
    input_feeding: bool = _static(False)
    maxout_size: int = _static(0)
    attention_type: str = _static("additive")
    attention_dim: int = _static(0)
    num_heads: int = _static(1)
    normalize_attention: bool = _static(False)
    mlp_dim: int = _static(256)
    position_embedding: str = _static("sinusoidal")
    max_len: int = _static(256)
    dropout_rate: float = _static(0.1)
    attention_dropout_rate: float = _static(0.0)
    share_embeddings: bool = _static(False)
    tie_output_embeddings: bool = _static(False)
    dtype: str = _static("float32")
    output_product: str = _static("float32")
    param_dtype: str = _static("float32")
    init_scheme: str = _static("flax")
    deterministic: bool = _static(False)

    @property
    def compute_dtype(self) -> jnp.dtype:
        """`dtype` as a JAX dtype."""
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self) -> jnp.dtype:
        """`param_dtype` as a JAX dtype."""
        return jnp.dtype(self.param_dtype)

    @property
    def annotation_size(self) -> int:
        """Width of the RNN encoder's annotations (both directions concatenated)."""
        return self.encoder_hidden_size * (2 if self.bidirectional else 1)

    @classmethod
    def from_config(
        cls,
        model_cfg: ml_collections.ConfigDict | dict[str, Any],
        *,
        source_vocab_size: int,
        target_vocab_size: int,
        bos_id: int,
        eos_id: int,
        pad_id: int = 0,
    ) -> ModelConfig:
        """Builds a validated `ModelConfig` from `config.model` and the tokenizer's facts.

        Args:
          model_cfg: the experiment's model section (keys = `config_keys()`; see
            `default_model_config`).
          source_vocab_size: source vocabulary size (from the tokenizer).
          target_vocab_size: target vocabulary size (from the tokenizer).
          bos_id: BOS id (from the tokenizer).
          eos_id: EOS id (from the tokenizer).
          pad_id: padding id (0).

        `model.name` may be a family or a preset (`preset_names()`): a preset fills in its own
        values for the keys still at their family defaults (`resolve_preset`), so
        `--config.model.name=rnnsearch_reference --config.model.dropout_rate=0.3` gives the
        reference sizes with dropout 0.3.

        Raises:
          ValueError: on a key that is not a model setting (naming it), or an invalid value.
        """
        items = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
        known = set(config_keys())
        for key in items:
            if key not in known:
                raise ValueError(
                    f"Unknown model config key 'model.{key}'; known keys: {sorted(known)}"
                )
        items = resolve_preset(items)
        config = cls(
            **items,
            source_vocab_size=int(source_vocab_size),
            target_vocab_size=int(target_vocab_size),
            bos_id=int(bos_id),
            eos_id=int(eos_id),
            pad_id=int(pad_id),
        )
        config.validate()
        return config

    def validate(self) -> ModelConfig:
        """Checks value ranges and combinations; returns `self`.

        Raises:
          ValueError: naming the offending field.
        """
        if self.name not in MODEL_NAMES:
            raise ValueError(
                f"model.name={self.name!r} is not a model family "
                f"{list(MODEL_NAMES)} or a preset {list(_PRESETS)}"
            )
        _check_choice("cell_type", self.cell_type, CELL_TYPES)
        _check_choice("attention_type", self.attention_type, ATTENTION_TYPES)
        _check_choice("bridge", self.bridge, BRIDGES)
        _check_choice("position_embedding", self.position_embedding, POSITION_EMBEDDINGS)
        _check_choice("init_scheme", self.init_scheme, INIT_SCHEMES)
        _check_choice("output_product", self.output_product, tuple(OUTPUT_PRODUCTS))
        if self.tie_output_embeddings and self.output_product != "float32":
            raise ValueError(
                "model.output_product applies to an untied output layer; "
                "model.tie_output_embeddings=True needs output_product='float32'"
            )
        for key in (
            "source_vocab_size",
            "target_vocab_size",
            "emb_dim",
            "encoder_layers",
            "decoder_layers",
            "num_heads",
            "max_len",
        ):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"model.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.share_embeddings and self.source_vocab_size != self.target_vocab_size:
            raise ValueError(
                "model.share_embeddings needs equal vocabularies, got "
                f"{self.source_vocab_size} (source) and {self.target_vocab_size} (target)"
            )
        if self.name == "transformer":
            self._validate_transformer()
        else:
            self._validate_rnnsearch()
        for key in ("dtype", "param_dtype"):
            try:
                jnp.dtype(getattr(self, key))
            except TypeError as e:
                raise ValueError(f"model.{key}: unknown dtype {getattr(self, key)!r}") from e
        return self

    def _validate_transformer(self) -> None:
        if self.emb_dim % self.num_heads:
            raise ValueError(
                f"model.emb_dim ({self.emb_dim}) must be divisible by model.num_heads "
                f"({self.num_heads})"
            )
        if (self.attention_dim or self.emb_dim) % self.num_heads:
            raise ValueError(
                f"model.attention_dim ({self.attention_dim or self.emb_dim}) must be divisible "
                f"by model.num_heads ({self.num_heads})"
            )
        if self.position_embedding == "sinusoidal" and self.emb_dim % 2:
            raise ValueError(f"sinusoidal positions need an even model.emb_dim, got {self.emb_dim}")

    def _validate_rnnsearch(self) -> None:
        if self.encoder_hidden_size < 1 or self.decoder_hidden_size < 1:
            raise ValueError("model.encoder_hidden_size and decoder_hidden_size must be >= 1")
        if self.maxout_size < 0:
            raise ValueError(f"model.maxout_size must be >= 0, got {self.maxout_size}")
        if self.tie_output_embeddings and self.maxout_size not in (0, self.emb_dim):
            raise ValueError(
                "model.tie_output_embeddings needs maxout_size 0 or equal to emb_dim "
                f"({self.emb_dim}), got {self.maxout_size}"
            )
        if self.bridge == "backward" and not self.bidirectional:
            raise ValueError("model.bridge='backward' needs model.bidirectional=True")
        attention_dim = self.attention_dim or self.decoder_hidden_size
        if attention_dim % self.num_heads or self.annotation_size % self.num_heads:
            raise ValueError(
                f"model.attention_dim ({attention_dim}) and the annotation width "
                f"({self.annotation_size}) must be divisible by model.num_heads ({self.num_heads})"
            )


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model.{key}={value!r} is not one of {list(choices)}")


_TOKENIZER_FIELDS = ("source_vocab_size", "target_vocab_size", "pad_id", "bos_id", "eos_id")


def config_keys() -> tuple[str, ...]:
    """The keys of `config.model` (every `ModelConfig` field not taken from the tokenizer)."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name not in _TOKENIZER_FIELDS)


_PRESETS: dict[str, dict[str, Any]] = {
    "rnnsearch": {"name": "rnnsearch"},
    # shared/DESIGN.md section 4 / shared/bench/torch_rnnsearch.py (vocab 8000 each side).
    "rnnsearch_reference": {
        "name": "rnnsearch",
        "emb_dim": 256,
        "encoder_hidden_size": 256,
        "decoder_hidden_size": 512,
        "attention_dim": 512,
        "cell_type": "gru",
        "bidirectional": True,
        "bridge": "mean",
        "maxout_size": 0,
        "dropout_rate": 0.0,
    },
    # Bahdanau et al. (2015), RNNsearch-50: emb 620, 1000 units, maxout 500, vocab 30000.
    "rnnsearch50": {
        "name": "rnnsearch",
        "emb_dim": 620,
        "encoder_hidden_size": 1000,
        "decoder_hidden_size": 1000,
        "attention_dim": 1000,
        "cell_type": "gru",
        "bidirectional": True,
        "bridge": "backward",
        "maxout_size": 500,
        "dropout_rate": 0.0,
    },
    "transformer": {
        "name": "transformer",
        "emb_dim": 128,
        "mlp_dim": 512,
        "num_heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "attention_type": "additive",
    },
    # shared/bench/torch_transformer.py sizes (its cross-attention is dot-product).
    "transformer_multi30k": {
        "name": "transformer",
        "emb_dim": 256,
        "mlp_dim": 1024,
        "num_heads": 4,
        "encoder_layers": 3,
        "decoder_layers": 3,
        "attention_type": "additive",
        "position_embedding": "learned",
        "max_len": 256,
    },
}


def preset_names() -> tuple[str, ...]:
    """Names accepted by `default_model_config`."""
    return tuple(_PRESETS)


def resolve_preset(items: dict[str, Any]) -> dict[str, Any]:
    """`items` (a model section as a dict) with a preset `name` replaced by its family.

    The preset's values replace the values still equal to the family's defaults; values that
    differ from them were set on purpose and are kept. A family name is returned unchanged.
    """
    name = items.get("name")
    if name in MODEL_NAMES or name not in _PRESETS:
        return items
    preset = _PRESETS[name]
    family = default_model_config(preset["name"])
    out = dict(items)
    for key, value in preset.items():
        if key == "name" or out.get(key, family[key]) == family[key]:
            out[key] = value
    return out


def default_model_config(name: str = "rnnsearch") -> ml_collections.ConfigDict:
    """The `config.model` section with every key and its default, for a family or preset.

    Args:
      name: a model family (`rnnsearch`, `transformer`) or a preset (`preset_names()`).

    Returns:
      An unlocked `ConfigDict` with exactly the keys of `config_keys()`.

    Raises:
      ValueError: unknown name, listing the known ones.
    """
    if name not in _PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; known: {list(_PRESETS)}")
    defaults = ModelConfig()
    values = {key: getattr(defaults, key) for key in config_keys()}
    values.update(_PRESETS[name])
    return ml_collections.ConfigDict(values)


def rnnsearch_reference_config(**overrides: Any) -> ModelConfig:
    """The DESIGN.md section 4 reference RNNsearch as a `ModelConfig` (vocab 8000, bos 1, eos 2).

    The same model as shared/bench/torch_rnnsearch.py, for benchmarks; `overrides` replace
    fields (e.g. `dtype='bfloat16'`).
    """
    cfg = default_model_config("rnnsearch_reference")
    config = ModelConfig.from_config(
        cfg,
        source_vocab_size=REFERENCE_VOCAB_SIZE,
        target_vocab_size=REFERENCE_VOCAB_SIZE,
        bos_id=REFERENCE_BOS_ID,
        eos_id=REFERENCE_EOS_ID,
    )
    return config.replace(**overrides).validate() if overrides else config
