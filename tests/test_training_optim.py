"""Optimisers, schedules, freezing, per-path lr, clipping, accumulation, non-finite skipping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seq2seq_jax.training import optim


def opt_config(**overrides):
    c = optim.default_optimizer_config()
    c.update(overrides)
    return c


def run_updates(tx, params, grads_list):
    state = tx.init(params)
    for g in grads_list:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize(
    "settings, checks",
    [
        (dict(schedule="constant"), {0: 1.0, 7: 1.0}),
        (
            dict(schedule="warmup_rsqrt", warmup_steps=4),
            {0: 0.0, 2: 0.5, 4: 1.0, 16: 0.5, 64: 0.25},
        ),
        (
            dict(
                schedule="warmup_cosine",
                warmup_steps=2,
                decay_steps=10,
                end_learning_rate_fraction=0.1,
            ),
            {
                0: 0.0,
                1: 0.5,
                2: 1.0,
                6: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)),
                10: 0.1,
                20: 0.1,
            },
        ),
        (
            dict(
                schedule="warmup_linear",
                warmup_steps=2,
                decay_steps=10,
                end_learning_rate_fraction=0.1,
            ),
            {0: 0.0, 1: 0.5, 2: 1.0, 6: 1.0 - 0.9 * 0.5, 10: 0.1, 20: 0.1},
        ),
        (
            dict(schedule="piecewise", boundaries=(3, 6), scales=(0.5, 0.1)),
            {0: 1.0, 2: 1.0, 3: 0.5, 5: 0.5, 6: 0.05, 100: 0.05},
        ),
    ],
)
def test_schedules_match_formulas(settings, checks):
    lr = 0.02
    schedule = optim.make_schedule(opt_config(learning_rate=lr, **settings), num_train_steps=99)
    for step, factor in checks.items():
        np.testing.assert_allclose(
            float(schedule(step)),
            lr * factor,
            rtol=1e-5,
            atol=1e-9,
            err_msg=f"{settings} at step {step}",
        )


def test_decay_steps_default_to_num_train_steps():
    c = opt_config(learning_rate=1.0, schedule="warmup_linear", warmup_steps=0)
    schedule = optim.make_schedule(c, num_train_steps=8)
    np.testing.assert_allclose([float(schedule(t)) for t in (0, 4, 8)], [1.0, 0.5, 0.0], atol=1e-7)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(schedule="bogus"), "optimizer.schedule='bogus'"),
        (dict(schedule="warmup_rsqrt", warmup_steps=0), "optimizer.warmup_steps >= 1"),
        (dict(schedule="piecewise", boundaries=(3,), scales=()), "same length"),
        (dict(schedule="warmup_cosine", warmup_steps=50), "must exceed"),
    ],
)
def test_bad_schedule_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        optim.make_schedule(opt_config(**settings), num_train_steps=10)


def test_bad_optimizer_name_and_regexes():
    with pytest.raises(ValueError, match="optimizer.name='lion'"):
        optim.make_optimizer(opt_config(name="lion"), 10)
    with pytest.raises(ValueError, match="optimizer.freeze: bad regex"):
        optim.make_optimizer(opt_config(freeze="enc(["), 10)
    with pytest.raises(ValueError, match="lr_multipliers entries must be"):
        optim.make_optimizer(opt_config(lr_multipliers=(("a", 1.0, 2.0),)), 10)


PARAMS = {
    "encoder": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,))},
    "decoder": {"kernel": jnp.full((3, 2), 2.0)},
}


def grads_like(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        treedef, [jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in leaves]
    )


def test_frozen_paths_do_not_change_and_others_do():
    c = opt_config(name="adam", learning_rate=0.1, freeze="^encoder/")
    tx, _ = optim.make_optimizer(c, 10)
    new, _ = run_updates(tx, PARAMS, [grads_like(PARAMS, s) for s in range(3)])
    np.testing.assert_array_equal(new["encoder"]["kernel"], PARAMS["encoder"]["kernel"])
    np.testing.assert_array_equal(new["encoder"]["bias"], PARAMS["encoder"]["bias"])
    assert np.all(np.abs(np.asarray(new["decoder"]["kernel"] - PARAMS["decoder"]["kernel"])) > 0)
    assert optim.frozen_paths(PARAMS, "^encoder/") == ["encoder/bias", "encoder/kernel"]


def test_per_path_lr_multiplier_and_clipping_against_numpy():
    # Plain SGD (no momentum) so the update is -lr * factor * clipped_grad, computed in NumPy.
    c = opt_config(
        name="sgd",
        momentum=0.0,
        learning_rate=0.1,
        grad_clip_norm=1.0,
        lr_multipliers=(("^encoder/kernel", 0.5), ("^encoder", 0.0)),
    )
    tx, _ = optim.make_optimizer(c, 10)
    g = grads_like(PARAMS, 0)
    norm = np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(g)))
    scale = min(1.0, 1.0 / norm)
    new, _ = run_updates(tx, PARAMS, [g])
    for path, factor in [("encoder/kernel", 0.5), ("encoder/bias", 0.0), ("decoder/kernel", 1.0)]:
        a, b = path.split("/")
        expected = np.asarray(PARAMS[a][b]) - 0.1 * factor * scale * np.asarray(g[a][b])
        np.testing.assert_allclose(new[a][b], expected, rtol=1e-6, err_msg=path)


def test_sgd_momentum_against_numpy():
    c = opt_config(name="sgd", momentum=0.9, learning_rate=0.1, grad_clip_norm=0.0)
    tx, _ = optim.make_optimizer(c, 10)
    gs = [grads_like(PARAMS, s) for s in range(3)]
    new, _ = run_updates(tx, PARAMS, gs)
    p = np.asarray(PARAMS["decoder"]["kernel"])
    m = np.zeros_like(p)
    for g in gs:
        m = 0.9 * m + np.asarray(g["decoder"]["kernel"])
        p = p - 0.1 * m
    np.testing.assert_allclose(new["decoder"]["kernel"], p, rtol=1e-6)


def test_adamw_decays_matrices_not_vectors():
    c = opt_config(name="adamw", learning_rate=0.1, weight_decay=0.5, grad_clip_norm=0.0)
    tx, _ = optim.make_optimizer(c, 10)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    new, _ = run_updates(tx, PARAMS, [zero])
    np.testing.assert_allclose(new["encoder"]["kernel"], 1.0 - 0.1 * 0.5 * 1.0, rtol=1e-6)
    np.testing.assert_array_equal(new["encoder"]["bias"], PARAMS["encoder"]["bias"])


def test_adafactor_and_adam_update_every_leaf():
    for name in ("adafactor", "adam"):
        tx, _ = optim.make_optimizer(opt_config(name=name, learning_rate=0.1), 10)
        new, _ = run_updates(tx, PARAMS, [grads_like(PARAMS, 1)])
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(PARAMS), strict=True):
            assert np.all(np.isfinite(a)) and not np.allclose(a, b), name


@pytest.mark.parametrize(
    "key,value",
    [
        ("learning_rate", -1e-3),
        ("learning_rate", float("nan")),
        ("learning_rate", -0.0001),
        ("learning_rate", float("inf")),
        ("b1", 1.5),
        ("b2", -0.1),
        ("eps", float("nan")),
        ("grad_clip_norm", -1.0),
        ("warmup_steps", -5),
        ("accumulate_steps", 0),
        ("end_learning_rate_fraction", 2.0),
        ("weight_decay", float("-inf")),
        ("momentum", 1.1),
        ("max_consecutive_nonfinite", 0),
    ],
)
def test_bad_optimizer_numbers_are_rejected_naming_the_key(key, value):
    c = optim.default_optimizer_config()
    c[key] = value
    with pytest.raises(ValueError, match=f"optimizer.{key} must be"):
        optim.validate_optimizer_config(c)


def test_bad_optimizer_choices_are_rejected():
    for key, value in (("name", "adamx"), ("schedule", "cosine"), ("nonfinite", "retry")):
        c = optim.default_optimizer_config()
        c[key] = value
        with pytest.raises(ValueError, match=f"optimizer.{key}="):
            optim.validate_optimizer_config(c)
    c = optim.default_optimizer_config()
    c.scales = (0.5, float("nan"))
    c.boundaries = (10, 20)
    with pytest.raises(ValueError, match="optimizer.scales"):
        optim.validate_optimizer_config(c)


def test_default_optimizer_config_is_valid():
    optim.validate_optimizer_config(optim.default_optimizer_config())


def test_gradient_accumulation_averages_micro_batches():
    c = opt_config(
        name="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=0.0, accumulate_steps=2
    )
    tx, _ = optim.make_optimizer(c, 10)
    g1, g2 = grads_like(PARAMS, 0), grads_like(PARAMS, 1)
    after_one, _ = run_updates(tx, PARAMS, [g1])
    jax.tree.map(np.testing.assert_array_equal, after_one, PARAMS)
    after_two, _ = run_updates(tx, PARAMS, [g1, g2])
    expected = jax.tree.map(lambda p, a, b: p - (a + b) / 2, PARAMS, g1, g2)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), after_two, expected)


def numpy_ema(params_seq, decay):
    """Bias-corrected EMA of a sequence of parameter trees (the updated params after each step)."""
    t = len(params_seq)
    weights = [(1 - decay) * decay ** (t - 1 - i) for i in range(t)]
    return jax.tree.map(
        lambda *xs: (
            sum(w * np.asarray(x, np.float64) for w, x in zip(weights, xs, strict=True))
            / (1 - decay**t)
        ),
        *params_seq,
    )


def test_params_ema_matches_numpy_and_starts_empty():
    c = opt_config(name="adam", learning_rate=0.05, ema_decay=0.8)
    tx, _ = optim.make_optimizer(c, 10)
    state = tx.init(PARAMS)
    assert optim.ema_params(state, 0.8, PARAMS) is None  # No update yet.
    params, seen = PARAMS, []
    for s in range(5):
        updates, state = tx.update(grads_like(PARAMS, s), state, params)
        params = optax.apply_updates(params, updates)
        seen.append(params)
    got = optim.ema_params(state, 0.8, PARAMS)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        got,
        numpy_ema(seen, 0.8),
    )
    # The average lags the parameters: it is not the last ones.
    assert not np.allclose(got["decoder"]["kernel"], params["decoder"]["kernel"])
    # Updates pass through: the same optimiser without the average gives the same parameters.
    plain, _ = run_updates(
        optim.make_optimizer(opt_config(name="adam", learning_rate=0.05), 10)[0],
        PARAMS,
        [grads_like(PARAMS, s) for s in range(5)],
    )
    jax.tree.map(np.testing.assert_array_equal, plain, params)


def test_params_ema_counts_real_updates_with_accumulation_and_freezing():
    c = opt_config(
        name="sgd",
        momentum=0.0,
        learning_rate=1.0,
        grad_clip_norm=0.0,
        accumulate_steps=2,
        freeze="^encoder/",
        ema_decay=0.5,
    )
    tx, _ = optim.make_optimizer(c, 10)
    grads = [grads_like(PARAMS, s) for s in range(4)]
    params, state = run_updates(tx, PARAMS, grads)
    # Two optimiser updates (micro-batches averaged in pairs): the average holds those two.
    first = jax.tree.map(lambda p, a, b: p - (a + b) / 2, PARAMS, grads[0], grads[1])
    first["encoder"] = PARAMS["encoder"]
    got = optim.ema_params(state, 0.5, PARAMS)
    want = numpy_ema([first, params], 0.5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), got, want)
    np.testing.assert_array_equal(got["encoder"]["kernel"], PARAMS["encoder"]["kernel"])


def test_params_ema_errors():
    with pytest.raises(ValueError, match="optimizer.ema_decay must be < 1"):
        optim.validate_optimizer_config(opt_config(ema_decay=1.0))
    with pytest.raises(ValueError, match="optimizer.ema_decay must be a finite number >= 0"):
        optim.validate_optimizer_config(opt_config(ema_decay=-0.1))
    tx, _ = optim.make_optimizer(opt_config(), 10)
    with pytest.raises(ValueError, match="holds 0 parameter averages"):
        optim.ema_params(tx.init(PARAMS), 0.9, PARAMS)
    ema_tx = optim.params_ema(optax.sgd(0.1), 0.9)
    with pytest.raises(ValueError, match="needs the parameters"):
        ema_tx.update(PARAMS, ema_tx.init(PARAMS))
