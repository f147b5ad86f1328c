"""`seq2seq_jax.ops.first_argmax` returns exactly what `jnp.argmax` returns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.ops import first_argmax


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_first_argmax_equals_numpy_argmax_on_random_and_tied_values(axis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 9)).astype(np.float32)
    tied = np.round(x)  # many ties: the first maximum must win
    for values in (x, tied):
        got = jax.jit(first_argmax, static_argnums=1)(jnp.asarray(values), axis)
        assert got.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(got), np.argmax(values, axis=axis))


def test_first_argmax_special_values_like_argmax():
    rows = np.array(
        [
            [-np.inf, -np.inf, -np.inf],  # all -inf: index 0
            [1.0, np.inf, np.inf],  # first inf
            [0.0, np.nan, 5.0],  # a NaN wins, as in argmax
            [np.nan, 1.0, np.nan],  # the first NaN
            [2.0, 2.0, 1.0],
        ],
        np.float32,
    )
    got = np.asarray(first_argmax(jnp.asarray(rows)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(rows), axis=-1)))
    np.testing.assert_array_equal(got, [0, 1, 1, 0, 0])


def test_first_argmax_integers_bfloat16_and_empty_axis():
    ints = jnp.asarray([[3, 7, 7, 1], [0, 0, 0, 0]], jnp.int32)
    np.testing.assert_array_equal(np.asarray(first_argmax(ints)), [1, 0])
    bf = jnp.asarray([[0.5, 0.25, 0.5]], jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(first_argmax(bf)), [0])
    with pytest.raises(ValueError, match=r"empty axis -1 \(shape \(2, 0\)\)"):
        first_argmax(jnp.zeros((2, 0)))


def test_float32_accumulation_rounds_only_the_result():
    from seq2seq_jax.ops import accumulate_in_float32, float32_product

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 512)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(512, 8)), jnp.bfloat16)
    exact = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    dims = (((1,), (0,)), ((), ()))
    wide = float32_product(x, w, dims)
    assert wide.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(wide), exact, rtol=1e-5, atol=1e-4)
    narrow = accumulate_in_float32(x, w, dims)
    assert narrow.dtype == jnp.bfloat16  # one rounding of the float32 sum: <= 2^-8 relative
    np.testing.assert_allclose(np.asarray(narrow, np.float64), exact, rtol=2.0**-8, atol=1e-6)
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(accumulate_in_float32(x32, w32, dims)),
        np.asarray(jax.lax.dot_general(x32, w32, dims)),
    )


def test_bfloat16_forward_product_rounds_the_operands_and_keeps_the_float32_gradient():
    from seq2seq_jax.ops import bfloat16_forward_product, float32_product, output_product

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 64)), jnp.float32)  # a [B, T, F] Dense input
    w = jnp.asarray(rng.normal(size=(64, 40)), jnp.float32)
    dims = (((2,), (0,)), ((), ()))
    got = bfloat16_forward_product(x, w, dims)
    assert got.dtype == jnp.float32 and got.shape == (3, 5, 40)
    # NumPy reference: both operands rounded to bfloat16 once, then a float64 product.
    rounded = (
        np.asarray(x.astype(jnp.bfloat16), np.float64),
        np.asarray(w.astype(jnp.bfloat16), np.float64),
    )
    np.testing.assert_allclose(
        np.asarray(got), np.einsum("btf,fv->btv", *rounded), rtol=1e-5, atol=1e-4
    )
    exact = np.einsum("btf,fv->btv", np.asarray(x, np.float64), np.asarray(w, np.float64))
    assert np.max(np.abs(np.asarray(got) - exact)) > 1e-4  # it did round
    # The gradient is float32_product's at the same cotangent, exactly.
    c = jnp.asarray(rng.normal(size=(3, 5, 40)), jnp.float32)

    def grads(product):
        return jax.grad(lambda a, b: jnp.sum(product(a, b, dims) * c), argnums=(0, 1))(x, w)

    for got_g, want_g in zip(grads(bfloat16_forward_product), grads(float32_product), strict=True):
        np.testing.assert_array_equal(np.asarray(got_g), np.asarray(want_g))
    # Jitted, with the tuple-of-lists dimension numbers Flax passes.
    jitted = jax.jit(lambda a, b: bfloat16_forward_product(a, b, (([2], [0]), ((), ()))))
    np.testing.assert_array_equal(np.asarray(jitted(x, w)), np.asarray(got))
    assert output_product("float32") is float32_product
    with pytest.raises(ValueError, match=r"model.output_product='bf16'.*bfloat16_forward"):
        output_product("bf16")


@pytest.mark.parametrize(
    "shape,k,block", [((3, 4000), 5, 64), ((2, 3, 2999), 4, 16), ((4, 300), 7, 8), ((2, 50), 3, 64)]
)
def test_top_k_equals_lax_top_k_values_and_indices(shape, k, block):
    from seq2seq_jax.ops import top_k

    rng = np.random.default_rng(1)
    x = rng.normal(size=shape).astype(np.float32)
    tied = np.round(x * 2)  # many equal values across and within blocks: lower index first
    sparse = np.where(rng.random(shape) < 0.995, -np.inf, x).astype(np.float32)  # mostly -inf
    fn = jax.jit(lambda v: top_k(v, k, block=block))
    for values in (x, tied, sparse, np.full(shape, -np.inf, np.float32)):
        got, want = fn(jnp.asarray(values)), jax.lax.top_k(jnp.asarray(values), k)
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        assert got[1].dtype == jnp.int32


def test_top_k_rejects_k_outside_the_axis():
    from seq2seq_jax.ops import top_k

    with pytest.raises(ValueError, match=r"1 <= k <= 6 .*\(2, 6\)\), got 7"):
        top_k(jnp.zeros((2, 6)), 7)
    with pytest.raises(ValueError, match="got 0"):
        top_k(jnp.zeros((2, 6)), 0)
