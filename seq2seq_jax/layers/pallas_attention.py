"""Fused masked additive (Bahdanau) attention as Pallas kernels (GPU through Triton).

Shape glossary: B batch, T query steps, S source length, H heads, d = A / H head width of
the tanh layer, Dv value width (dv = Dv / H per head).

    scores[b, h, t, s] = sum_k v[h, k] * tanh(q[b, t, h, k] + k[b, s, h, k])
    weights = masked softmax over s (float32);  context[b, t, h] = weights @ values_h

The [B, T, S, A] tanh tensor that the naive form materialises is never stored: the forward
kernel walks over S in tiles with an online softmax (running max, running sum), computing
tanh for one [block_t, block_s, block_d] tile at a time. The backward pass (`jax.custom_vjp`)
recomputes tanh tile by tile as well:

- dS = P * (dP - rowsum(P * dP)) with dP = dContext . values_h^T (+ dWeights), in XLA, on
  [B, H, T, S] arrays (the size of the weights, 1/d of the tanh tensor);
- a dq kernel (grid over T tiles) and a dk kernel (grid over S tiles) recompute tanh and
  reduce dS * v * (1 - tanh^2) over S and over T; dv comes from the dq kernel's partial sums.

Mask semantics are those of `masked_softmax`: never -inf, masked keys get exactly zero
weight and zero gradient, a fully masked row gives zero weights, a zero context and finite
gradients. T, S and the head widths are padded to the tile sizes (padded keys are masked,
padded query rows dropped), so any shape runs; see `pallas_supported` for the limits.

Backends: "triton" (GPU; Pallas' Triton lowering is chosen explicitly with
`pallas.triton.CompilerParams`, since JAX >= 0.10 defaults `pallas_call` on GPU to Mosaic
GPU), "interpret" (Pallas' interpreter: any backend, slow, used by the CPU tests) and
"mosaic" (TPU; written to the same API but never run on a TPU here). `backend=None` picks
"triton" on GPU, "mosaic" on TPU and "interpret" elsewhere. JAX 0.11 deprecates Pallas' Triton
backend (its changelog: to be removed in a future version); it still lowers, with a warning.
A Mosaic GPU port is the way on once the Triton kernels have GPU figures to beat.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

Array = jax.Array

# Pallas' Triton lowering needs every loaded or stored tile to have a power-of-two size and
# `pl.dot` operands of at least 16 x 16; these defaults keep one tanh tile at 8192 float32
# elements (64 registers a thread with 4 warps).
DEFAULT_BLOCK_T = 16
DEFAULT_BLOCK_S = 32
DEFAULT_BLOCK_D = 16
# Largest per-head value width (after padding to a power of two): the forward kernel keeps a
# [block_t, dv] float32 accumulator in registers.
MAX_VALUE_HEAD_DIM = 512
BACKENDS = ("triton", "interpret", "mosaic")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static tiling of the kernels (hashable: a `custom_vjp` non-differentiable argument).

    Attributes:
      block_t: query rows per tile (power of two, >= 16).
      block_s: keys per tile (power of two, >= 16).
      block_d: tanh-width chunk per tile (power of two).
      backend: 'triton', 'interpret' or 'mosaic'.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages.
    """

    block_t: int = DEFAULT_BLOCK_T
    block_s: int = DEFAULT_BLOCK_S
    block_d: int = DEFAULT_BLOCK_D
    backend: str = "interpret"
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for name in ("block_t", "block_s", "block_d"):
            size = getattr(self, name)
            if size < 1 or size & (size - 1):
                raise ValueError(f"KernelConfig.{name}={size} is not a power of two")
        if self.block_t < 16 or self.block_s < 16:
            raise ValueError(
                f"KernelConfig block_t={self.block_t}, block_s={self.block_s}: "
                "both must be >= 16 (the Triton dot's smallest operand)"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"KernelConfig.backend={self.backend!r}; known: {BACKENDS}")


def default_backend() -> str:
    """'triton' on GPU, 'mosaic' on TPU, 'interpret' elsewhere."""
    platform = jax.default_backend()
    if platform == "gpu":
        return "triton"
    if platform == "tpu":
        return "mosaic"
    return "interpret"


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pallas_supported(head_dim: int, value_head_dim: int) -> str | None:
    """None when the kernels take these widths, else the reason they do not.

    Args:
      head_dim: d = A / H, the tanh width of one head (any size: it is chunked).
      value_head_dim: Dv / H, the value width of one head.
    """
    if head_dim < 1 or value_head_dim < 1:
        return f"head widths must be positive (d={head_dim}, dv={value_head_dim})"
    if max(16, _next_pow2(value_head_dim)) > MAX_VALUE_HEAD_DIM:
        return (
            f"value width per head {value_head_dim} > {MAX_VALUE_HEAD_DIM} (the forward "
            "kernel's register accumulator)"
        )
    return None


