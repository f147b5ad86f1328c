"""The fused Pallas additive attention against the naive form: values, weights, gradients.

On CPU the kernels run in Pallas' interpreter; on a GPU the same tests run the Triton kernels
(`benchmarks/gpu_check.sh` runs this file there with float32 matmuls at full precision).
Shapes are small and ragged on purpose (T, S and the head widths are not tile multiples), so
the padding is exercised too.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import AdditiveAttention, masks
from seq2seq_jax.layers import attention as attention_lib
from seq2seq_jax.layers import pallas_attention as pa
from seq2seq_jax.layers.attention import _additive_scores, masked_softmax

B, T, S, DQ, DK, A = 2, 5, 7, 6, 16, 16
# On CPU the interpreted kernels spend their time in XLA's compiler, not in running: compile
# the small test programs without LLVM's expensive passes (about 3x faster to compile).
_COMPILER_OPTIONS = (
    {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    if jax.default_backend() == "cpu"
    else None
)


def _jit_call(fn, *args):
    """fn(*args) through jit, compiled with `_COMPILER_OPTIONS`."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_COMPILER_OPTIONS)(*args)


def _inputs(mask_kind, dtype=jnp.float32, dv=DK):
    """query [B, T, Dq], keys [B, S, Dk], values [B, S, dv] and a mask with an empty row."""
    kq, kk, kv, km = jax.random.split(jax.random.PRNGKey(1), 4)
    query = jax.random.normal(kq, (B, T, DQ), dtype)
    keys = jax.random.normal(kk, (B, S, DK), dtype)
    values = jax.random.normal(kv, (B, S, dv), dtype)
    if mask_kind == "padding":  # [B, S]: example 1 has no source at all (all rows empty)
        mask = masks.padding_mask(lengths=jnp.array([4, 0]), max_length=S)
    elif mask_kind == "sequence":  # [B, T, S]: random, row (0, 2) fully masked
        mask = jax.random.bernoulli(km, 0.6, (B, T, S)).at[0, 2].set(False)
    else:  # [B, H=8, T, S]: per-head masks, (1, 3, 4) fully masked
        mask = jax.random.bernoulli(km, 0.6, (B, 8, T, S)).at[1, 3, 4].set(False)
    return query, keys, values, mask


def _outputs_and_grads(attn, variables, query, keys, values, mask):
    """(context, weights) and the gradients of a loss of both w.r.t. params, q, k, values."""

    def loss(*args):
        ctx, w = attn.apply(args[0], args[1], args[2], mask, args[3])
        return jnp.sum(jnp.sin(ctx.astype(jnp.float32))) + jnp.sum(w * jnp.cos(3.0 * w)), (ctx, w)

    fn = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    (_, outputs), grads = _jit_call(fn, variables, query, keys, values)
    return outputs, grads


@pytest.mark.parametrize(
    "num_heads,mask_kind,dtype",
    [(1, "padding", jnp.float32), (8, "sequence", jnp.float32), (8, "heads", jnp.bfloat16)],
)
def test_pallas_equals_naive_values_and_gradients(num_heads, mask_kind, dtype):
    query, keys, values, mask = _inputs(mask_kind, dtype)
    naive = AdditiveAttention(
        attention_dim=A,
        num_heads=num_heads,
        normalize=num_heads > 1,
        dtype=dtype,
        implementation="naive",
    )
    fused = naive.clone(implementation="pallas")
    variables = naive.init(jax.random.PRNGKey(0), query, keys, mask, values)
    (ctx_n, w_n), g_n = _outputs_and_grads(naive, variables, query, keys, values, mask)
    (ctx_f, w_f), g_f = _outputs_and_grads(fused, variables, query, keys, values, mask)
    assert ctx_f.dtype == ctx_n.dtype and w_f.dtype == jnp.float32
    assert ctx_f.shape == ctx_n.shape and w_f.shape == w_n.shape
    # The kernel takes tanh in float32; the naive form in the compute dtype.
    tol = 1e-5 if dtype == jnp.float32 else 3e-2
    chex.assert_trees_all_close(w_f, w_n, atol=tol)
    chex.assert_trees_all_close(ctx_f.astype(jnp.float32), ctx_n.astype(jnp.float32), atol=tol * 4)
    for got, want in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_n), strict=True):
        got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
        assert np.isfinite(got).all()
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, atol=(1e-5 if dtype == jnp.float32 else 6e-2) * scale)


