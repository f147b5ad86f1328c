"""RNNsearch: step-by-step == teacher forcing, padding invariance, no leak, boundary checks,
the PyTorch peer (same logits from the same weights; same parameter count)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.models import (
    ModelConfig,
    RNNSearch,
    count_params,
    init_decode_cache,
    make_tokens_to_logits,
    rnnsearch_reference_config,
    shift_right,
)

PEER_DIR = Path(__file__).resolve().parents[2] / "shared" / "bench"
HAS_TORCH = importlib.util.find_spec("torch") is not None

INPUTS = np.array([[5, 6, 7, 2, 0, 0], [3, 4, 5, 6, 7, 2], [9, 2, 0, 0, 0, 0]], np.int32)
TARGETS = np.array([[8, 9, 2, 0, 0], [4, 5, 6, 7, 2], [3, 3, 3, 2, 0]], np.int32)

VARIANTS = {
    "gru_bahdanau": dict(),
    "lstm_input_feeding_stacked_maxout": dict(
        cell_type="lstm", input_feeding=True, encoder_layers=2, decoder_layers=2, maxout_size=4
    ),
    "tied_shared_dot_2heads_final_bridge": dict(
        tie_output_embeddings=True,
        share_embeddings=True,
        attention_type="dot",
        num_heads=2,
        bridge="final",
        bidirectional=False,
        encoder_hidden_size=16,
    ),
}


def _config(**overrides) -> ModelConfig:
    base = dict(
        source_vocab_size=20,
        target_vocab_size=20,
        bos_id=1,
        eos_id=2,
        emb_dim=8,
        encoder_hidden_size=8,
        decoder_hidden_size=16,
        dropout_rate=0.0,
    )
    base.update(overrides)
    return ModelConfig(**base).validate()


def _random_variables(model: nn.Module, seed: int = 0):
    """Random parameters of the model's shapes (NumPy RNG), without compiling `init`.

    The properties tested here hold for any parameters; skipping `init` (whose compiled form
    holds every initializer and a second trace of the decoder scan) keeps the tests fast.
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), INPUTS, TARGETS)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.4 * rng.normal(size=x.shape), x.dtype), shapes)


@functools.cache
def _init(config: ModelConfig):
    """(model, variables, jitted teacher-forced forward) per config, built once per session."""
    model = RNNSearch(config)
    return model, _random_variables(model), jax.jit(model.apply)


def _teacher_forced_and_cache(model, variables):
    """One compiled call: __call__ logits, decode logits + attention, and the decode cache."""

    def run(v):
        encoded = model.apply(v, INPUTS, method=model.encode)
        logits, attention = model.apply(
            v, encoded, INPUTS, TARGETS, return_attention=True, method=model.decode
        )
        cache = model.apply(v, encoded, INPUTS, method=model.init_decode_cache)
        return model.apply(v, INPUTS, TARGETS), logits, attention, cache

    return jax.jit(run)(variables)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_teacher_forced_logits_equal_step_by_step(variant):
    model, variables, _ = _init(_config(**VARIANTS[variant]))
    call_logits, logits, attention, cache = _teacher_forced_and_cache(model, variables)
    np.testing.assert_allclose(logits, call_logits, atol=1e-6)
    n = INPUTS.shape[0]
    assert all(leaf.shape[0] == n for leaf in jax.tree.leaves(cache))
    step = jax.jit(make_tokens_to_logits(model, variables))
    decoder_inputs = shift_right(TARGETS, bos_id=1)
    for t in range(TARGETS.shape[1]):
        step_logits, step_attention, cache = step(decoder_inputs[:, t], cache)
        assert step_logits.dtype == jnp.float32 and step_attention.shape == (n, INPUTS.shape[1])
        np.testing.assert_allclose(step_logits, logits[:, t], atol=2e-5)
        np.testing.assert_allclose(step_attention, attention[:, t], atol=2e-6)
    np.testing.assert_array_equal(cache["index"], TARGETS.shape[1])


