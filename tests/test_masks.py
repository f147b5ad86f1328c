"""Mask helpers against brute-force loops."""

import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.layers import masks


def test_padding_mask_from_ids_and_lengths_agree():
    ids = np.array([[5, 3, 2, 0, 0], [7, 2, 0, 0, 0], [4, 4, 4, 4, 2]])
    from_ids = masks.padding_mask(jnp.asarray(ids))
    from_lengths = masks.padding_mask(lengths=jnp.array([3, 2, 5]), max_length=5)
    np.testing.assert_array_equal(from_ids, ids != 0)
    np.testing.assert_array_equal(from_lengths, from_ids)
    assert from_ids.dtype == jnp.bool_


def test_padding_mask_argument_errors():
    with pytest.raises(ValueError, match="exactly one"):
        masks.padding_mask()
    with pytest.raises(ValueError, match="max_length"):
        masks.padding_mask(lengths=jnp.array([1]))
    with pytest.raises(AssertionError):
        masks.padding_mask(jnp.ones((2, 3, 4), jnp.int32))


def test_causal_mask_brute_force():
    m = np.asarray(masks.causal_mask(5))
    assert m.shape == (1, 5, 5)
    for t in range(5):
        for s in range(5):
            assert m[0, t, s] == (s <= t)


def test_segment_mask_brute_force():
    q = np.array([[1, 1, 2, 2, 0], [1, 2, 3, 0, 0]])
    k = np.array([[1, 2, 2, 0], [3, 3, 1, 2]])
    m = np.asarray(masks.segment_mask(jnp.asarray(q), jnp.asarray(k)))
    assert m.shape == (2, 5, 4)
    for b in range(2):
        for t in range(5):
            for s in range(4):
                assert m[b, t, s] == (q[b, t] == k[b, s] and q[b, t] != 0)


def test_segment_mask_shape_errors():
    with pytest.raises(AssertionError):
        masks.segment_mask(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 3), jnp.int32))


def test_combine_packed_causal_self_attention():
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    combined = masks.combine(
        masks.segment_mask(seg, seg), masks.causal_mask(6), masks.padding_mask(seg)
    )
    c = np.asarray(combined)
    assert c.shape == (1, 6, 6)
    s = np.asarray(seg)[0]
    for t in range(6):
        for j in range(6):
            assert c[0, t, j] == (j <= t and s[t] == s[j] and s[t] != 0)
    four_d = masks.combine(combined[:, None], masks.padding_mask(seg))
    assert four_d.shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(four_d[:, 0], combined)
    assert masks.combine(None, None) is None


def test_combine_rejects_non_bool():
    with pytest.raises(AssertionError):
        masks.combine(jnp.ones((2, 3), jnp.int32))
