"""Masked additive (Bahdanau) attention and scaled dot-product attention.

Shape glossary: B batch, T query steps, S source (key) length, H heads, A attention width
(all heads together), Dq query width, Dk key width, Dv value width.

    score_h(s, h_j) = v_h . tanh(W_h h_j + U_h s + b_h)        (additive, per head h)
    score_h(s, h_j) = (Q_h s) . (K_h h_j) / sqrt(A / H)         (dot product, per head h)
    weights = masked_softmax(scores) over j;  context = sum_j weights_j * value_j

Both modules share one call contract:

    context, weights = attn(query, keys, mask=None, values=None)
    query [B, Dq] (one decoder step) or [B, T, Dq] (all steps at once); keys [B, S, Dk];
    mask bool [B, S], [B, T, S] or [B, H|1, T, S] (True = may attend);
    context [B, Dv] or [B, T, Dv]; weights (float32) [B, S] / [B, T, S] for one head,
    [B, H, S] / [B, H, T, S] for several. With several heads the values are split into H
    chunks of Dv / H and the per-head contexts concatenated back to Dv.

Masking never uses -inf: masked positions get exactly zero weight and exactly zero gradient,
and a fully masked row gives zero weights and a zero context (finite gradients).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from seq2seq_jax.layers import pallas_attention
from seq2seq_jax.ops import accumulate_in_float32

Array = chex.Array
Dtype = jnp.dtype | type


def masked_softmax(scores: Array, mask: Array | None, axis: int = -1) -> Array:
    """Softmax in float32 that gives masked entries exactly 0 weight and 0 gradient.

    Args:
      scores: [..., S] scores (any float dtype; computed in float32).
      mask: bool broadcastable to `scores`, True where allowed; None for no mask.
      axis: the axis to normalise over.

    Returns:
      float32 weights of the shape of `scores`; a fully masked row is all zeros.
    """
    scores = scores.astype(jnp.float32)
    if mask is None:
        return jax.nn.softmax(scores, axis=axis)
    mask = jnp.broadcast_to(mask, scores.shape)
    # The shift m is the max over allowed entries; softmax does not depend on it, so it is
    # held constant for the gradient. Masked scores are replaced by m (never -inf), so
    # exp(.) <= 1 everywhere and `where` routes a zero gradient to them.
    m = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=axis, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(mask, jnp.exp(jnp.where(mask, scores, m) - m), 0.0)
    denom = jnp.sum(e, axis=axis, keepdims=True)
    return e / jnp.where(denom > 0, denom, 1.0)


def _assert_shapes(
    query: Array, keys: Array, values: Array, mask: Array | None, num_heads: int, module: str
) -> None:
    """chex-style shape checks whose messages name every shape involved."""
    where = (
        f"{module}: query {tuple(query.shape)}, keys {tuple(keys.shape)}, "
        f"values {tuple(values.shape)}, mask "
        f"{None if mask is None else tuple(mask.shape)}"
    )
    if query.ndim not in (2, 3):
        raise AssertionError(f"{where}: query must be [B, Dq] or [B, T, Dq]")
    if keys.ndim != 3 or values.ndim != 3:
        raise AssertionError(f"{where}: keys and values must be [B, S, D]")
    b, s = keys.shape[0], keys.shape[1]
    if query.shape[0] != b or values.shape[:2] != (b, s):
        raise AssertionError(f"{where}: batch or source length differ")
    if values.shape[-1] % num_heads:
        raise AssertionError(f"{where}: value width not divisible by num_heads={num_heads}")
    if mask is None:
        return
    chex.assert_type(mask, bool)
    t = 1 if query.ndim == 2 else query.shape[1]
    ok = mask.shape[0] == b and mask.shape[-1] == s
    if query.ndim == 2:
        ok &= mask.ndim == 2 or (mask.ndim == 3 and mask.shape[1] in (1, num_heads))
        allowed = "[B, S] or [B, H|1, S]"
    else:
        ok &= mask.ndim in (2, 3, 4)
        ok &= mask.ndim != 3 or mask.shape[1] in (1, t)
        ok &= mask.ndim != 4 or (mask.shape[1] in (1, num_heads) and mask.shape[2] in (1, t))
        allowed = "[B, S], [B, T|1, S] or [B, H|1, T|1, S]"
    if not ok:
        raise AssertionError(
            f"{where}: mask must be bool {allowed} with B={b}, S={s}, T={t}, H={num_heads}"
        )


def _mask_to_4d(mask: Array | None, single_step: bool) -> Array | None:
    """Lifts a validated mask to [B, H|1, T|1, S]."""
    if mask is None:
        return None
    if single_step:  # [B, S] or [B, H|1, S]
        return mask[:, None, None, :] if mask.ndim == 2 else mask[:, :, None, :]
    if mask.ndim == 2:
        return mask[:, None, None, :]
    if mask.ndim == 3:
        return mask[:, None]
    return mask


def _split_heads_context(weights: Array, values: Array, num_heads: int, dtype: Dtype) -> Array:
    """weights [B, H, T, S] x values [B, S, Dv] -> context [B, T, Dv] (heads concatenated)."""
    b, s, dv = values.shape
    v = values.astype(dtype).reshape(b, s, num_heads, dv // num_heads)
    ctx = jnp.einsum("bhts,bshd->bthd", weights.astype(dtype), v)
    return ctx.reshape(b, ctx.shape[1], dv)


def _finish(context: Array, weights: Array, single_step: bool, num_heads: int):
    """Drops the T axis for one-step queries and the H axis for a single head."""
    if single_step:
        context, weights = context[:, 0], weights[:, :, 0]
    if num_heads == 1:
        weights = weights[:, 0]
    return context, weights


class AdditiveAttention(nn.Module):
    """Masked multi-head additive (Bahdanau) attention.

    The key projection `W h` depends only on the source: compute it once with
    `project_keys(keys)` and pass it as `projected_keys=` at every decoder step.

    Attributes:
      attention_dim: A, width of the tanh layer summed over heads (divisible by num_heads).
      num_heads: H; each head has its own W, U and v slices of width A / H.
      normalize: weight-normalised v (v = g * v / ||v||, scalar gain g per head) with a bias
        inside tanh (Bahdanau normalised form, as in TF's `BahdanauAttention(normalize=True)`).
      use_query_bias: bias of the query projection U (the bias inside tanh).
      dtype: compute dtype of projections and context; scores and softmax are float32.
      param_dtype: parameter dtype.
      kernel_init: initializer of W, U and v.
      implementation: "naive" materialises the [B, T, S, A] tanh tensor of a parallel query;
        "chunked" computes it `chunk_size` query steps at a time with recomputation in the
        backward pass (same outputs and gradients, a fraction of the memory); "pallas" runs
        the fused kernels of `seq2seq_jax.layers.pallas_attention` (online softmax, tanh
        recomputed tile by tile in the backward pass; Triton on GPU, Pallas' interpreter on
        CPU, which is slow and meant for tests); "auto" (default) chunks when that tensor
        would exceed 2^26 elements (2^22 on CPU, where the chunked form is also faster: its
        chunks stay in cache), else stays naive. Once the kernels are validated on a GPU
        (`PALLAS_AUTO_VERIFIED`), "auto" picks "pallas" on GPU for parallel queries whose
        shapes the kernels take; until then "pallas" is opt-in. A single-step query always
        takes the one-step path.
      chunk_size: T-chunk of the chunked form; 0 picks one (~2^22 tanh elements per chunk,
        2^19 on CPU).
    """

    attention_dim: int
    num_heads: int = 1
    normalize: bool = False
    use_query_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    implementation: str = "auto"
    chunk_size: int = 0

    def setup(self):
        if self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim={self.attention_dim} is not divisible by num_heads={self.num_heads}"
            )
        head_dim = self.attention_dim // self.num_heads
        dense = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            dot_general=accumulate_in_float32,
        )
        self.key_proj = nn.Dense(self.attention_dim, use_bias=False, **dense)
        # The normalised form carries its own bias `b` inside tanh instead of U's bias.
        self.query_proj = nn.Dense(
            self.attention_dim, use_bias=self.use_query_bias and not self.normalize, **dense
        )
        self.v = self.param("v", self.kernel_init, (self.num_heads, head_dim), self.param_dtype)
        if self.normalize:
            self.g = self.param(
                "g",
                nn.initializers.constant(math.sqrt(1.0 / head_dim)),
                (self.num_heads,),
                self.param_dtype,
            )
            self.b = self.param("b", nn.initializers.zeros, (self.attention_dim,), self.param_dtype)

    def project_keys(self, keys: Array) -> Array:
        """W h for every source position, once per source.

        Args:
          keys: [B, S, Dk] encoder annotations.

        Returns:
          [B, S, A] projected keys in the compute dtype.
        """
        chex.assert_rank(keys, 3)
        return self.key_proj(keys)

    def _projected_query(self, query: Array) -> Array:
        """U s (+ b): [B, T, Dq] -> [B, T, A] in the compute dtype."""
        q = self.query_proj(query)
        if self.normalize:
            q = q + self.b.astype(self.dtype)
        return q

    def _effective_v(self) -> Array:
        """v, or g * v / ||v|| when normalised: float32 [H, A / H]."""
        v = self.v.astype(jnp.float32)
        if self.normalize:
            v = (
                self.g.astype(jnp.float32)[:, None]
                * v
                * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True))
            )
        return v

    def _use_chunks(self, batch: int, steps: int, sources: int) -> int:
        """The T-chunk size to use, or 0 for the naive (fully materialised) form."""
        if self.implementation in ("naive", "pallas") or steps == 1:
            return 0
        threshold, per_chunk = _auto_sizes()
        chunk = self.chunk_size or _auto_chunk(steps, sources, batch, self.attention_dim, per_chunk)
        if self.implementation == "chunked":
            return max(1, min(chunk, steps))
        if self.implementation != "auto":
            raise ValueError(
                f"unknown implementation {self.implementation!r}; known: {IMPLEMENTATIONS}"
            )
        big = batch * steps * sources * self.attention_dim > threshold
        return min(chunk, steps) if big else 0

    def _use_pallas(self, steps: int, value_width: int) -> bool:
        """Whether a [B, T] query runs through the fused Pallas kernels."""
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {self.implementation!r}; known: {IMPLEMENTATIONS}"
            )
        if steps == 1 or self.implementation not in ("pallas", "auto"):
            return False
        reason = pallas_attention.pallas_supported(
            self.attention_dim // self.num_heads, value_width // self.num_heads
        )
        if self.implementation == "pallas":
            if reason:
                raise ValueError(f"AdditiveAttention(implementation='pallas'): {reason}")
            return True
        return reason is None and PALLAS_AUTO_VERIFIED and jax.default_backend() == "gpu"

    def __call__(
        self,
        query: Array,  # [B, Dq] or [B, T, Dq]
        keys: Array,  # [B, S, Dk]
        mask: Array | None = None,  # bool [B, S], [B, T, S] or [B, H|1, T, S]
        values: Array | None = None,  # [B, S, Dv], default: keys
        projected_keys: Array | None = None,  # [B, S, A] from project_keys(keys)
    ) -> tuple[Array, Array]:
        """Attends from `query` to `keys`; returns (context, float32 weights)."""
        values = keys if values is None else values
        _assert_shapes(query, keys, values, mask, self.num_heads, "AdditiveAttention")
        single_step = query.ndim == 2
        q = query[:, None, :] if single_step else query
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        chex.assert_shape(projected_keys, (keys.shape[0], keys.shape[1], self.attention_dim))
        b, t, _ = q.shape
        s = keys.shape[1]
        h, d = self.num_heads, self.attention_dim // self.num_heads
        qp = self._projected_query(q).reshape(b, t, h, d)
        kp = projected_keys.astype(self.dtype).reshape(b, s, h, d)
        mask4 = _mask_to_4d(mask, single_step)
        if self._use_pallas(t, values.shape[-1]):
            context, weights = pallas_attention.fused_additive_attention(
                qp, kp, self._effective_v(), mask4, values, self.dtype
            )
            return _finish(context, weights, single_step, self.num_heads)
        chunk = self._use_chunks(b, t, s)
        if chunk:
            context, weights = _chunked_additive(
                qp, kp, self._effective_v(), mask4, values, self.dtype, chunk
            )
        elif t == 1:
            context, weights = _one_step_additive(
                qp[:, 0], kp, self._effective_v(), mask4, values, self.dtype
            )
        else:
            weights = masked_softmax(_additive_scores(qp, kp, self._effective_v()), mask4)
            context = _split_heads_context(weights, values, self.num_heads, self.dtype)
        return _finish(context, weights, single_step, self.num_heads)


IMPLEMENTATIONS = ("auto", "naive", "chunked", "pallas")

# Whether "auto" may pick the fused Pallas kernels on GPU. False until a GPU run has compiled
# and checked them (`bash benchmarks/gpu_check.sh` records "pallas/gpu_verified" in its JSON
# lines): until then "pallas" is opt-in only. Flip to True once a GPU run validates them.
PALLAS_AUTO_VERIFIED = False

# Above this many elements of the [B, T, S, A] tanh tensor (256 MiB in float32), "auto" chunks,
# aiming at this many elements per chunk (16 MiB).
_AUTO_CHUNK_ELEMENTS = 1 << 26
_AUTO_CHUNK_TARGET = 1 << 22
# On CPU the chunked form is faster than the naive one from ~16 MiB of tanh on (measured on a
# 2-core AVX-512 machine, forward + backward: B=64, T=S=32, A=256: naive 91 ms, chunks of
# 2^19 elements 51 ms; B=8, T=S=128, A=512: 382 vs 171 ms), best with chunks that stay in
# cache (2 MiB); below 2^22 elements the naive form wins (B=8, T=S=32, A=256: 4.9 vs 7.0 ms).
_CPU_AUTO_CHUNK_ELEMENTS = 1 << 22
_CPU_AUTO_CHUNK_TARGET = 1 << 19


def _auto_sizes() -> tuple[int, int]:
    """(tanh elements above which "auto" chunks, target elements per chunk) for this backend."""
    if jax.default_backend() == "cpu":
        return _CPU_AUTO_CHUNK_ELEMENTS, _CPU_AUTO_CHUNK_TARGET
    return _AUTO_CHUNK_ELEMENTS, _AUTO_CHUNK_TARGET


def _auto_chunk(
    steps: int, sources: int, batch: int, width: int, target: int = _AUTO_CHUNK_TARGET
) -> int:
    """A T-chunk whose tanh tensor [B, C, S, A] holds about `target` elements (at least 1)."""
    per_step = max(1, batch * sources * width)
    return int(max(1, min(steps, target // per_step)))


def _additive_scores(qp: Array, kp: Array, v: Array) -> Array:
    """v . tanh(q + k): qp [B, T, H, d], kp [B, S, H, d], v [H, d] -> float32 [B, H, T, S]."""
    pre = jnp.tanh(qp[:, :, None] + kp[:, None])  # [B, T, S, H, d]
    return jnp.einsum("btshd,hd->bhts", pre.astype(jnp.float32), v)


@jax.checkpoint
def _one_step_scores(qp: Array, kp: Array, v: Array) -> Array:
    """v . tanh(q + k) for one query step: qp [B, H, d], kp [B, S, H, d] -> float32 [B, H, S].

    Checkpointed: the backward pass recomputes tanh from q and k instead of saving it. Inside
    an RNN decoder's scan a saved [B, S, A] tanh per step becomes a stacked [T, B, S, A]
    residual (134 MiB for the reference RNNsearch), written and read back again.
    """
    pre = jnp.tanh(qp[:, None] + kp).astype(jnp.float32)  # [B, S, H, d]
    if v.shape[0] == 1:  # No unit head axis: XLA then needs no transposed copy of `pre`.
        return jnp.einsum("bsd,d->bs", pre[:, :, 0], v[0])[:, None]
    return jnp.einsum("bshd,hd->bhs", pre, v)


def _one_step_additive(
    qp: Array, kp: Array, v: Array, mask4: Array | None, values: Array, dtype: Dtype
) -> tuple[Array, Array]:
    """Additive attention of one query step (an RNN decoder's step, inside its scan).

    The same result as the general path with T = 1, written without unit T (and, for one
    head, H) axes: with them XLA copies `values` and the tanh tensor into transposed layouts
    at every decoder step (~25% of the reference RNNsearch's recurrence time).

    Args:
      qp: [B, H, d] projected query; kp: [B, S, H, d] projected keys; v: [H, d] scorer.
      mask4: bool [B, H|1, 1, S] or None; values: [B, S, Dv]; dtype: compute dtype.

    Returns:
      context [B, 1, Dv] and float32 weights [B, H, 1, S].
    """
    b, s, dv = values.shape
    h = v.shape[0]
    mask = None if mask4 is None else mask4[:, :, 0]  # [B, H|1, S]
    weights = masked_softmax(_one_step_scores(qp, kp, v), mask)  # [B, H, S]
    if h == 1:
        context = jnp.einsum("bs,bsd->bd", weights[:, 0].astype(dtype), values.astype(dtype))
    else:
        heads = values.astype(dtype).reshape(b, s, h, dv // h)
        context = jnp.einsum("bhs,bshd->bhd", weights.astype(dtype), heads).reshape(b, dv)
    return context[:, None], weights[:, :, None]


def _chunked_additive(
    qp: Array, kp: Array, v: Array, mask4: Array | None, values: Array, dtype: Dtype, chunk: int
) -> tuple[Array, Array]:
    """Additive attention over T in chunks, recomputing each chunk in the backward pass.

    Every query row is independent, so scores, softmax and context are computed chunk by
    chunk inside a `lax.scan` whose body is `jax.checkpoint`-ed: only one chunk's
    [B, C, S, H, d] tanh tensor is ever alive, in the forward and in the backward pass.

    Returns:
      context [B, T, Dv] and float32 weights [B, H, T, S].
    """
    b, t, h, d = qp.shape
    s = kp.shape[1]
    n = -(-t // chunk)
    pad = n * chunk - t
    qc = jnp.pad(qp, ((0, 0), (0, pad), (0, 0), (0, 0)))
    qc = qc.reshape(b, n, chunk, h, d).swapaxes(0, 1)  # [n, B, C, H, d]
    if mask4 is not None and mask4.shape[2] > 1:
        m = jnp.pad(mask4, ((0, 0), (0, 0), (0, pad), (0, 0)))
        mc = m.reshape(b, m.shape[1], n, chunk, s).transpose(2, 0, 1, 3, 4)  # [n, B, H|1, C, S]
    else:
        mc = None

    @jax.checkpoint
    def body(q_chunk, m_chunk):
        m_chunk = mask4 if m_chunk is None else m_chunk
        w = masked_softmax(_additive_scores(q_chunk, kp, v), m_chunk)  # [B, H, C, S]
        return _split_heads_context(w, values, h, dtype), w

    def step(carry, xs):
        q_chunk, m_chunk = xs
        return carry, body(q_chunk, m_chunk)

    _, (ctx, w) = jax.lax.scan(step, None, (qc, mc))
    ctx = ctx.swapaxes(0, 1).reshape(b, n * chunk, -1)[:, :t]
    w = w.transpose(1, 2, 0, 3, 4).reshape(b, h, n * chunk, s)[:, :, :t]
    return ctx, w


class DotProductAttention(nn.Module):
    """Masked multi-head scaled dot-product attention with the additive call contract.

    Scores are `(Q s) . (K h) / sqrt(A / H)`; values are split into heads as in
    `AdditiveAttention` (no value projection). The weights are computed explicitly (rather than
    through `jax.nn.dot_product_attention`) because callers need them for alignments and a
    fully masked row must give zero weights, which the fused kernel does not.

    Attributes:
      attention_dim: A, query/key projection width over all heads.
      num_heads: H.
      dtype, param_dtype, kernel_init: as in `AdditiveAttention`.
    """

    attention_dim: int
    num_heads: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    def setup(self):
        if self.attention_dim % self.num_heads:
            raise ValueError(
                f"attention_dim={self.attention_dim} is not divisible by num_heads={self.num_heads}"
            )
        dense = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            use_bias=False,
            dot_general=accumulate_in_float32,
        )
        self.key_proj = nn.Dense(self.attention_dim, **dense)
        self.query_proj = nn.Dense(self.attention_dim, **dense)

    def project_keys(self, keys: Array) -> Array:
        """K h for every source position: [B, S, Dk] -> [B, S, A]."""
        chex.assert_rank(keys, 3)
        return self.key_proj(keys)

    def __call__(
        self,
        query: Array,
        keys: Array,
        mask: Array | None = None,
        values: Array | None = None,
        projected_keys: Array | None = None,
    ) -> tuple[Array, Array]:
        """Attends from `query` to `keys`; returns (context, float32 weights)."""
        values = keys if values is None else values
        _assert_shapes(query, keys, values, mask, self.num_heads, "DotProductAttention")
        single_step = query.ndim == 2
        q = query[:, None, :] if single_step else query
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        b, t, _ = q.shape
        s = keys.shape[1]
        h, d = self.num_heads, self.attention_dim // self.num_heads
        q = self.query_proj(q).reshape(b, t, h, d)
        k = projected_keys.astype(self.dtype).reshape(b, s, h, d)
        scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        scores = scores / math.sqrt(d)
        weights = masked_softmax(scores, _mask_to_4d(mask, single_step))
        context = _split_heads_context(weights, values, self.num_heads, self.dtype)
        return _finish(context, weights, single_step, self.num_heads)


ATTENTION_TYPES = {"additive": AdditiveAttention, "dot": DotProductAttention}


def get_attention_class(name: str) -> type[nn.Module]:
    """The cross-attention class for a config name; raises on unknown names."""
    if name not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {name!r}; known: {sorted(ATTENTION_TYPES)}")
    return ATTENTION_TYPES[name]