def test_masked_keys_get_exactly_zero_weight_and_gradient():
    """Keys masked for every query: zero weight, zero key and value gradient; empty rows 0."""
    query, keys, values, _ = _inputs("padding")
    mask = masks.padding_mask(lengths=jnp.array([4, 0]), max_length=S)  # [B, S]
    attn = AdditiveAttention(attention_dim=A, num_heads=8, implementation="pallas")
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask, values)
    (ctx, w), (_, _, g_keys, g_values) = _outputs_and_grads(
        attn, variables, query, keys, values, mask
    )
    w, ctx = np.asarray(w), np.asarray(ctx)
    assert (w[0, :, :, 4:] == 0).all() and (w[1] == 0).all()
    assert (ctx[1] == 0).all() and np.isfinite(ctx).all()
    np.testing.assert_allclose(w[0].sum(-1), 1.0, atol=1e-5)
    g_keys, g_values = np.asarray(g_keys), np.asarray(g_values)
    assert np.isfinite(g_keys).all() and np.isfinite(g_values).all()
    assert (g_keys[0, 4:] == 0).all() and (g_keys[1] == 0).all()
    assert (g_values[0, 4:] == 0).all() and (g_values[1] == 0).all()
    assert np.abs(g_keys[0, :4]).max() > 0


def _kernel_inputs(h=2, d=24, dv=40, t=19, s=37):
    """qp [B, T, H, d], kp [B, S, H, d], v [H, d], values [B, S, dv], mask4 with empty rows."""
    k = jax.random.split(jax.random.PRNGKey(2), 5)
    qp = jax.random.normal(k[0], (B, t, h, d))
    kp = jax.random.normal(k[1], (B, s, h, d))
    v = jax.random.normal(k[2], (h, d))
    values = jax.random.normal(k[3], (B, s, dv))
    mask4 = jax.random.bernoulli(k[4], 0.5, (B, 1, t, s)).at[0, :, 3].set(False)
    return qp, kp, v, mask4, values


def _reference(qp, kp, v, mask4, values):
    h = v.shape[0]
    w = masked_softmax(_additive_scores(qp, kp, v), mask4)
    b, s, dv = values.shape
    ctx = jnp.einsum(
        "bhts,bshd->bthd", w, values.reshape(b, s, h, dv // h), precision=jax.lax.Precision.HIGHEST
    )
    return ctx.reshape(b, -1, dv), w


def test_kernel_several_tiles_with_and_without_weights():
    """Two T tiles, three S tiles, two d chunks; the weights-free path has equal gradients."""
    qp, kp, v, mask4, values = _kernel_inputs()
    cfg = pa.make_config(block_t=16, block_s=16, block_d=16)

    def run(fn):
        def loss(*args):
            ctx, w = fn(*args)
            return jnp.sum(jnp.sin(ctx)), (ctx, w)

        value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
        (_, out), grads = _jit_call(value_and_grad, qp, kp, v, values)
        return out, grads

    (ctx_r, w_r), g_r = run(lambda q, k, vv, x: _reference(q, k, vv, mask4, x))
    for return_weights in (True, False):
        (ctx, w), g = run(
            lambda q, k, vv, x, rw=return_weights: pa.fused_additive_attention(
                q, k, vv, mask4, x, config=cfg, return_weights=rw
            )
        )
        chex.assert_trees_all_close(ctx, ctx_r, atol=1e-5)
        if return_weights:
            chex.assert_trees_all_close(w, w_r, atol=1e-5)
        else:
            assert w is None
        chex.assert_trees_all_close(g, g_r, atol=2e-5)


def test_triton_lowering_of_forward_and_backward():
    """The Triton path lowers (Pallas -> Triton IR) for CUDA on any machine, fwd + bwd."""
    pytest.importorskip("jax._src.lib.triton")
    cfg = pa.make_config("triton")
    qp, kp, v, mask4, values = (
        jax.ShapeDtypeStruct(x.shape, x.dtype)
        for x in _kernel_inputs(h=8, d=64, dv=512, t=40, s=50)
    )

    def loss(q, k, vv, m, x):
        ctx, w = pa.fused_additive_attention(q, k, vv, m, x, config=cfg)
        return jnp.sum(ctx * ctx) + jnp.sum(w * w)

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 4)))
    try:
        text = fn.trace(qp, kp, v, mask4, values).lower(lowering_platforms=("cuda",)).as_text()
    except Exception as e:
        # jaxlib > 0.10.2 compiles the Triton IR to PTX while lowering, which needs CUDA.
        if jax.default_backend() == "gpu" or jax.__version_info__ <= (0, 10, 2):
            raise
        pytest.skip(f"this jaxlib compiles Triton kernels while lowering: {e}")
    # Forward, dq and dk kernels; nothing else is a Triton call.
    calls = text.count("__gpu$xla.gpu.triton") + text.count("triton_kernel_call")
    assert calls == 3, calls


