"""Transformer: step-by-step == teacher forcing, padding invariance, no leak (causal and packed),
packed rows == the examples run alone, boundary checks, NNX bridge."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seq2seq_jax.models import (
    ModelConfig,
    Transformer,
    make_tokens_to_logits,
    shift_right,
)

INPUTS = np.array([[5, 6, 7, 2, 0, 0], [3, 4, 5, 6, 7, 2], [9, 2, 0, 0, 0, 0]], np.int32)
TARGETS = np.array([[8, 9, 2, 0, 0], [4, 5, 6, 7, 2], [3, 3, 3, 2, 0]], np.int32)

# Two examples packed into one row, and the same two examples as an ordinary batch.
PACKED = {
    "inputs": np.array([[5, 6, 2, 9, 4, 3, 2, 0]], np.int32),
    "inputs_segmentation": np.array([[1, 1, 1, 2, 2, 2, 2, 0]], np.int32),
    "inputs_position": np.array([[0, 1, 2, 0, 1, 2, 3, 0]], np.int32),
    "targets": np.array([[7, 8, 2, 6, 2, 0]], np.int32),
    "targets_segmentation": np.array([[1, 1, 1, 2, 2, 0]], np.int32),
    "targets_position": np.array([[0, 1, 2, 0, 1, 0]], np.int32),
}
UNPACKED_INPUTS = np.array([[5, 6, 2, 0], [9, 4, 3, 2]], np.int32)
UNPACKED_TARGETS = np.array([[7, 8, 2], [6, 2, 0]], np.int32)

VARIANTS = {
    "additive_2heads_sinusoidal": dict(),
    "dot_1head_learned_tied_shared": dict(
        attention_type="dot",
        num_heads=1,
        position_embedding="learned",
        tie_output_embeddings=True,
        share_embeddings=True,
    ),
}


def _config(**overrides) -> ModelConfig:
    base = dict(
        name="transformer",
        source_vocab_size=20,
        target_vocab_size=20,
        bos_id=1,
        eos_id=2,
        emb_dim=16,
        mlp_dim=32,
        num_heads=2,
        encoder_layers=2,
        decoder_layers=2,
        max_len=16,
        dropout_rate=0.0,
    )
    base.update(overrides)
    return ModelConfig(**base).validate()


def _random_variables(model: nn.Module, seed: int = 0):
    """Random parameters of the model's shapes (NumPy RNG), without compiling `init`.

    The properties tested here hold for any parameters; `init` itself runs in the NNX test.
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), INPUTS, TARGETS)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.4 * rng.normal(size=x.shape), x.dtype), shapes)


@functools.cache
def _init(config: ModelConfig):
    """(model, variables, jitted teacher-forced forward) per config, built once per session."""
    model = Transformer(config)
    return model, _random_variables(model), jax.jit(model.apply)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_teacher_forced_logits_equal_step_by_step(variant):
    model, variables, _ = _init(_config(**VARIANTS[variant]))

    @jax.jit
    def run(v):
        encoded = model.apply(v, INPUTS, method=model.encode)
        logits, attention = model.apply(
            v, encoded, INPUTS, TARGETS, return_attention=True, method=model.decode
        )
        cache = model.apply(v, encoded, INPUTS, max_decode_length=7, method=model.init_decode_cache)
        return model.apply(v, INPUTS, TARGETS), logits, attention, cache

    call_logits, logits, attention, cache = run(variables)
    np.testing.assert_allclose(logits, call_logits, atol=1e-6)
    n = INPUTS.shape[0]
    assert all(leaf.shape[0] == n for leaf in jax.tree.leaves(cache))
    step = jax.jit(make_tokens_to_logits(model, variables))
    decoder_inputs = shift_right(TARGETS, bos_id=1)
    real = TARGETS != 0
    for t in range(TARGETS.shape[1]):
        step_logits, step_attention, cache = step(decoder_inputs[:, t], cache)
        rows = real[:, t]  # teacher forcing computes nothing meaningful on target padding
        np.testing.assert_allclose(step_logits[rows], logits[rows, t], atol=2e-5)
        np.testing.assert_allclose(step_attention[rows], attention[rows, t], atol=2e-6)
    np.testing.assert_array_equal(cache["index"], TARGETS.shape[1])
    # the returned attention is a distribution over real source tokens only
    np.testing.assert_allclose(np.asarray(attention)[real].sum(-1), 1.0, atol=1e-5)
    assert np.all(
        np.asarray(attention)[np.broadcast_to(INPUTS[:, None] == 0, attention.shape)] == 0
    )


def test_extra_source_and_target_padding_change_nothing():
    _, variables, forward = _init(_config())
    logits = forward(variables, INPUTS, TARGETS)
    padded = forward(variables, np.pad(INPUTS, ((0, 0), (0, 3))), np.pad(TARGETS, ((0, 0), (0, 2))))
    real = TARGETS != 0
    np.testing.assert_allclose(np.asarray(padded)[:, :5][real], np.asarray(logits)[real], atol=1e-5)


def _embedding_grads(model, variables, batch, loss_fn):
    """Gradients of `loss_fn(logits)` w.r.t. additive deltas on the source / target embeddings."""
    deltas = (
        jnp.zeros(batch["inputs"].shape + (model.config.emb_dim,)),
        jnp.zeros(batch["targets"].shape + (model.config.emb_dim,)),
    )

    def loss(deltas):
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.name == "source_embed":
                return out + deltas[0]
            if context.method_name == "__call__" and context.module.name == "target_embed":
                return out + deltas[1]
            return out

        with nn.intercept_methods(add):
            return loss_fn(model.apply(variables, **batch))

    return jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(deltas))