def test_cache_tiles_and_gathers_on_axis_0_like_beam_search():
    model, variables, _ = _init(_config())
    cache = jax.jit(functools.partial(init_decode_cache, model))(variables, jnp.asarray(INPUTS))
    step = jax.jit(make_tokens_to_logits(model, variables))
    ids = jnp.array([1, 1, 1], jnp.int32)
    plain_logits, _, plain_cache = step(ids, cache)
    # tile to K=2 beams per example (jnp.repeat on axis 0), then swap the beams with a gather
    tiled = jax.tree.map(lambda x: jnp.repeat(x, 2, axis=0), cache)
    order = jnp.array([1, 0, 3, 2, 5, 4])
    tiled = jax.tree.map(lambda x: x[order], tiled)
    tiled_logits, _, tiled_cache = step(jnp.repeat(ids, 2), tiled)
    np.testing.assert_allclose(tiled_logits[::2], plain_logits, atol=1e-6)
    np.testing.assert_allclose(tiled_cache["state"][0][1::2], plain_cache["state"][0], atol=1e-6)


@pytest.mark.parametrize("bridge", ["mean", "final", "backward", "zero"])
def test_initial_decoder_state_is_the_bridge_of_the_annotations(bridge):
    model, variables, _ = _init(_config(bridge=bridge))
    cache = jax.jit(functools.partial(init_decode_cache, model))(variables, jnp.asarray(INPUTS))
    annotations = np.asarray(cache["annotations"])  # [B, S, 2H], zero on padding
    lengths = (INPUTS != 0).sum(-1)
    hidden = model.config.encoder_hidden_size
    rows = np.arange(len(INPUTS))
    summary = {
        "mean": annotations.sum(1) / lengths[:, None],
        "final": np.concatenate(
            [annotations[rows, lengths - 1, :hidden], annotations[:, 0, hidden:]], -1
        ),
        "backward": annotations[:, 0, hidden:],
    }
    if bridge == "zero":
        np.testing.assert_array_equal(cache["state"][0], 0.0)
        return
    p = variables["params"]["bridge_0"]
    want = np.tanh(summary[bridge] @ np.asarray(p["kernel"]) + np.asarray(p["bias"]))
    np.testing.assert_allclose(cache["state"][0], want, atol=1e-5)


def test_attention_is_zero_on_source_padding_and_sums_to_one():
    model, variables, _ = _init(_config())

    def run(v):
        encoded = model.apply(v, INPUTS, method=model.encode)
        _, attention = model.apply(
            v, encoded, INPUTS, TARGETS, return_attention=True, method=model.decode
        )
        return encoded, attention

    encoded, attention = jax.jit(run)(variables)
    np.testing.assert_array_equal(np.asarray(attention)[INPUTS[:, None, :].repeat(5, 1) == 0], 0)
    np.testing.assert_allclose(np.asarray(attention).sum(-1), 1.0, atol=1e-5)
    # encoder annotations are zero on padding
    np.testing.assert_array_equal(np.asarray(encoded["annotations"])[INPUTS == 0], 0.0)


def test_extra_source_and_target_padding_change_nothing():
    _, variables, forward = _init(_config())
    logits = forward(variables, INPUTS, TARGETS)
    more_inputs = np.pad(INPUTS, ((0, 0), (0, 3)))
    more_targets = np.pad(TARGETS, ((0, 0), (0, 2)))
    padded = forward(variables, more_inputs, more_targets)
    real = TARGETS != 0
    np.testing.assert_allclose(np.asarray(padded)[:, :5][real], np.asarray(logits)[real], atol=1e-5)


