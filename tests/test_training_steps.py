"""Pure train/eval steps: loss against a NumPy reference, token-normalised gradients, RNG."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from training_tiny_model import TinySeq2Seq, make_batch

from seq2seq_jax.training import steps
from seq2seq_jax.training.state import TrainState


def numpy_smoothed_ce(logits, targets, weights, ls):
    """Reference: KL(smoothed one-hot || softmax) summed over weighted tokens."""
    logits = np.asarray(logits, np.float64)
    v = logits.shape[-1]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    q = np.full(logits.shape, ls / (v - 1))
    np.put_along_axis(q, np.asarray(targets)[..., None], 1.0 - ls, axis=-1)
    kl = np.sum(np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - logp), 0.0), axis=-1)
    return float(np.sum(kl * weights)), float(np.sum(weights))


def test_cross_entropy_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(3, 4))
    weights = (rng.random((3, 4)) > 0.3).astype(np.float32)
    for ls in (0.0, 0.1, 0.3):
        got = steps.cross_entropy_with_smoothing(
            jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), ls
        )
        want = numpy_smoothed_ce(logits, targets, weights, ls)
        np.testing.assert_allclose([float(got[0]), float(got[1])], want, rtol=1e-5)


def test_token_metrics_accuracy_counts_real_tokens_only():
    logits = jnp.asarray([[[0.0, 0.0, 5.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])  # [1, 3, 3]
    targets = jnp.asarray([[2, 2, 0]])  # Third token is padding (predicted right, not counted).
    m = steps.token_metrics(logits, targets, 0.0)
    assert float(m["accuracy"][0]) == 1.0 and float(m["accuracy"][1]) == 2.0
    summary = steps.summarize(jax.device_get(m))
    assert summary["accuracy"] == 0.5
    np.testing.assert_allclose(summary["perplexity"], np.exp(summary["nll"]), rtol=1e-6)


def make_state(seed=0, dropout=0.0, tx=None):
    model = TinySeq2Seq(dropout=dropout)
    batch = make_batch(0)
    keys = jax.random.split(jax.random.PRNGKey(seed), 2)
    params = model.init(
        keys[0],
        batch["inputs"],
        batch["targets"],
        **{k: batch[k] for k in steps.MODEL_KEYS},
        train=False,
    )["params"]
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx or optax.sgd(1.0), rng=keys[1]
    )


def test_train_step_gradient_is_mean_over_real_target_tokens():
    state = make_state()
    batch = make_batch(1)
    ls = 0.1

    def reference_loss(params):  # Independent path: explicit smoothed one-hot, mean over tokens.
        logits = state.apply_fn(
            {"params": params},
            batch["inputs"],
            batch["targets"],
            **{k: batch[k] for k in steps.MODEL_KEYS},
            train=False,
        )
        v = logits.shape[-1]
        q = jax.nn.one_hot(batch["targets"], v) * (1 - ls - ls / (v - 1)) + ls / (v - 1)
        ce = -jnp.sum(q * jax.nn.log_softmax(logits), -1)  # constant entropy term: no gradient
        w = batch["targets"] != 0
        return jnp.sum(ce * w) / jnp.sum(w)

    grads = jax.grad(reference_loss)(state.params)
    new_state, metrics = jax.jit(functools.partial(steps.train_step, label_smoothing=ls))(
        state, batch
    )
    expected = jax.tree.map(lambda p, g: p - g, state.params, grads)  # sgd(1.0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_state.params,
        expected,
    )
    assert int(new_state.step) == 1
    assert float(metrics["loss"][1]) == float(np.sum(batch["targets"] != 0))
    np.testing.assert_allclose(
        float(metrics["grad_norm"][0]), float(optax.tree.norm(grads)), rtol=1e-5
    )
    assert float(metrics["nonfinite_skipped"][0]) == 0.0


def run_losses(seed, n=3):
    state = make_state(seed=seed, dropout=0.5, tx=optax.adam(1e-2))
    step = jax.jit(steps.train_step)
    losses = []
    for i in range(n):
        state, m = step(state, make_batch(i))
        losses.append(float(m["loss"][0] / m["loss"][1]))
    return losses


def test_same_seed_same_losses_different_seed_different_losses():
    a, b, c = run_losses(0), run_losses(0), run_losses(1)
    assert a == b
    assert all(x != y for x, y in zip(a, c, strict=True))


def test_dropout_rng_is_folded_with_the_step():
    state = make_state(dropout=0.5, tx=optax.sgd(0.0))  # lr 0: params fixed, only rng varies
    batch = make_batch(3)
    step = jax.jit(steps.train_step)
    s1, m1 = step(state, batch)
    _, m2 = step(s1, batch)
    _, m1_again = step(state, batch)
    assert float(m1["loss"][0]) != float(m2["loss"][0])
    assert float(m1["loss"][0]) == float(m1_again["loss"][0])


def test_eval_step_is_deterministic_and_matches_train_metrics_without_dropout():
    state = make_state(dropout=0.5)
    batch = make_batch(4)
    e1 = jax.jit(steps.eval_step)(state, batch)
    e2 = jax.jit(steps.eval_step)(state, batch)
    assert float(e1["loss"][0]) == float(e2["loss"][0])
    no_drop = make_state(dropout=0.0)
    _, m = jax.jit(steps.train_step)(no_drop, batch)
    np.testing.assert_allclose(float(e1["loss"][0]), float(m["loss"][0]), rtol=1e-6)


def test_accumulate_and_summarize_divide_only_at_the_end():
    a = {"loss": (np.float32(6.0), np.float32(2.0))}
    b = {"loss": (np.float32(1.0), np.float32(8.0))}
    total = steps.accumulate(steps.accumulate(None, a), b)
    assert steps.summarize(total, prefix="train_") == {"train_loss": 0.7}


def test_bfloat16_compute_keeps_float32_params_and_loss():
    """model.dtype='bfloat16' on the real RNNsearch: f32 params, f32 loss near the f32 model's."""
    from seq2seq_jax import models

    batch = make_batch(5, batch=8, src_len=4, tgt_len=3)
    states = {}
    for dtype in ("float32", "bfloat16"):
        cfg = models.ModelConfig(
            name="rnnsearch",
            source_vocab_size=16,
            target_vocab_size=16,
            emb_dim=8,
            encoder_hidden_size=8,
            decoder_hidden_size=16,
            dropout_rate=0.0,
            dtype=dtype,
        )
        model = models.build_model(cfg)
        params = model.init(jax.random.PRNGKey(0), batch["inputs"], batch["targets"], train=False)[
            "params"
        ]
        states[dtype] = TrainState.create(
            apply_fn=model.apply, params=params, tx=optax.adam(1e-2), rng=jax.random.PRNGKey(1)
        )
    reference = jax.jit(steps.eval_step)(states["float32"], batch)  # forward only: cheap
    new_state, m = jax.jit(steps.train_step)(states["bfloat16"], batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new_state.params))
    assert m["loss"][0].dtype == jnp.float32
    loss_bf16 = float(m["loss"][0] / m["loss"][1])
    loss_f32 = float(reference["loss"][0] / reference["loss"][1])
    assert np.isfinite(loss_bf16) and loss_bf16 != loss_f32  # bf16 really was used
    np.testing.assert_allclose(loss_bf16, loss_f32, rtol=2e-2)