def _compiler_params(cfg: KernelConfig):
    if cfg.backend == "triton":
        from jax.experimental.pallas import triton as pltriton

        return pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return None


def _call(kernel, cfg: KernelConfig, **kwargs):
    return pl.pallas_call(
        kernel,
        interpret=cfg.backend == "interpret",
        compiler_params=_compiler_params(cfg),
        **kwargs,
    )


def _tanh_tile(q_ref, k_ref, rows, cols, dsl):
    """tanh(q[rows, dsl] + k[cols, dsl]) as float32 [rows, cols, block_d]."""
    qc = q_ref[rows, dsl].astype(jnp.float32)
    kc = k_ref[cols, dsl].astype(jnp.float32)
    return jnp.tanh(qc[:, None, :] + kc[None, :, :])


def _chunk(c, block_d: int):
    """The head-width slice of chunk c (a traced loop index)."""
    return pl.ds(pl.multiple_of(c * block_d, block_d), block_d)


def _score_tile(q_ref, k_ref, v_ref, rows, cols, n_chunks, block_d, shape):
    """sum_k v[k] tanh(q[rows, k] + k[cols, k]): float32 [len(rows), len(cols)].

    The head width is walked in chunks of block_d, one [rows, cols, block_d] tanh tile at a
    time (a loop, not unrolled: d = 512 with one head is 32 chunks).
    """

    def body(c, s):
        dsl = _chunk(c, block_d)
        t = _tanh_tile(q_ref, k_ref, rows, cols, dsl)
        return s + jnp.sum(t * v_ref[dsl].astype(jnp.float32)[None, None, :], axis=2)

    return jax.lax.fori_loop(0, n_chunks, body, jnp.zeros(shape, jnp.float32))


# A finite stand-in for -inf: masked scores never enter a max or an exp unguarded.
_NEG = -1e30


def _forward_kernel(
    q_ref,
    k_ref,
    v_ref,
    mask_ref,
    x_ref,
    ctx_ref,
    lse_ref,
    *scores_ref,
    cfg: KernelConfig,
    n_s: int,
    n_chunks: int,
):
    """One (b, h, T-tile) program: online softmax over the S tiles.

    Refs: q [bt, dp], k [Sp, dp], v [dp], mask int8 [bt|1, Sp], values [Sp, dvp];
    outputs context [bt, dvp], lse [bt] (0 for an empty row), scores [bt, Sp] (optional).
    """
    bt, bs = q_ref.shape[0], cfg.block_s
    dvp = x_ref.shape[1]
    rows = pl.ds(0, bt)

    def body(j, carry):
        acc, m_prev, l_prev = carry
        cols = pl.ds(j * bs, bs)
        s = _score_tile(q_ref, k_ref, v_ref, rows, cols, n_chunks, cfg.block_d, (bt, bs))
        if scores_ref:
            scores_ref[0][:, cols] = s
        allowed = mask_ref[:, cols] != 0  # [bt|1, bs]
        s_masked = jnp.where(allowed, s, _NEG)
        m_new = jnp.maximum(m_prev, jnp.max(s_masked, axis=1))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.where(allowed, jnp.exp(s_masked - m_new[:, None]), 0.0)  # masked: exactly 0
        x = x_ref[cols, :]
        if x.dtype == jnp.float32:  # IEEE float32 on the tensor cores, not TF32
            pv = jnp.dot(p, x, precision=jax.lax.Precision.HIGHEST)
        else:
            pv = jnp.dot(p.astype(x.dtype), x, preferred_element_type=jnp.float32)
        acc = alpha[:, None] * acc + pv
        return acc, m_new, alpha * l_prev + jnp.sum(p, axis=1)

    init = (
        jnp.zeros((bt, dvp), jnp.float32),
        jnp.full((bt,), _NEG, jnp.float32),
        jnp.zeros((bt,), jnp.float32),
    )
    acc, m, total = jax.lax.fori_loop(0, n_s, body, init)
    nonempty = total > 0
    safe_l = jnp.where(nonempty, total, 1.0)
    ctx_ref[...] = (acc / safe_l[:, None]).astype(ctx_ref.dtype)
    lse_ref[...] = jnp.where(nonempty, m + jnp.log(safe_l), 0.0)