def _target_embedding_jacobian(model, variables, t):
    """d logits[:, t] / d (decoder input embeddings), via an interceptor on target_embed."""
    delta0 = jnp.zeros(TARGETS.shape + (model.config.emb_dim,))

    def logits_at_t(delta):
        def add_delta(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.module.name == "target_embed" and context.method_name == "__call__":
                return out + delta
            return out

        with nn.intercept_methods(add_delta):
            return model.apply(variables, INPUTS, TARGETS)[:, t].sum()

    return np.asarray(jax.jit(jax.grad(logits_at_t))(delta0))  # [B, T, E]


def test_no_leak_logits_do_not_depend_on_later_targets():
    model, variables, _ = _init(_config(**VARIANTS["lstm_input_feeding_stacked_maxout"]))
    t = 2
    grad = _target_embedding_jacobian(model, variables, t)
    # position t reads decoder inputs 0..t (= BOS, y_0..y_{t-1}); nothing after t
    assert np.abs(grad[:, : t + 1]).max() > 0
    np.testing.assert_array_equal(grad[:, t + 1 :], 0.0)


def test_chex_asserts_fire_on_wrong_shapes_at_the_boundary():
    model, variables, _ = _init(_config())
    # jit: the checks fire while tracing, before anything is computed
    apply = jax.jit(model.apply, static_argnames=("method",))
    seg = (INPUTS != 0).astype(np.int32)
    with pytest.raises(AssertionError, match="inputs_segmentation"):
        apply(variables, INPUTS, TARGETS, inputs_segmentation=seg[:, :4])
    with pytest.raises(AssertionError, match="targets_segmentation"):
        apply(variables, INPUTS, TARGETS, targets_segmentation=seg)
    with pytest.raises(AssertionError, match="inputs must be"):
        apply(variables, INPUTS[0], TARGETS)
    with pytest.raises(AssertionError):
        apply(variables, INPUTS.astype(np.float32), TARGETS)
    with pytest.raises(AssertionError, match="batch size"):
        apply(variables, INPUTS[:2], TARGETS)
    cache = jax.eval_shape(functools.partial(init_decode_cache, model), variables, INPUTS)
    with pytest.raises(AssertionError):
        jax.eval_shape(make_tokens_to_logits(model, variables), jnp.ones((2,), jnp.int32), cache)


def test_dropout_uses_the_dropout_stream_and_deterministic_switch():
    _, variables, forward = _init(_config())
    model = RNNSearch(_config(dropout_rate=0.3))  # same parameter tree, dropout on
    frozen = RNNSearch(model.config.replace(deterministic=True))

    @jax.jit
    def run(v, seeds):
        train = lambda m, seed: m.apply(
            v, INPUTS, TARGETS, train=True, rngs={"dropout": jax.random.PRNGKey(seed)}
        )
        return jax.vmap(lambda seed: train(model, seed))(seeds), train(frozen, seeds[0])

    (first, other), frozen_logits = run(variables, jnp.array([1, 2]))
    eval_logits = forward(variables, INPUTS, TARGETS)
    assert not np.allclose(first, eval_logits)
    assert not np.allclose(first, other)
    np.testing.assert_allclose(frozen_logits, eval_logits, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    config = _config(dtype="bfloat16")
    shapes = jax.eval_shape(RNNSearch(config).init, jax.random.PRNGKey(0), INPUTS, TARGETS)
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    _, variables, forward = _init(_config())  # same parameter tree as the bf16 model
    logits = jax.jit(RNNSearch(config).apply)(variables, INPUTS, TARGETS)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, forward(variables, INPUTS, TARGETS), atol=0.1)


def _peer_param_count(vocab: int, emb: int, hidden: int) -> int:
    """Parameters of shared/bench/torch_rnnsearch.py's RNNsearch, from its layer definitions."""
    half = hidden // 2
    gru = lambda inp, h: 3 * h * inp + 3 * h * h + 2 * 3 * h  # weight_ih, weight_hh, 2 biases
    return (
        2 * vocab * emb  # src_emb, tgt_emb
        + 2 * gru(emb, half)  # bidirectional encoder GRU
        + hidden * hidden
        + (hidden * hidden + hidden)
        + hidden  # attention W, U (+bias), v
        + hidden * hidden
        + hidden  # init_state
        + gru(emb + hidden, hidden)  # decoder GRUCell
        + (2 * hidden + emb) * vocab
        + vocab  # output
    )


def test_reference_preset_parameter_count_matches_the_pytorch_peer():
    config = rnnsearch_reference_config()
    model = RNNSearch(config)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), INPUTS, TARGETS)
    ours = count_params(shapes["params"])
    peer = _peer_param_count(8000, 256, 512)
    assert peer == 17_890_624
    assert abs(ours - peer) / peer < 0.01
    assert ours == peer  # same bias convention (b_ih and b_hh on every gate), so exact
    if HAS_TORCH and (PEER_DIR / "torch_rnnsearch.py").exists():
        sys.path.insert(0, str(PEER_DIR))
        import torch_rnnsearch

        torch_model = torch_rnnsearch.RNNsearch(8000, 256, 512)
        assert sum(p.numel() for p in torch_model.parameters()) == ours