def test_cross_entropy_gradient_is_softmax_minus_smoothed_target():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 6)).astype(np.float32) * 2
    targets = rng.integers(0, 6, size=(2, 3))
    weights = (rng.random((2, 3)) > 0.3).astype(np.float32)
    for ls in (0.0, 0.2):
        grad = jax.grad(
            lambda x, ls=ls: steps.cross_entropy_with_smoothing(
                x, jnp.asarray(targets), jnp.asarray(weights), ls
            )[0]
        )(jnp.asarray(logits))
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        q = np.full(logits.shape, ls / 5)
        np.put_along_axis(q, targets[..., None], 1.0 - ls, axis=-1)
        np.testing.assert_allclose(np.asarray(grad), (p - q) * weights[..., None], atol=1e-6)


def test_token_accuracy_takes_the_first_of_tied_maxima():
    logits = jnp.asarray([[[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]])  # ties: argmax is index 1, 0
    m = steps.token_metrics(logits, jnp.asarray([[2, 1]]), 0.0)
    assert float(m["accuracy"][0]) == 0.0
    m = steps.token_metrics(logits, jnp.asarray([[1, 1]]), 0.0)
    assert float(m["accuracy"][0]) == 1.0


def test_train_step_logs_real_target_tokens_and_padding():
    state = make_state()
    batch = make_batch(2)
    _, metrics = jax.jit(steps.train_step)(state, batch)
    real = int(np.sum(np.asarray(batch["targets"]) != 0))
    positions = np.asarray(batch["targets"]).size
    assert 0 < real < positions, "the test batch must hold padding"
    summary = steps.summarize(jax.device_get(metrics), prefix="train_")
    assert summary["train_target_tokens"] == real
    np.testing.assert_allclose(summary["train_padding"], 1 - real / positions, rtol=1e-6)


def test_nonfinite_modes_skip_keeps_state_abort_and_ignore_apply():
    """A learning rate of inf overflows the parameters although the gradients are finite."""
    batch = make_batch(0)
    tx = optax.sgd(lambda count: jnp.where(count == 0, jnp.inf, 0.1))
    results = {}
    for mode in ("abort", "skip", "ignore"):
        state = make_state(tx=tx)
        before = jax.tree.map(np.asarray, (state.params, state.opt_state))
        step = jax.jit(functools.partial(steps.train_step, nonfinite=mode))
        new, m = step(state, batch)
        results[mode] = (new, m)
        assert float(m["nonfinite"][0]) == 1.0, mode
        assert int(new.step) == 1  # The data and dropout stream advance in every mode.
        params_finite = bool(steps.all_finite(new.params))
        if mode == "skip":
            assert float(m["nonfinite_skipped"][0]) == 1.0
            jax.tree.map(np.testing.assert_array_equal, (new.params, new.opt_state), before)
        else:
            assert float(m["nonfinite_skipped"][0]) == 0.0 and not params_finite
    # A finite step is flagged nowhere.
    new, m = jax.jit(steps.train_step)(make_state(tx=optax.sgd(0.1)), batch)
    assert float(m["nonfinite"][0]) == 0.0 and bool(steps.all_finite(new.params))


def test_unknown_nonfinite_mode_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="optimizer.nonfinite='retry'"):
        steps.train_step(make_state(), make_batch(0), nonfinite="retry")