def _dq_kernel(
    q_ref, k_ref, v_ref, ds_ref, dq_ref, dv_ref, *, cfg: KernelConfig, n_s: int, n_chunks: int
):
    """One (b, h, T-tile) program: dq = v * sum_s dS (1 - tanh^2); dv partial = sum dS tanh.

    Refs: q [bt, dp], k [Sp, dp], v [dp], dS float32 [bt, Sp]; outputs dq [bt, dp],
    dv partial float32 [dp].
    """
    bt, bs, bd = q_ref.shape[0], cfg.block_s, cfg.block_d
    rows = pl.ds(0, bt)

    def chunk(c, _):
        dsl = _chunk(c, bd)

        def body(j, carry):
            acc_q, acc_v = carry
            cols = pl.ds(j * bs, bs)
            t = _tanh_tile(q_ref, k_ref, rows, cols, dsl)  # [bt, bs, bd]
            g = ds_ref[:, cols][:, :, None]
            acc_q = acc_q + jnp.sum(g * (1.0 - t * t), axis=1)
            acc_v = acc_v + jnp.sum(jnp.sum(g * t, axis=0), axis=0)
            return acc_q, acc_v

        init = (jnp.zeros((bt, bd), jnp.float32), jnp.zeros((bd,), jnp.float32))
        acc_q, acc_v = jax.lax.fori_loop(0, n_s, body, init)
        vc = v_ref[dsl].astype(jnp.float32)
        dq_ref[:, dsl] = (acc_q * vc[None, :]).astype(dq_ref.dtype)
        dv_ref[dsl] = acc_v
        return 0

    jax.lax.fori_loop(0, n_chunks, chunk, 0)


def _dk_kernel(q_ref, k_ref, v_ref, ds_ref, dk_ref, *, cfg: KernelConfig, n_t: int, n_chunks: int):
    """One (b, h, S-tile) program: dk = v * sum_t dS (1 - tanh^2).

    Refs: q [Tp, dp], k [bs, dp], v [dp], dS float32 [Tp, bs]; output dk [bs, dp].
    """
    bt, bs, bd = cfg.block_t, k_ref.shape[0], cfg.block_d
    cols = pl.ds(0, bs)

    def chunk(c, _):
        dsl = _chunk(c, bd)

        def body(i, acc):
            rows = pl.ds(i * bt, bt)
            t = _tanh_tile(q_ref, k_ref, rows, cols, dsl)  # [bt, bs, bd]
            g = ds_ref[rows, :][:, :, None]
            return acc + jnp.sum(g * (1.0 - t * t), axis=0)

        acc = jax.lax.fori_loop(0, n_t, body, jnp.zeros((bs, bd), jnp.float32))
        vc = v_ref[dsl].astype(jnp.float32)
        dk_ref[:, dsl] = (acc * vc[None, :]).astype(dk_ref.dtype)
        return 0

    jax.lax.fori_loop(0, n_chunks, chunk, 0)


