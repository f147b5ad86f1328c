"""Transformer blocks: positions and self-attention against NumPy, and the cached step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.layers import masks
from seq2seq_jax.layers.transformer import SelfAttention, sinusoidal_positions


def test_sinusoidal_positions_match_numpy():
    pos = np.array([[0, 1, 2, 0, 1]])
    got = np.asarray(sinusoidal_positions(jnp.asarray(pos), 8))
    inv = 1e4 ** (-np.arange(4) / 3)
    ang = pos[..., None] * inv
    np.testing.assert_allclose(got, np.concatenate([np.sin(ang), np.cos(ang)], -1), atol=1e-5)
    with pytest.raises(ValueError, match="even width"):
        sinusoidal_positions(jnp.asarray(pos), 7)


def _np_self_attention(p, x, mask, heads):
    """Reference multi-head attention with explicit loops over heads."""
    b, t, d = x.shape
    dh = d // heads
    q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"]) + p["query"]["bias"]
    k = np.einsum("btd,dhk->bthk", x, p["key"]["kernel"]) + p["key"]["bias"]
    v = np.einsum("btd,dhk->bthk", x, p["value"]["kernel"]) + p["value"]["bias"]
    out = np.zeros((b, t, heads, dh))
    for bi in range(b):
        for h in range(heads):
            s = q[bi, :, h] @ k[bi, :, h].T / math.sqrt(dh)
            for i in range(t):
                allowed = mask[bi, i]
                if not allowed.any():
                    continue
                e = np.exp(s[i][allowed] - s[i][allowed].max())
                w = np.zeros(t)
                w[allowed] = e / e.sum()
                out[bi, i, h] = w @ v[bi, :, h]
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def test_self_attention_matches_numpy_with_packed_causal_mask():
    seg = jnp.array([[1, 1, 2, 2, 2, 0]])
    mask = masks.segment_mask(seg, seg) & masks.causal_mask(6)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 8))
    attn = SelfAttention(num_heads=2)
    variables = jax.jit(attn.init)(jax.random.PRNGKey(1), x, mask)
    out, cache = jax.jit(attn.apply)(variables, x, mask)
    assert cache is None
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    want = _np_self_attention(p, np.asarray(x, np.float64), np.asarray(mask), 2)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5)


def test_cached_steps_equal_causal_parallel_attention():
    n, t, d, heads = 2, 5, 8, 2
    x = jax.random.normal(jax.random.PRNGKey(0), (n, t, d))
    attn = SelfAttention(num_heads=heads)
    causal = jnp.broadcast_to(masks.causal_mask(t), (n, t, t))
    variables = jax.jit(attn.init)(jax.random.PRNGKey(1), x, causal)
    full, _ = jax.jit(attn.apply)(variables, x, causal)
    zeros = jnp.zeros((n, 7, heads, d // heads))
    cache = {"key": zeros, "value": zeros}
    step = jax.jit(lambda v, x_t, c, i: attn.apply(v, x_t, None, cache=c, index=i))
    for i in range(t):
        index = jnp.full((n,), i, jnp.int32)
        y, cache = step(variables, x[:, i : i + 1], cache, index)
        np.testing.assert_allclose(np.asarray(y[:, 0]), np.asarray(full[:, i]), atol=1e-5)
    with pytest.raises(AssertionError):  # a cached step takes one position only
        jax.eval_shape(step, variables, x[:, :2], cache, jnp.zeros((n,), jnp.int32))
