"""A pre-LN Transformer encoder-decoder whose cross-attention is masked additive attention.

Shape glossary: B batch (N in incremental decoding), S source length, T target length,
D model width (= emb_dim), H heads, Dh = D / H, L decoding cache length, V target vocabulary.

Embeddings are scaled by sqrt(D) and summed with sinusoidal or learned positions (taken from
`*_position` when given, so packed examples restart at 0). Masks:
  encoder self-attention  segment_mask(src_seg, src_seg)             [B, S, S]
  decoder self-attention  segment_mask(tgt_seg, tgt_seg) & causal    [B, T, T]
  cross-attention         segment_mask(tgt_seg, src_seg)             [B, T, S]
(segmentation defaults to 1 on real tokens, 0 on padding), so padding and packed examples never
mix. Cross-attention is `AdditiveAttention` with H heads by default or `DotProductAttention`
(`attention_type='dot'`). The attention returned by `decode(..., return_attention=True)` and by
`decode_step` is the LAST decoder layer's cross-attention averaged over heads.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp

from seq2seq_jax.layers import masks
from seq2seq_jax.layers.transformer import DecoderLayer, EncoderLayer, sinusoidal_positions
from seq2seq_jax.models import inputs as model_inputs
from seq2seq_jax.models.base import EncoderDecoder
from seq2seq_jax.models.config import ModelConfig
from seq2seq_jax.ops import output_product

Array = chex.Array


class Transformer(EncoderDecoder):
    """Transformer encoder-decoder with additive (default) or dot-product cross-attention.

    Public methods: `__call__` (teacher forcing), `encode`, `decode` (both from
    `EncoderDecoder`), `init_decode_cache`, `decode_step`. Supports packed batches through
    `*_segmentation` / `*_position` (`supports_packing = True`).

    Attributes:
      config: the model's `ModelConfig` (name 'transformer').
    """

    supports_packing = True

    @classmethod
    def max_length(cls, config: ModelConfig) -> int:
        """`config.max_len`: the position table's and the decoding cache's length."""
        return config.max_len

    def setup(self) -> None:
        cfg = self.config.validate()
        dt, pdt = cfg.compute_dtype, cfg.parameter_dtype
        kw = dict(dtype=dt, param_dtype=pdt)
        init = nn.initializers.normal(stddev=cfg.emb_dim**-0.5)
        self.source_embed = nn.Embed(cfg.source_vocab_size, cfg.emb_dim, embedding_init=init, **kw)
        self.target_embed = (
            self.source_embed
            if cfg.share_embeddings
            else nn.Embed(cfg.target_vocab_size, cfg.emb_dim, embedding_init=init, **kw)
        )
        if cfg.position_embedding == "learned":
            pos_init = nn.initializers.normal(stddev=0.02)
            self.source_positions = nn.Embed(
                cfg.max_len, cfg.emb_dim, embedding_init=pos_init, **kw
            )
            self.target_positions = nn.Embed(
                cfg.max_len, cfg.emb_dim, embedding_init=pos_init, **kw
            )
        self.encoder_layers = [
            EncoderLayer(
                num_heads=cfg.num_heads,
                mlp_dim=cfg.mlp_dim,
                dropout_rate=cfg.dropout_rate,
                attention_dropout_rate=cfg.attention_dropout_rate,
                **kw,
            )
            for _ in range(cfg.encoder_layers)
        ]
        self.encoder_norm = nn.LayerNorm(**kw)
        self.decoder_layers = [
            DecoderLayer(
                num_heads=cfg.num_heads,
                mlp_dim=cfg.mlp_dim,
                model_dim=cfg.emb_dim,
                cross_attention=cfg.attention_type,
                attention_dim=cfg.attention_dim,
                normalize_attention=cfg.normalize_attention,
                dropout_rate=cfg.dropout_rate,
                attention_dropout_rate=cfg.attention_dropout_rate,
                **kw,
            )
            for _ in range(cfg.decoder_layers)
        ]
        self.decoder_norm = nn.LayerNorm(**kw)
        if cfg.tie_output_embeddings:
            self.output_bias = self.param(
                "output_bias", nn.initializers.zeros, (cfg.target_vocab_size,), pdt
            )
        else:
            self.output = nn.Dense(
                cfg.target_vocab_size, dot_general=output_product(cfg.output_product), **kw
            )
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _embed(self, ids: Array, positions: Array, *, source: bool, deterministic: bool):
        """Token embedding * sqrt(D) + position embedding: [B, L] -> [B, L, D]."""
        cfg = self.config
        table = self.source_embed if source else self.target_embed
        x = table(ids) * jnp.sqrt(jnp.asarray(cfg.emb_dim, cfg.compute_dtype))
        if cfg.position_embedding == "learned":
            pos_table = self.source_positions if source else self.target_positions
            x = x + pos_table(positions)
        else:
            x = x + sinusoidal_positions(positions, cfg.emb_dim).astype(x.dtype)
        return self.dropout(x, deterministic=deterministic)

    def _segments(self, ids: Array, segmentation: Array | None) -> Array:
        """Segment ids [B, L]: as given, or 1 on real tokens and 0 on padding."""
        if segmentation is not None:
            return segmentation
        return (ids != self.config.pad_id).astype(jnp.int32)

    def encode(
        self,
        inputs: Array,  # int [B, S]
        *,
        inputs_segmentation: Array | None = None,  # int [B, S]
        inputs_position: Array | None = None,  # int [B, S]
        train: bool = False,
    ) -> Array:
        """Encodes the source: returns [B, S, D] (after the final LayerNorm)."""
        model_inputs.check_ids("inputs", inputs, inputs_segmentation, inputs_position)
        deterministic = self._deterministic(train)
        segments = self._segments(inputs, inputs_segmentation)
        mask = masks.segment_mask(segments, segments)  # [B, S, S]
        positions = model_inputs.default_positions(inputs, inputs_position)
        x = self._embed(inputs, positions, source=True, deterministic=deterministic)
        for layer in self.encoder_layers:
            x = layer(x, mask, deterministic=deterministic)
        return self.encoder_norm(x)

    def _logits(self, x: Array) -> Array:
        """Final LayerNorm'd decoder states [..., D] -> float32 logits [..., V]."""
        lead = x.shape[:-1]
        # One [rows, D] matrix: with a [B, T, D] input XLA's CPU backend computes the kernel
        # gradient through a transposed copy of the [B, T, V] logit gradient.
        x = x.reshape(-1, x.shape[-1])  # [B*T, D]
        if self.config.tie_output_embeddings:
            logits = self.target_embed.attend(x) + self.output_bias
        else:
            logits = self.output(x)
        return logits.reshape(*lead, logits.shape[-1]).astype(jnp.float32)

    def _teacher_forced(
        self,
        encoded,
        inputs,
        targets,
        decoder_inputs,
        *,
        inputs_segmentation,
        targets_segmentation,
        targets_position,
        deterministic,
    ):
        """`EncoderDecoder.decode`'s decoder: all T steps in parallel under the causal mask."""
        cfg = self.config
        chex.assert_shape(encoded, (*inputs.shape, cfg.emb_dim))
        source_segments = self._segments(inputs, inputs_segmentation)
        target_segments = self._segments(targets, targets_segmentation)
        self_mask = masks.segment_mask(target_segments, target_segments) & masks.causal_mask(
            targets.shape[1]
        )  # [B, T, T]
        cross_mask = masks.segment_mask(target_segments, source_segments)  # [B, T, S]
        positions = model_inputs.default_positions(targets, targets_position)
        x = self._embed(decoder_inputs, positions, source=False, deterministic=deterministic)
        weights = None
        for layer in self.decoder_layers:
            x, weights, _ = layer(
                x,
                encoded,
                self_mask,
                cross_mask,
                layer.project_keys(encoded),
                deterministic=deterministic,
            )
        logits = self._logits(self.decoder_norm(x))  # [B, T, V]
        return logits, model_inputs.head_mean(weights, cfg.num_heads)

    def init_decode_cache(
        self,
        encoded: Array,  # [N, S, D]
        inputs: Array,  # int [N, S]
        *,
        inputs_segmentation: Array | None = None,
        max_decode_length: int | None = None,
    ) -> dict[str, Any]:
        """The decoding cache; every leaf has leading dimension N.

        Args:
          encoded: `encode(inputs)` [N, S, D] (one example per row, not packed).
          inputs: int [N, S] source ids (for the padding mask).
          inputs_segmentation: optional int [N, S] (padding mask only).
          max_decode_length: L, the number of steps the cache holds (default `config.max_len`;
            at most `config.max_len` with learned positions).

        Returns:
          {'index': int32 [N], 'encoded': [N, S, D], 'mask': bool [N, S], 'layers': per layer
          {'key', 'value': [N, L, H, Dh], 'projected_keys': [N, S, A]}}.
        """
        cfg = self.config
        model_inputs.check_ids("inputs", inputs, inputs_segmentation)
        length = max_decode_length or cfg.max_len
        if cfg.position_embedding == "learned" and length > cfg.max_len:
            raise ValueError(
                f"max_decode_length={length} exceeds model.max_len={cfg.max_len}, the size of "
                "the learned position table"
            )
        n = inputs.shape[0]
        head_dim = cfg.emb_dim // cfg.num_heads
        zeros = jnp.zeros((n, length, cfg.num_heads, head_dim), cfg.compute_dtype)
        layers = tuple(
            {"key": zeros, "value": zeros, "projected_keys": layer.project_keys(encoded)}
            for layer in self.decoder_layers
        )
        return {
            "index": jnp.zeros((n,), jnp.int32),
            "encoded": encoded,
            "mask": model_inputs.valid_mask(inputs, inputs_segmentation, cfg.pad_id),
            "layers": layers,
        }

    def decode_step(self, ids: Array, cache: dict[str, Any]) -> tuple[Array, Array, dict[str, Any]]:
        """One decoding step from the previous tokens `ids` int32 [N] (BOS at the first step).

        The step's position is `cache['index']`; it must stay below the cache length L.

        Returns:
          (logits float32 [N, V], last-layer head-averaged cross-attention float32 [N, S],
          new cache).
        """
        chex.assert_rank(ids, 1)
        chex.assert_shape(cache["mask"], (ids.shape[0], None))
        index = cache["index"]  # [N]
        x = self._embed(ids[:, None], index[:, None], source=False, deterministic=True)
        new_layers = []
        weights = None
        for layer, layer_cache in zip(self.decoder_layers, cache["layers"], strict=True):
            self_cache = {"key": layer_cache["key"], "value": layer_cache["value"]}
            x, weights, self_cache = layer(
                x,
                cache["encoded"],
                None,
                cache["mask"],
                layer_cache["projected_keys"],
                deterministic=True,
                cache=self_cache,
                index=index,
            )
            new_layers.append(dict(self_cache, projected_keys=layer_cache["projected_keys"]))
        logits = self._logits(self.decoder_norm(x))[:, 0]  # [N, V]
        attention = model_inputs.head_mean(weights, self.config.num_heads)[:, 0]  # [N, S]
        new_cache = dict(cache, index=index + 1, layers=tuple(new_layers))
        return logits, attention, new_cache
