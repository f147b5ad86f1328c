"""AdditiveAttention / DotProductAttention against an independent NumPy implementation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import AdditiveAttention, DotProductAttention, masked_softmax

B, T, S, DQ, DK, A = 3, 4, 6, 5, 8, 8


def _np_softmax_masked(scores, mask):
    """Reference: softmax over allowed entries, zero elsewhere, zero for empty rows."""
    out = np.zeros_like(scores)
    for idx in np.ndindex(scores.shape[:-1]):
        m = mask[idx]
        if m.any():
            x = scores[idx][m]
            e = np.exp(x - x.max())
            out[idx][m] = e / e.sum()
    return out


def _np_additive(params, query, keys, values, mask, num_heads, normalize):
    """NumPy formula: score_h = v_h . tanh(W_h k + U_h q + b_h), per-head softmax."""
    p = jax.tree.map(np.asarray, params)
    q = query[:, None] if query.ndim == 2 else query  # [B, T, Dq]
    uq = q @ p["query_proj"]["kernel"]
    if "bias" in p["query_proj"]:
        uq = uq + p["query_proj"]["bias"]
    if normalize:
        uq = uq + p["b"]
    wk = keys @ p["key_proj"]["kernel"]  # [B, S, A]
    h, d = num_heads, A // num_heads
    v = p["v"]
    if normalize:
        v = p["g"][:, None] * v / np.linalg.norm(v, axis=-1, keepdims=True)
    b, t = q.shape[:2]
    s = keys.shape[1]
    scores = np.zeros((b, h, t, s), np.float64)
    for hh in range(h):
        sl = slice(hh * d, (hh + 1) * d)
        pre = np.tanh(wk[:, None, :, sl] + uq[:, :, None, sl])  # [B, T, S, d]
        scores[:, hh] = pre @ v[hh]
    m = _np_mask(mask, b, h, t, s)
    w = _np_softmax_masked(scores, m)
    dv = values.shape[-1] // h
    ctx = np.concatenate(
        [
            np.einsum("bts,bsd->btd", w[:, hh], values[..., hh * dv : (hh + 1) * dv])
            for hh in range(h)
        ],
        axis=-1,
    )
    if query.ndim == 2:
        ctx, w = ctx[:, 0], w[:, :, 0]
    if h == 1:
        w = w[:, 0]
    return ctx, w


def _np_mask(mask, b, h, t, s):
    if mask is None:
        return np.ones((b, h, t, s), bool)
    m = np.asarray(mask)
    if m.ndim == 2:
        m = m[:, None, None, :]
    elif m.ndim == 3:
        m = m[:, None]
    return np.broadcast_to(m, (b, h, t, s))


def _inputs(seed, single_step, mask_kind="keys", dv=DK):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(B, DQ) if single_step else (B, T, DQ)).astype(np.float32)
    keys = rng.normal(size=(B, S, DK)).astype(np.float32)
    values = rng.normal(size=(B, S, dv)).astype(np.float32)
    if mask_kind == "keys":
        mask = rng.random((B, S)) < 0.7
        mask[0] = False  # one fully masked row
    else:
        mask = rng.random((B, T, S)) < 0.6
        mask[1, 2] = False
    return query, keys, values, mask


@pytest.mark.parametrize("single_step", [True, False])
@pytest.mark.parametrize("num_heads", [1, 2])
@pytest.mark.parametrize("normalize", [False, True])
def test_additive_matches_numpy(single_step, num_heads, normalize):
    query, keys, _, mask = _inputs(0, single_step)
    attn = AdditiveAttention(attention_dim=A, num_heads=num_heads, normalize=normalize)
    params = attn.init(jax.random.PRNGKey(1), query, keys, mask)["params"]
    if normalize:  # move g away from its init so the gain is really tested
        params = {**params, "g": params["g"] * 1.7, "b": params["b"] + 0.3}
    ctx, w = attn.apply({"params": params}, query, keys, mask)
    ref_ctx, ref_w = _np_additive(params, query, keys, keys, mask, num_heads, normalize)
    np.testing.assert_allclose(w, ref_w, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(ctx, ref_ctx, atol=1e-5, rtol=1e-5)
    assert w.dtype == jnp.float32


def test_additive_sequence_mask_and_separate_values():
    query, keys, values, mask = _inputs(1, False, mask_kind="sequence", dv=6)
    attn = AdditiveAttention(attention_dim=A, num_heads=2)
    params = attn.init(jax.random.PRNGKey(2), query, keys, mask, values)["params"]
    ctx, w = attn.apply({"params": params}, query, keys, mask, values)
    ref_ctx, ref_w = _np_additive(params, query, keys, values, mask, 2, False)
    assert ctx.shape == (B, T, 6) and w.shape == (B, 2, T, S)
    np.testing.assert_allclose(w, ref_w, atol=1e-5)
    np.testing.assert_allclose(ctx, ref_ctx, atol=1e-5)
    assert np.all(np.asarray(ctx[1, 2]) == 0.0)


def test_precomputed_key_projection_equals_inline():
    query, keys, _, mask = _inputs(2, True)
    attn = AdditiveAttention(attention_dim=A)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask)
    pk = attn.apply(variables, keys, method=AdditiveAttention.project_keys)
    assert pk.shape == (B, S, A)
    a = attn.apply(variables, query, keys, mask)
    b = attn.apply(variables, query, keys, mask, projected_keys=pk)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("cls", [AdditiveAttention, DotProductAttention])
def test_padding_invariance(cls):
    query, keys, values, mask = _inputs(3, False)
    attn = cls(attention_dim=A, num_heads=2)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask)
    ctx, w = attn.apply(variables, query, keys, mask)
    extra = 3
    rng = np.random.default_rng(9)
    keys2 = np.concatenate([keys, rng.normal(size=(B, extra, DK)).astype(np.float32)], 1)
    mask2 = np.concatenate([mask, np.zeros((B, extra), bool)], 1)
    ctx2, w2 = attn.apply(variables, query, keys2, mask2)
    np.testing.assert_allclose(ctx2, ctx, atol=1e-6)
    np.testing.assert_allclose(w2[..., :S], w, atol=1e-6)
    assert np.all(np.asarray(w2[..., S:]) == 0.0)


@pytest.mark.parametrize("cls", [AdditiveAttention, DotProductAttention])
def test_masked_keys_get_zero_weight_and_zero_gradient(cls):
    query, keys, values, mask = _inputs(4, False, dv=DK)
    attn = cls(attention_dim=A, num_heads=1)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask, values)

    def loss(k, v):
        ctx, w = attn.apply(variables, query, k, mask, v)
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(w**2)

    gk, gv = jax.grad(loss, argnums=(0, 1))(jnp.asarray(keys), jnp.asarray(values))
    _, w = attn.apply(variables, query, keys, mask, values)
    masked = ~mask  # [B, S]
    assert np.all(np.asarray(w)[np.broadcast_to(masked[:, None], w.shape)] == 0.0)
    assert np.all(np.asarray(gk)[masked] == 0.0)
    assert np.all(np.asarray(gv)[masked] == 0.0)
    assert np.all(np.isfinite(gk)) and np.all(np.isfinite(gv))
    # Real keys do receive gradient (the test could fail if everything were zero).
    assert np.abs(np.asarray(gk)[mask]).sum() > 0


@pytest.mark.parametrize("cls", [AdditiveAttention, DotProductAttention])
def test_fully_masked_row_zero_context_finite_grads(cls):
    query, keys, _, _ = _inputs(5, True)
    mask = np.zeros((B, S), bool)
    mask[1, :2] = True
    attn = cls(attention_dim=A)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask)
    ctx, w = attn.apply(variables, query, keys, mask)
    assert np.all(np.asarray(ctx[0]) == 0.0) and np.all(np.asarray(w[0]) == 0.0)
    assert not np.any(np.isnan(ctx))
    grads = jax.grad(lambda p, q: jnp.sum(attn.apply(p, q, keys, mask)[0] ** 2), argnums=(0, 1))(
        variables, query
    )
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grads))


def test_dot_product_matches_numpy():
    query, keys, values, mask = _inputs(6, False, dv=DK)
    attn = DotProductAttention(attention_dim=A, num_heads=2)
    params = attn.init(jax.random.PRNGKey(3), query, keys, mask, values)["params"]
    ctx, w = attn.apply({"params": params}, query, keys, mask, values)
    p = jax.tree.map(np.asarray, params)
    q = (query @ p["query_proj"]["kernel"]).reshape(B, T, 2, A // 2)
    k = (keys @ p["key_proj"]["kernel"]).reshape(B, S, 2, A // 2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(A // 2)
    ref_w = _np_softmax_masked(scores, _np_mask(mask, B, 2, T, S))
    ref_ctx = np.concatenate([ref_w[:, h] @ values[..., h * 4 : (h + 1) * 4] for h in range(2)], -1)
    np.testing.assert_allclose(w, ref_w, atol=1e-5)
    np.testing.assert_allclose(ctx, ref_ctx, atol=1e-5)


@pytest.mark.parametrize(
    "query_shape,mask_shape",
    [
        ((B, DQ), (B, S + 1)),  # wrong source length
        ((B, DQ), (B + 1, S)),  # wrong batch
        ((B, T, DQ), (B, T + 1, S)),  # wrong target length
        ((B, DQ), (B, T, 2, S)),  # wrong rank for a one-step query
        ((B, T, DQ), (S,)),
    ],  # wrong rank
)
def test_bad_mask_shapes_raise_with_shapes_in_message(query_shape, mask_shape):
    attn = AdditiveAttention(attention_dim=A)
    query = jnp.ones(query_shape)
    keys = jnp.ones((B, S, DK))
    good = jnp.ones((B, S), bool)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, good)
    with pytest.raises(AssertionError) as err:
        attn.apply(variables, query, keys, jnp.ones(mask_shape, bool))
    msg = str(err.value)
    assert str(tuple(mask_shape)) in msg and str(tuple(keys.shape)) in msg


def test_non_bool_mask_raises():
    attn = AdditiveAttention(attention_dim=A)
    query, keys = jnp.ones((B, DQ)), jnp.ones((B, S, DK))
    variables = attn.init(jax.random.PRNGKey(0), query, keys)
    with pytest.raises(AssertionError):
        attn.apply(variables, query, keys, jnp.ones((B, S), jnp.int32))


def test_indivisible_heads_raise():
    attn = AdditiveAttention(attention_dim=7, num_heads=2)
    with pytest.raises(ValueError, match="not divisible"):
        attn.init(jax.random.PRNGKey(0), jnp.ones((B, DQ)), jnp.ones((B, S, DK)))


def test_jit_vmap_grad():
    query, keys, _, mask = _inputs(7, True)
    attn = AdditiveAttention(attention_dim=A, num_heads=2)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask)
    eager = attn.apply(variables, query, keys, mask)
    jitted = jax.jit(attn.apply)(variables, query, keys, mask)
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)
    # vmap over an extra leading axis of independent batches == the plain batched call.
    stacked = [np.stack([x, x[::-1]]) for x in (query, keys, mask)]
    ctx_v, w_v = jax.vmap(lambda q, k, m: attn.apply(variables, q, k, m))(*stacked)
    np.testing.assert_allclose(ctx_v[0], eager[0], atol=1e-6)
    np.testing.assert_allclose(ctx_v[1], eager[0][::-1], atol=1e-6)
    g = jax.grad(lambda p: jnp.sum(attn.apply(p, query, keys, mask)[0]))(variables)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    assert np.abs(np.asarray(g["params"]["v"])).sum() > 0


@pytest.mark.parametrize("cls", [AdditiveAttention, DotProductAttention])
def test_bfloat16_compute_close_to_float32(cls):
    query, keys, _, mask = _inputs(8, False)
    mask[0, 0] = True
    a32 = cls(attention_dim=A, num_heads=2)
    a16 = cls(attention_dim=A, num_heads=2, dtype=jnp.bfloat16)
    variables = a32.init(jax.random.PRNGKey(0), query, keys, mask)
    c32, w32 = a32.apply(variables, query, keys, mask)
    c16, w16 = a16.apply(variables, query, keys, mask)
    assert c16.dtype == jnp.bfloat16 and w16.dtype == jnp.float32
    assert jax.tree.map(lambda x: x.dtype, variables["params"]) == jax.tree.map(
        lambda x: jnp.dtype(jnp.float32), variables["params"]
    )
    np.testing.assert_allclose(np.asarray(w16), w32, atol=3e-2)
    np.testing.assert_allclose(np.asarray(c16, np.float32), c32, atol=6e-2)


@pytest.mark.parametrize("cls", [AdditiveAttention, DotProductAttention])
def test_one_step_query_equals_query_inside_sequence(cls):
    query, keys, _, mask = _inputs(9, False)
    attn = cls(attention_dim=A, num_heads=2)
    variables = attn.init(jax.random.PRNGKey(0), query, keys, mask)
    ctx_seq, w_seq = attn.apply(variables, query, keys, mask)
    for t in range(T):
        ctx_t, w_t = attn.apply(variables, query[:, t], keys, mask)
        np.testing.assert_allclose(ctx_t, ctx_seq[:, t], atol=1e-6)
        np.testing.assert_allclose(w_t, w_seq[:, :, t], atol=1e-6)


def test_masked_softmax_matches_numpy_and_has_no_nan():
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(4, 7)) * 50).astype(np.float32)  # large magnitudes
    mask = rng.random((4, 7)) < 0.5
    mask[2] = False
    w = masked_softmax(jnp.asarray(scores), jnp.asarray(mask))
    np.testing.assert_allclose(w, _np_softmax_masked(scores.astype(np.float64), mask), atol=1e-6)
    g = jax.grad(lambda s: jnp.sum(masked_softmax(s, mask) * jnp.arange(7.0)))(scores)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[~mask] == 0.0)


@pytest.mark.parametrize("mask_kind", ["keys", "sequence"])
@pytest.mark.parametrize("num_heads,normalize", [(1, False), (2, True)])
def test_chunked_equals_naive_outputs_and_gradients(mask_kind, num_heads, normalize):
    query, keys, values, mask = _inputs(10, False, mask_kind=mask_kind, dv=DK)
    naive = AdditiveAttention(
        attention_dim=A, num_heads=num_heads, normalize=normalize, implementation="naive"
    )
    chunked = naive.clone(implementation="chunked", chunk_size=3)  # T=4: a ragged last chunk
    variables = naive.init(jax.random.PRNGKey(0), query, keys, mask, values)

    def loss(attn, p, q, k, v):
        ctx, w = attn.apply(p, q, k, mask, v)
        return jnp.sum(jnp.sin(ctx)) + jnp.sum(jnp.cos(w))

    out_n = naive.apply(variables, query, keys, mask, values)
    out_c = chunked.apply(variables, query, keys, mask, values)
    chex.assert_trees_all_close(out_c, out_n, atol=1e-5)
    g_n = jax.grad(lambda *a: loss(naive, *a), argnums=(0, 1, 2, 3))(variables, query, keys, values)
    g_c = jax.grad(lambda *a: loss(chunked, *a), argnums=(0, 1, 2, 3))(
        variables, query, keys, values
    )
    chex.assert_trees_all_close(g_c, g_n, atol=1e-5)


def test_auto_implementation_chunks_only_large_parallel_queries():
    attn = AdditiveAttention(attention_dim=4)
    assert attn._use_chunks(1, 8, 8) == 0  # small: naive
    big = attn._use_chunks(128, 512, 512)  # 128*512*512*4 elements > 2^26: chunked
    assert 1 <= big < 512
    with pytest.raises(ValueError, match="unknown implementation"):
        AdditiveAttention(attention_dim=4, implementation="fast")._use_chunks(64, 512, 512)
