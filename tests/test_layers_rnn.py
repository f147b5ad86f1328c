"""Recurrent layers against a NumPy reference (PyTorch's GRU / LSTM equations) and torch."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.layers.rnn import RecurrentCell, RNNEncoder, reverse_padded


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_cell(cell_type, p, x, carry):
    """One step of torch.nn.GRUCell / LSTMCell with weights in our [in, G*H] layout."""
    xi = x @ p["input"]["kernel"] + p["input"]["bias"]
    if cell_type == "gru":
        h = carry
        hh = h @ p["hidden"]["kernel"] + p["hidden"]["bias"]
        xr, xz, xn = np.split(xi, 3, -1)
        hr, hz, hn = np.split(hh, 3, -1)
        r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        return h, h
    c, h = carry
    g = xi + h @ p["hidden"]["kernel"] + p["hidden"]["bias"]
    i, f, gg, o = np.split(g, 4, -1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
    h = _sigmoid(o) * np.tanh(c)
    return (c, h), h


def _np_direction(cell_type, p, seq, hidden):
    """Runs one direction over an unpadded sequence [L, D]; returns outputs [L, H], last h."""
    h = np.zeros((hidden,))
    carry = (h, h) if cell_type == "lstm" else h
    outs = []
    for x in seq:
        carry, out = _np_cell(cell_type, p, x, carry)
        outs.append(out)
    return np.stack(outs), out


def _np_encoder(cell_type, params, x, lengths, hidden, layers):
    """Reference bidirectional encoder: every sequence run on its own, unpadded."""
    out = np.zeros(x.shape[:2] + (2 * hidden,))
    for b, n in enumerate(lengths):
        seq = x[b, :n]
        for layer in range(layers):
            fwd, _ = _np_direction(cell_type, params[f"layer_{layer}_fwd"]["cell"], seq, hidden)
            bwd, _ = _np_direction(
                cell_type, params[f"layer_{layer}_bwd"]["cell"], seq[::-1], hidden
            )
            seq = np.concatenate([fwd, bwd[::-1]], -1)
        out[b, :n] = seq
    return out


def _random_variables(module, *args, seed=0):
    """Random parameters of `module`'s shapes (NumPy RNG), without compiling `init`."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.5 * rng.normal(size=x.shape), x.dtype), shapes)


def test_reverse_padded_matches_python():
    x = np.arange(2 * 5).reshape(2, 5)
    got = np.asarray(reverse_padded(jnp.asarray(x), jnp.array([3, 5])))
    np.testing.assert_array_equal(got, [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])
    # its own inverse
    back = reverse_padded(jnp.asarray(got), jnp.array([3, 5]))
    np.testing.assert_array_equal(np.asarray(back), x)


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_padded_bidirectional_encoder_equals_each_sequence_unpadded(cell_type):
    hidden, layers = 6, 2
    enc = RNNEncoder(cell_type, hidden, layers, bidirectional=True)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 5))
    lengths = np.array([7, 4, 1])
    variables = _random_variables(enc, x, jnp.asarray(lengths))
    out, finals = jax.jit(enc.apply)(variables, x, jnp.asarray(lengths))
    params = jax.tree.map(np.asarray, variables["params"])
    want = _np_encoder(cell_type, params, np.asarray(x, np.float64), lengths, hidden, layers)
    np.testing.assert_allclose(np.asarray(out), want, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(out)[1, 4:], 0.0)  # zero on padding
    # final states: forward after the last real token, backward after the first
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(np.asarray(finals[0][b]), want[b, n - 1, :hidden], atol=2e-5)
        np.testing.assert_allclose(np.asarray(finals[1][b]), want[b, 0, hidden:], atol=2e-5)


def test_cell_parameter_layout_matches_torch_convention():
    cell = RecurrentCell("gru", 4)
    variables = jax.eval_shape(
        cell.init, jax.random.PRNGKey(0), jnp.zeros((1, 4)), jnp.zeros((1, 12))
    )
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes == {"hidden": {"bias": (12,), "kernel": (4, 12)}}
    shapes = jax.eval_shape(
        lambda: cell.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)), method=cell.project_inputs)
    )
    want = {"input": {"bias": (12,), "kernel": (5, 12)}}
    assert jax.tree.map(jnp.shape, shapes["params"]) == want
    with pytest.raises(ValueError, match="cell_type='rnn'"):
        jax.eval_shape(
            RecurrentCell("rnn", 4).init,
            jax.random.PRNGKey(0),
            jnp.zeros((1, 4)),
            jnp.zeros((1, 12)),
        )


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_encoder_matches_torch_gru_with_packed_sequences():
    import torch

    hidden, emb = 5, 4
    enc = RNNEncoder("gru", hidden, 1, bidirectional=True)
    x = np.random.default_rng(0).normal(size=(3, 6, emb)).astype(np.float32)
    lengths = np.array([6, 2, 4])
    variables = jax.jit(enc.init)(jax.random.PRNGKey(2), jnp.asarray(x), jnp.asarray(lengths))
    out, _ = jax.jit(enc.apply)(variables, jnp.asarray(x), jnp.asarray(lengths))
    gru = torch.nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
    p = variables["params"]
    with torch.no_grad():
        for suffix, name in (("", "layer_0_fwd"), ("_reverse", "layer_0_bwd")):
            cell = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), p[name]["cell"])
            getattr(gru, f"weight_ih_l0{suffix}").copy_(cell["input"]["kernel"].T)
            getattr(gru, f"bias_ih_l0{suffix}").copy_(cell["input"]["bias"])
            getattr(gru, f"weight_hh_l0{suffix}").copy_(cell["hidden"]["kernel"].T)
            getattr(gru, f"bias_hh_l0{suffix}").copy_(cell["hidden"]["bias"])
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            torch.tensor(x), torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
        ref, _ = gru(packed)
        ref, _ = torch.nn.utils.rnn.pad_packed_sequence(ref, batch_first=True, total_length=6)
    np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=1e-5)
    n_torch = sum(t.numel() for t in gru.parameters())
    n_jax = sum(a.size for a in jax.tree.leaves(variables["params"]))
    assert n_jax == n_torch