def test_no_leak_logits_do_not_depend_on_later_targets():
    model, variables, _ = _init(_config())
    t = 2
    batch = {"inputs": INPUTS, "targets": TARGETS}
    _, grad = _embedding_grads(model, variables, batch, lambda logits: logits[:, t].sum())
    assert np.abs(grad[:, : t + 1]).max() > 0
    np.testing.assert_array_equal(grad[:, t + 1 :], 0.0)


def test_packed_examples_do_not_see_each_other():
    model, variables, forward = _init(_config())
    # gradients: example 1's logits have no path to example 2's source or target tokens
    src_grad, tgt_grad = _embedding_grads(
        model, variables, PACKED, lambda logits: logits[0, :3].sum()
    )
    assert np.abs(src_grad[0, :3]).max() > 0 and np.abs(tgt_grad[0, :3]).max() > 0
    np.testing.assert_array_equal(src_grad[0, 3:], 0.0)
    np.testing.assert_array_equal(tgt_grad[0, 3:], 0.0)
    # perturbation: changing example 2 leaves example 1 unchanged, and vice versa
    base = np.asarray(forward(variables, **PACKED))
    other = dict(PACKED, inputs=PACKED["inputs"].copy(), targets=PACKED["targets"].copy())
    other["inputs"][0, 3:7] = [11, 12, 13, 2]
    other["targets"][0, 3:5] = [14, 15]
    changed = np.asarray(forward(variables, **other))
    np.testing.assert_array_equal(changed[0, :3], base[0, :3])
    first = dict(PACKED, inputs=PACKED["inputs"].copy(), targets=PACKED["targets"].copy())
    first["inputs"][0, :3] = [16, 17, 2]
    first["targets"][0, :3] = [18, 19, 2]
    changed = np.asarray(forward(variables, **first))
    np.testing.assert_array_equal(changed[0, 3:5], base[0, 3:5])


def test_packed_row_equals_the_examples_run_alone():
    model, variables, forward = _init(_config())

    @jax.jit
    def run(v):
        encoded = model.apply(
            v,
            PACKED["inputs"],
            inputs_segmentation=PACKED["inputs_segmentation"],
            inputs_position=PACKED["inputs_position"],
            method=model.encode,
        )
        packed = model.apply(v, encoded, **PACKED, return_attention=True, method=model.decode)
        encoded = model.apply(v, UNPACKED_INPUTS, method=model.encode)
        alone = model.apply(
            v,
            encoded,
            UNPACKED_INPUTS,
            UNPACKED_TARGETS,
            return_attention=True,
            method=model.decode,
        )
        return packed, alone

    (packed, packed_attention), (alone, alone_attention) = run(variables)
    np.testing.assert_allclose(packed[0, :3], alone[0, :3], atol=1e-5)
    np.testing.assert_allclose(packed[0, 3:5], alone[1, :2], atol=1e-5)
    np.testing.assert_allclose(packed_attention[0, :3, :3], alone_attention[0, :3, :3], atol=1e-6)
    np.testing.assert_allclose(packed_attention[0, 3:5, 3:7], alone_attention[1, :2], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(packed_attention)[0, :3, 3:], 0.0)
    np.testing.assert_array_equal(np.asarray(packed_attention)[0, 3:5, :3], 0.0)


def test_chex_asserts_fire_on_wrong_shapes_at_the_boundary():
    model, variables, _ = _init(_config())
    apply = jax.jit(model.apply, static_argnames=("method",))
    with pytest.raises(AssertionError, match="inputs_segmentation"):
        apply(
            variables,
            PACKED["inputs"],
            PACKED["targets"],
            inputs_segmentation=PACKED["inputs_segmentation"][:, :5],
        )
    with pytest.raises(AssertionError, match="targets_position"):
        apply(
            variables,
            PACKED["inputs"],
            PACKED["targets"],
            targets_position=PACKED["inputs_position"],
        )
    with pytest.raises(AssertionError, match="targets must be"):
        apply(variables, INPUTS, TARGETS[:, :, None])
    encoded = jnp.zeros((3, 5, 16))  # wrong source length for INPUTS
    with pytest.raises(AssertionError):
        apply(variables, encoded, INPUTS, TARGETS, method=model.decode)
    learned, learned_variables, _ = _init(_config(**VARIANTS["dot_1head_learned_tied_shared"]))
    with pytest.raises(ValueError, match="max_len=16"):
        jax.eval_shape(
            functools.partial(
                learned.apply, max_decode_length=17, method=learned.init_decode_cache
            ),
            learned_variables,
            jnp.zeros((3, 6, 16)),
            INPUTS,
        )


def test_usable_from_nnx_through_the_bridge():
    config = _config(encoder_layers=1, decoder_layers=1)
    model = nnx.bridge.ToNNX(Transformer(config), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, INPUTS, TARGETS)  # Linen `init` runs here

    @nnx.jit
    def run(m, inputs, targets):
        # the bridge forwards methods: encode + decode must equal __call__
        return m(inputs, targets), m.decode(m.encode(inputs), inputs, targets)

    logits, two_step = run(model, INPUTS, TARGETS)
    assert logits.shape == (3, 5, 20) and logits.dtype == jnp.float32
    np.testing.assert_allclose(two_step, logits, atol=1e-5)
    # the bridged parameters drive the Linen module to the same result
    variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
    linen = jax.jit(Transformer(config).apply)(variables, INPUTS, TARGETS)
    np.testing.assert_allclose(linen, logits, atol=1e-5)