def _load_into_peer(peer, params):
    """Copies our parameters into the PyTorch peer (Linear weights are [out, in])."""
    import torch

    t = lambda a: torch.tensor(np.asarray(a))
    sd = {
        "src_emb.weight": t(params["source_embed"]["embedding"]),
        "tgt_emb.weight": t(params["target_embed"]["embedding"]),
        "attention.W.weight": t(params["attention"]["key_proj"]["kernel"]).T,
        "attention.U.weight": t(params["attention"]["query_proj"]["kernel"]).T,
        "attention.U.bias": t(params["attention"]["query_proj"]["bias"]),
        "attention.v.weight": t(params["attention"]["v"]),
        "init_state.weight": t(params["bridge_0"]["kernel"]).T,
        "init_state.bias": t(params["bridge_0"]["bias"]),
        "cell.weight_ih": torch.cat(
            [t(params["cells_0"]["input"]["kernel"]), t(params["context_proj"]["kernel"])]
        ).T,
        "cell.bias_ih": t(params["cells_0"]["input"]["bias"]),
        "cell.weight_hh": t(params["cells_0"]["hidden"]["kernel"]).T,
        "cell.bias_hh": t(params["cells_0"]["hidden"]["bias"]),
        "output.weight": t(params["output"]["kernel"]).T,
        "output.bias": t(params["output"]["bias"]),
    }
    for suffix, name in (("", "layer_0_fwd"), ("_reverse", "layer_0_bwd")):
        cell = params["encoder"][name]["cell"]
        sd[f"encoder.weight_ih_l0{suffix}"] = t(cell["input"]["kernel"]).T
        sd[f"encoder.bias_ih_l0{suffix}"] = t(cell["input"]["bias"])
        sd[f"encoder.weight_hh_l0{suffix}"] = t(cell["hidden"]["kernel"]).T
        sd[f"encoder.bias_hh_l0{suffix}"] = t(cell["hidden"]["bias"])
    peer.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True)


@pytest.mark.skipif(
    not HAS_TORCH or not (PEER_DIR / "torch_rnnsearch.py").exists(),
    reason="needs torch and shared/bench/torch_rnnsearch.py",
)
def test_same_weights_give_the_pytorch_peers_logits():
    import torch

    sys.path.insert(0, str(PEER_DIR))
    import torch_rnnsearch

    config = _config()  # emb 8, 2 x 8 encoder units, decoder 16, attention dim 16
    _, variables, forward = _init(config)
    peer = torch_rnnsearch.RNNsearch(20, 8, 16)
    _load_into_peer(peer, variables["params"])
    decoder_inputs = np.asarray(shift_right(TARGETS, bos_id=1))
    with torch.no_grad():
        want = peer(
            torch.tensor(INPUTS, dtype=torch.long),
            torch.tensor(INPUTS != 0),
            torch.tensor(decoder_inputs, dtype=torch.long),
        ).numpy()
    got = np.asarray(forward(variables, INPUTS, TARGETS))
    real = TARGETS != 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5)