def _forward(q, k, v, mask, x, cfg: KernelConfig, with_scores: bool):
    """Runs the forward kernel on padded head-major arrays.

    q [B, H, Tp, dp], k [B, H, Sp, dp], v [H, dp], mask int8 [B, Hm, Tm, Sp], values
    [B, H, Sp, dvp] -> context [B, H, Tp, dvp], lse float32 [B, H, Tp] (, scores float32
    [B, H, Tp, Sp]).
    """
    b, h, tp, dp = q.shape
    sp, dvp = k.shape[2], x.shape[3]
    bt = cfg.block_t
    hm, tm = mask.shape[1], mask.shape[2]
    mask_block = (None, None, bt if tm > 1 else 1, sp)

    def mask_map(bi, hi, ti):
        return (bi, hi if hm > 1 else 0, ti if tm > 1 else 0, 0)

    out_shape = [
        jax.ShapeDtypeStruct((b, h, tp, dvp), x.dtype),
        jax.ShapeDtypeStruct((b, h, tp), jnp.float32),
    ]
    out_specs = [
        pl.BlockSpec((None, None, bt, dvp), lambda bi, hi, ti: (bi, hi, ti, 0)),
        pl.BlockSpec((None, None, bt), lambda bi, hi, ti: (bi, hi, ti)),
    ]
    if with_scores:
        out_shape.append(jax.ShapeDtypeStruct((b, h, tp, sp), jnp.float32))
        out_specs.append(pl.BlockSpec((None, None, bt, sp), lambda bi, hi, ti: (bi, hi, ti, 0)))
    kernel = functools.partial(
        _forward_kernel, cfg=cfg, n_s=sp // cfg.block_s, n_chunks=dp // cfg.block_d
    )
    return _call(
        kernel,
        cfg,
        grid=(b, h, tp // bt),
        in_specs=[
            pl.BlockSpec((None, None, bt, dp), lambda bi, hi, ti: (bi, hi, ti, 0)),
            pl.BlockSpec((None, None, sp, dp), lambda bi, hi, ti: (bi, hi, 0, 0)),
            pl.BlockSpec((None, dp), lambda bi, hi, ti: (hi, 0)),
            pl.BlockSpec(mask_block, mask_map),
            pl.BlockSpec((None, None, sp, dvp), lambda bi, hi, ti: (bi, hi, 0, 0)),
        ],
        out_specs=out_specs,
        out_shape=out_shape,
        name="additive_attention_fwd",
    )(q, k, v, mask, x)


def _grad_qkv(q, k, v, ds, cfg: KernelConfig):
    """dq [B, H, Tp, dp], dk [B, H, Sp, dp], dv float32 [H, dp] from dS float32 [B, H, Tp, Sp]."""
    b, h, tp, dp = q.shape
    sp = k.shape[2]
    bt, bs = cfg.block_t, cfg.block_s
    n_chunks = dp // cfg.block_d
    dq, dv_part = _call(
        functools.partial(_dq_kernel, cfg=cfg, n_s=sp // bs, n_chunks=n_chunks),
        cfg,
        grid=(b, h, tp // bt),
        in_specs=[
            pl.BlockSpec((None, None, bt, dp), lambda bi, hi, ti: (bi, hi, ti, 0)),
            pl.BlockSpec((None, None, sp, dp), lambda bi, hi, ti: (bi, hi, 0, 0)),
            pl.BlockSpec((None, dp), lambda bi, hi, ti: (hi, 0)),
            pl.BlockSpec((None, None, bt, sp), lambda bi, hi, ti: (bi, hi, ti, 0)),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bt, dp), lambda bi, hi, ti: (bi, hi, ti, 0)),
            pl.BlockSpec((None, None, None, dp), lambda bi, hi, ti: (bi, hi, ti, 0)),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(q.shape, q.dtype),
            jax.ShapeDtypeStruct((b, h, tp // bt, dp), jnp.float32),
        ],
        name="additive_attention_dq",
    )(q, k, v, ds)
    dk = _call(
        functools.partial(_dk_kernel, cfg=cfg, n_t=tp // bt, n_chunks=n_chunks),
        cfg,
        grid=(b, h, sp // bs),
        in_specs=[
            pl.BlockSpec((None, None, tp, dp), lambda bi, hi, si: (bi, hi, 0, 0)),
            pl.BlockSpec((None, None, bs, dp), lambda bi, hi, si: (bi, hi, si, 0)),
            pl.BlockSpec((None, dp), lambda bi, hi, si: (hi, 0)),
            pl.BlockSpec((None, None, tp, bs), lambda bi, hi, si: (bi, hi, 0, si)),
        ],
        out_specs=pl.BlockSpec((None, None, bs, dp), lambda bi, hi, si: (bi, hi, si, 0)),
        out_shape=jax.ShapeDtypeStruct(k.shape, k.dtype),
        name="additive_attention_dk",
    )(q, k, v, ds)
    return dq, dk, jnp.sum(dv_part, axis=(0, 2))


def _weights_from_scores(scores, lse, mask):
    """where(mask, exp(scores - lse), 0): float32 [B, H, Tp, Sp], exactly 0 where masked."""
    allowed = jnp.broadcast_to(mask != 0, scores.shape)
    shifted = jnp.where(allowed, scores - lse[..., None], 0.0)
    return jnp.where(allowed, jnp.exp(shifted), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(q, k, v, mask, x, cfg: KernelConfig, with_weights: bool):
    """(context [B, H, Tp, dvp], weights float32 [B, H, Tp, Sp] or None)."""
    return _fused_fwd(q, k, v, mask, x, cfg, with_weights)[0]


def _fused_fwd(q, k, v, mask, x, cfg, with_weights):
    if with_weights:
        ctx, lse, scores = _forward(q, k, v, mask, x, cfg, with_scores=True)
        weights = _weights_from_scores(scores, lse, mask)
        return (ctx, weights), (q, k, v, mask, x, weights)
    ctx, lse = _forward(q, k, v, mask, x, cfg, with_scores=False)
    return (ctx, None), (q, k, v, mask, x, lse)


def _fused_bwd(cfg, with_weights, residuals, cotangents):
    q, k, v, mask, x, saved = residuals
    dctx, dweights = cotangents
    if with_weights:
        p = saved
    else:  # Recompute the scores tile by tile (the same kernel), then the weights.
        _, _, scores = _forward(q, k, v, mask, x, cfg, with_scores=True)
        p = _weights_from_scores(scores, saved, mask)
    dctx32 = dctx.astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    dp = jnp.einsum("bhtd,bhsd->bhts", dctx32, x32, precision=jax.lax.Precision.HIGHEST)
    if with_weights and dweights is not None:
        dp = dp + dweights.astype(jnp.float32)
    ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))  # 0 wherever p is 0 (masked)
    dx = jnp.einsum("bhts,bhtd->bhsd", p, dctx32, precision=jax.lax.Precision.HIGHEST)
    dq, dk, dv = _grad_qkv(q, k, v, ds, cfg)
    dmask = jnp.zeros(mask.shape, jax.dtypes.float0)
    return dq, dk, dv.astype(v.dtype), dmask, dx.astype(x.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def make_config(
    backend: str | None = None,
    block_t: int = DEFAULT_BLOCK_T,
    block_s: int = DEFAULT_BLOCK_S,
    block_d: int = DEFAULT_BLOCK_D,
    num_warps: int = 4,
    num_stages: int = 2,
) -> KernelConfig:
    """A `KernelConfig`; backend None = `default_backend()`."""
    return KernelConfig(
        block_t=block_t,
        block_s=block_s,
        block_d=block_d,
        backend=backend or default_backend(),
        num_warps=num_warps,
        num_stages=num_stages,
    )


def fused_additive_attention(
    qp: Array,  # [B, T, H, d] projected queries (U s + b)
    kp: Array,  # [B, S, H, d] projected keys (W h)
    v: Array,  # [H, d] scorer
    mask4: Array | None,  # bool [B, H|1, T|1, S], True = may attend
    values: Array,  # [B, S, Dv]
    dtype=None,
    *,
    return_weights: bool = True,
    config: KernelConfig | None = None,
) -> tuple[Array, Array | None]:
    """Masked additive attention through the fused kernels.

    Args:
      qp, kp, v: the projected query, projected keys and scorer, as in `AdditiveAttention`.
      mask4: boolean mask broadcastable over heads and steps, or None.
      values: the values; each head reads its Dv / H slice.
      dtype: dtype of the context (default: the values' dtype); scores and softmax are
        float32, tanh is evaluated in float32.
      return_weights: also return the float32 weights [B, H, T, S] (written by the same
        forward pass; without them the backward pass recomputes the scores).
      config: tiling and backend (`make_config()` when None).

    Returns:
      context [B, T, Dv] and weights float32 [B, H, T, S] (None unless return_weights).
    """
    config = config or make_config()
    b, t, h, d = qp.shape
    s, dv_total = kp.shape[1], values.shape[-1]
    if kp.shape != (b, s, h, d) or v.shape != (h, d) or values.shape[:2] != (b, s):
        raise ValueError(
            f"fused_additive_attention: qp {qp.shape}, kp {kp.shape}, v "
            f"{v.shape}, values {values.shape} do not agree on B, S, H, d"
        )
    if dv_total % h:
        raise ValueError(
            f"fused_additive_attention: values width {dv_total} is not divisible by {h} heads"
        )
    dvh = dv_total // h
    reason = pallas_supported(d, dvh)
    if reason:
        raise ValueError(f"fused_additive_attention: {reason}")
    dtype = jnp.dtype(dtype or values.dtype)
    tp, sp = _round_up(t, config.block_t), _round_up(s, config.block_s)
    dp, dvp = _round_up(d, config.block_d), max(16, _next_pow2(dvh))

    q = jnp.pad(qp.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, tp - t), (0, dp - d)))
    k = jnp.pad(kp.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, sp - s), (0, dp - d)))
    vv = jnp.pad(v, ((0, 0), (0, dp - d)))
    x = values.astype(dtype).reshape(b, s, h, dvh).transpose(0, 2, 1, 3)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, sp - s), (0, dvp - dvh)))
    if mask4 is None:
        mask4 = jnp.ones((b, 1, 1, s), jnp.bool_)
    tm = mask4.shape[2]
    m = jnp.pad(mask4.astype(jnp.int8), ((0, 0), (0, 0), (0, tp - t if tm > 1 else 0), (0, sp - s)))
    ctx, weights = _fused(q, k, vv, m, x, config, return_weights)
    context = ctx[:, :, :t, :dvh].transpose(0, 2, 1, 3).reshape(b, t, dv_total)
    if weights is not None:
        weights = weights[:, :, :t, :s]
    return context.astype(dtype), weights


__all__ = [
    "BACKENDS",
    "KernelConfig",
    "default_backend",
    "fused_additive_attention",
    "make_config",
    "pallas_supported",
]