def test_choice_and_errors():
    attn = AdditiveAttention(attention_dim=16, num_heads=2)
    expected_auto = attention_lib.PALLAS_AUTO_VERIFIED and jax.default_backend() == "gpu"
    assert attn._use_pallas(steps=5, value_width=16) is expected_auto
    assert not attn._use_pallas(steps=1, value_width=16)  # one step: the one-step path
    assert not attn.clone(implementation="chunked")._use_pallas(steps=5, value_width=16)
    assert attn.clone(implementation="pallas")._use_pallas(steps=5, value_width=16)
    with pytest.raises(ValueError, match="value width per head 1024"):
        attn.clone(implementation="pallas")._use_pallas(steps=5, value_width=2048)
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        attn.clone(implementation="fast")._use_pallas(steps=5, value_width=16)
    with pytest.raises(ValueError, match="block_s=24 is not a power of two"):
        pa.make_config(block_s=24)
    with pytest.raises(ValueError, match="block_t=8"):
        pa.make_config(block_t=8)
    qp, kp, v, mask4, values = _kernel_inputs()
    with pytest.raises(ValueError, match=r"kp \(2, 36, 2, 24\)"):
        pa.fused_additive_attention(qp, kp[:, 1:], v, mask4, values)


@pytest.mark.parametrize("backend", ["gpu", "cpu", "tpu"])
def test_auto_picks_pallas_only_on_gpu_and_only_once_verified(monkeypatch, backend):
    """Until a GPU run validates the kernels "pallas" is opt-in; then "auto" picks it on GPU."""
    monkeypatch.setattr(attention_lib.jax, "default_backend", lambda: backend)
    attn = AdditiveAttention(attention_dim=16, num_heads=2)
    fused = attn.clone(implementation="pallas")
    monkeypatch.setattr(attention_lib, "PALLAS_AUTO_VERIFIED", False)
    assert not attn._use_pallas(steps=5, value_width=16)
    assert fused._use_pallas(steps=5, value_width=16)  # opt-in works unverified
    monkeypatch.setattr(attention_lib, "PALLAS_AUTO_VERIFIED", True)
    assert attn._use_pallas(steps=5, value_width=16) is (backend == "gpu")
    assert not attn._use_pallas(steps=1, value_width=16)  # one step: the one-step path
    assert not attn._use_pallas(steps=5, value_width=2048)  # 1024 per head: falls back
    assert not attn.clone(implementation="chunked")._use_pallas(steps=5, value_width=16)
