"""Pre-LayerNorm Transformer blocks whose cross-attention is masked additive (or dot) attention.

Shape glossary: B batch (N in incremental decoding), T query length, S key / source length,
L cache length, D model width, H heads, Dh = D / H head width, F feed-forward width.

* `SelfAttention`: multi-head scaled dot-product self-attention with an explicit key/value
  cache for incremental decoding (cache leaves have leading dim N; the write index is an
  int32 [N] array, so the cache can be tiled and gathered along axis 0 like any beam state).
* `EncoderLayer`: x + SelfAttn(LN x), then x + MLP(LN x).
* `DecoderLayer`: x + causal SelfAttn(LN x), x + CrossAttn(LN x, encoded), x + MLP(LN x).
  Cross-attention is `AdditiveAttention` (multi-head; its key projection computed once per
  source with `project_keys`) or `DotProductAttention`, followed by an output projection
  (values are the encoder outputs, so this projection plays the role of W_V W_O).

Masks are boolean, True = may attend: [B, T, S] or [B, H|1, T, S]; padding, causal and packed
segment masks are built by the model with `seq2seq_jax.layers.masks`.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.layers.attention import get_attention_class, masked_softmax
from seq2seq_jax.ops import accumulate_in_float32

Array = chex.Array
Cache = dict[str, Array]


def sinusoidal_positions(positions: Array, features: int, max_timescale: float = 1e4) -> Array:
    """Sinusoidal position encodings (Vaswani et al. 2017): sin on the first half, cos after.

    Args:
      positions: int [B, L] positions.
      features: D (even).

    Returns:
      float32 [B, L, D].
    """
    if features % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {features}")
    half = features // 2
    inv = np.exp(-math.log(max_timescale) * np.arange(half) / max(half - 1, 1))  # [D/2]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv, jnp.float32)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _mask_4d(mask: Array) -> Array:
    """[B, T, S] -> [B, 1, T, S]; [B, H|1, T, S] unchanged."""
    chex.assert_type(mask, bool)
    if mask.ndim == 3:
        return mask[:, None]
    chex.assert_rank(mask, 4)
    return mask


class SelfAttention(nn.Module):
    """Multi-head dot-product self-attention with an optional incremental key/value cache.

    Attributes:
      num_heads: H.
      dropout_rate: dropout on the attention weights.
      dtype: compute dtype (scores and softmax are float32).
      param_dtype: parameter dtype.
    """

    num_heads: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Array,  # [B, T, D]
        mask: Array | None,  # bool [B, T, T] / [B, H|1, T, T]; ignored with a cache
        *,
        deterministic: bool = True,
        cache: Cache | None = None,  # {'key', 'value'}: [N, L, H, Dh]
        index: Array | None = None,  # int32 [N]: the slot of this step's token
    ) -> tuple[Array, Cache | None]:
        """Attends; with `cache`, `x` is one step [N, 1, D] attending to slots 0..index.

        Returns:
          ([B, T, D] output, the updated cache or None).
        """
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"width {features} not divisible by num_heads={self.num_heads}")
        head_dim = features // self.num_heads
        dense = dict(
            dtype=self.dtype, param_dtype=self.param_dtype, dot_general=accumulate_in_float32
        )
        proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name, **dense)(x)
        q, k, v = proj("query"), proj("key"), proj("value")  # [B, T, H, Dh]
        if cache is not None:
            chex.assert_shape(x, (cache["key"].shape[0], 1, features))
            length = cache["key"].shape[1]
            slot = (jnp.arange(length)[None, :] == index[:, None])[:, :, None, None]  # [N,L,1,1]
            k = jnp.where(slot, k.astype(cache["key"].dtype), cache["key"])  # [N, L, H, Dh]
            v = jnp.where(slot, v.astype(cache["value"].dtype), cache["value"])
            cache = {"key": k, "value": v}
            mask = (jnp.arange(length)[None, :] <= index[:, None])[:, None, None, :]  # [N,1,1,L]
        scores = jnp.einsum(
            "bthd,bshd->bhts", q, k.astype(self.dtype), preferred_element_type=jnp.float32
        ) / math.sqrt(head_dim)
        weights = masked_softmax(scores, None if mask is None else _mask_4d(mask))
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
        out = jnp.einsum("bhts,bshd->bthd", weights.astype(self.dtype), v.astype(self.dtype))
        out = nn.DenseGeneral(features, axis=(-2, -1), name="out", **dense)(out)  # [B, T, D]
        return out, cache


class MlpBlock(nn.Module):
    """Position-wise feed-forward: Dense(F) -> ReLU -> dropout -> Dense(D)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        """[B, T, D] -> [B, T, D]."""
        dense = dict(
            dtype=self.dtype, param_dtype=self.param_dtype, dot_general=accumulate_in_float32
        )
        y = nn.relu(nn.Dense(self.mlp_dim, **dense)(x))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return nn.Dense(x.shape[-1], **dense)(y)


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer: x + SelfAttn(LN x); x + MLP(LN x)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, *, deterministic: bool = True) -> Array:
        """x [B, S, D], mask bool [B, S, S] -> [B, S, D]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout_rate)
        y, _ = SelfAttention(
            num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate, **kw
        )(nn.LayerNorm(**kw)(x), mask, deterministic=deterministic)
        x = x + drop(y, deterministic=deterministic)
        y = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, **kw)(
            nn.LayerNorm(**kw)(x), deterministic=deterministic
        )
        return x + drop(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
    """Pre-LN decoder layer with causal self-attention and additive (or dot) cross-attention.

    Attributes:
      num_heads: H, for self- and cross-attention.
      mlp_dim: F.
      cross_attention: 'additive' or 'dot'.
      attention_dim: cross-attention width A (0: the model width D).
      normalize_attention: weight-normalised additive scores.
      dropout_rate: residual / MLP dropout.
      attention_dropout_rate: self-attention weight dropout.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    num_heads: int
    mlp_dim: int
    model_dim: int
    cross_attention: str = "additive"
    attention_dim: int = 0
    normalize_attention: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self) -> None:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.self_norm = nn.LayerNorm(**kw)
        self.self_attention = SelfAttention(
            num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate, **kw
        )
        self.cross_norm = nn.LayerNorm(**kw)
        cross_kw = dict(
            attention_dim=self.attention_dim or self.model_dim, num_heads=self.num_heads, **kw
        )
        if self.cross_attention == "additive":
            cross_kw["normalize"] = self.normalize_attention
        self.cross = get_attention_class(self.cross_attention)(**cross_kw)
        self.cross_out = nn.Dense(self.model_dim, dot_general=accumulate_in_float32, **kw)
        self.mlp_norm = nn.LayerNorm(**kw)
        self.mlp = MlpBlock(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate, **kw)
        self.dropout = nn.Dropout(self.dropout_rate)

    def project_keys(self, encoded: Array) -> Array:
        """The cross-attention key projection, once per source: [B, S, D] -> [B, S, A]."""
        return self.cross.project_keys(encoded)

    def __call__(
        self,
        x: Array,  # [B, T, D]
        encoded: Array,  # [B, S, D]
        self_mask: Array | None,  # bool [B, T, T] (unused with a cache)
        cross_mask: Array,  # bool [B, S] or [B, T, S]
        projected_keys: Array,  # [B, S, A] from project_keys(encoded)
        *,
        deterministic: bool = True,
        cache: Cache | None = None,
        index: Array | None = None,
    ) -> tuple[Array, Array, Cache | None]:
        """Runs the layer (all positions, or one cached step with `cache` and `index`).

        Returns:
          (output [B, T, D], cross-attention weights float32 [B, H, T, S] (or [B, T, S] for
          one head), updated self-attention cache or None).
        """
        y, cache = self.self_attention(
            self.self_norm(x), self_mask, deterministic=deterministic, cache=cache, index=index
        )
        x = x + self.dropout(y, deterministic=deterministic)
        context, weights = self.cross(
            self.cross_norm(x), encoded, cross_mask, projected_keys=projected_keys
        )
        x = x + self.dropout(self.cross_out(context), deterministic=deterministic)
        y = self.mlp(self.mlp_norm(x), deterministic=deterministic)
        return x + self.dropout(y, deterministic=deterministic), weights, cache
