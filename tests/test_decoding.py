"""Tests of seq2seq_jax.decoding against brute force, teacher forcing and NumPy references.

The step function under test is a small random-weight recurrent model with real (masked softmax)
attention over S source positions, written here in jnp: an independent model that honours the
decoding contract, so the model-agnostic search is tested without importing the models.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax import decoding

V, D, S = 5, 8, 4  # vocabulary: 0 pad, 1 bos, 2 eos, 3, 4
PAD, BOS, EOS = 0, 1, 2


def _make_params(seed: int, eos_bias: float = 0.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    shapes = {
        "src_emb": (V, D),
        "emb": (V, D),
        "w_x": (D, D),
        "w_h": (D, D),
        "w_q": (D, D),
        "w_out": (2 * D, V),
    }
    params = {
        k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32) for k, s in shapes.items()
    }
    params["w_out"] = params["w_out"] * 3.0  # peaky enough that EOS wins now and then
    params["b_out"] = jnp.zeros((V,), jnp.float32).at[EOS].set(eos_bias)
    return params


def _encode(params, sources: np.ndarray) -> dict[str, jax.Array]:
    """sources [B, S] int with 0 padding -> initial cache with leading dim B."""
    mask = jnp.asarray(sources != PAD)
    keys = jnp.tanh(params["src_emb"][jnp.asarray(sources)])  # [B, S, D]
    mean = (keys * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return {
        "h": jnp.tanh(mean),
        "pos": jnp.zeros((len(sources),), jnp.int32),
        "keys": keys,
        "mask": mask,
    }


def _step(params, ids, cache):
    """tokens_to_logits of the toy model: ids [N] -> logits [N, V], attention [N, S], cache."""
    pos = cache["pos"].astype(jnp.float32)[:, None]
    h = jnp.tanh(
        params["emb"][ids] @ params["w_x"]
        + cache["h"] @ params["w_h"]
        + 0.3 * jnp.sin(pos * jnp.arange(1, D + 1))
    )  # [N, D]
    scores = jnp.einsum("nsd,nd->ns", cache["keys"], h @ params["w_q"])
    attention = jax.nn.softmax(jnp.where(cache["mask"], scores, -jnp.inf), axis=-1)  # [N, S]
    context = jnp.einsum("ns,nsd->nd", attention, cache["keys"])
    logits = jnp.concatenate([h, context], -1) @ params["w_out"] + params["b_out"]
    return logits, attention, dict(cache, h=h, pos=cache["pos"] + 1)


PARAMS = _make_params(0, eos_bias=-0.5)  # mixed: EOS-ended, truncated, early-stopped
# EOS-heavy: beam search stops early because no unfinished beam can beat the finished ones.
MODELS = {"mixed": PARAMS, "eos_heavy": _make_params(0, eos_bias=2.0)}
STEPS = {name: functools.partial(_step, params) for name, params in MODELS.items()}
# Eager reference loops call the same functions, compiled once per shape.
STEPS_JIT = {name: jax.jit(step) for name, step in STEPS.items()}
STEP = STEPS["mixed"]
SOURCES = np.array([[3, 4, 4, 2], [4, 2, 0, 0], [3, 3, 2, 0], [4, 3, 3, 2]], np.int32)


@functools.cache
def _jitted(kind: str, length: int, model: str = "mixed", **static):
    fn = {
        "greedy": decoding.greedy_search,
        "beam": decoding.beam_search,
        "sample": decoding.sample,
    }[kind]
    return jax.jit(
        functools.partial(
            fn, STEPS[model], bos_id=BOS, eos_id=EOS, max_decode_length=length, **static
        )
    )


def _teacher_force(cache, tokens: np.ndarray, model: str = "mixed"):
    """Runs the step along [BOS, y_1, ..., y_{L-1}] -> (log-probs [N, L, V], attention [N, L, S]).

    Log-probabilities are computed in NumPy (float64) with pad forbidden.
    """
    ids = np.concatenate([np.full((len(tokens), 1), BOS), tokens[:, :-1]], 1).astype(np.int32)
    logits, attention = [], []
    for t in range(tokens.shape[1]):
        step_logits, step_attention, cache = STEPS_JIT[model](jnp.asarray(ids[:, t]), cache)
        logits.append(np.asarray(step_logits, np.float64))
        attention.append(np.asarray(step_attention))
    logits = np.stack(logits, 1)
    logits[..., PAD] = -np.inf
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    return log_probs, np.stack(attention, 1)


def _sequence_log_prob(log_probs: np.ndarray, tokens: np.ndarray, lengths: np.ndarray):
    picked = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]  # [N, L]
    return np.where(np.arange(tokens.shape[1]) < lengths[:, None], picked, 0.0).sum(1)


def _check_attention(cache, tokens, lengths, attention):
    """The returned attention equals the teacher-forced attention, and is zero after the end."""
    _, forced = _teacher_force(cache, np.asarray(tokens))
    live = np.arange(tokens.shape[1])[None, :, None] < np.asarray(lengths)[:, None, None]
    np.testing.assert_allclose(attention, np.where(live, forced, 0.0), atol=1e-5)


def _check_well_formed(tokens, lengths, max_lengths):
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for row, n, m in zip(tokens, lengths, max_lengths, strict=True):
        assert 1 <= n <= m
        assert (row[n:] == PAD).all() and (row[:n] != PAD).all()
        assert (row[: n - 1] != EOS).all()
        assert row[n - 1] == EOS or n == m


def _gnmt(length, alpha):
    return ((5.0 + np.asarray(length, np.float64)) / 6.0) ** alpha


def _all_hypotheses(max_len: int) -> np.ndarray:
    """Every EOS-terminated sequence of length <= max_len and every truncated one of max_len."""
    words = [t for t in range(V) if t not in (PAD, EOS)]
    hyps = []
    for n in range(1, max_len + 1):
        for prefix in itertools.product(words, repeat=n - 1):
            hyps.append([*prefix, EOS])
            if n == max_len:
                hyps.extend([*prefix, w] for w in words)
    return np.array([h + [PAD] * (max_len - len(h)) for h in hyps], np.int32)


def _brute_force(source: np.ndarray, max_len: int, alpha: float, model: str = "mixed"):
    """All hypotheses sorted by GNMT-normalised score: (tokens [H, m], lengths [H], scores [H])."""
    hyps = _all_hypotheses(max_len)
    lengths = (hyps != PAD).sum(1)
    cache = _encode(MODELS[model], np.repeat(source[None], len(hyps), 0))
    log_probs, _ = _teacher_force(cache, hyps, model)
    scores = _sequence_log_prob(log_probs, hyps, lengths) / _gnmt(lengths, alpha)
    order = np.argsort(-scores, kind="stable")
    return hyps[order], lengths[order], scores[order]


def _numpy_greedy(source: np.ndarray, max_len: int) -> list[int]:
    cache = _encode(PARAMS, source[None])
    ids, out = np.array([BOS], np.int32), []
    for _ in range(max_len):
        logits, _, cache = STEPS_JIT["mixed"](jnp.asarray(ids), cache)
        logits = np.asarray(logits[0], np.float64)
        logits[PAD] = -np.inf
        out.append(int(np.argmax(logits)))
        if out[-1] == EOS:
            break
        ids = np.array(out[-1:], np.int32)
    return out


# --------------------------------------------------------------------------- greedy


def test_greedy_matches_numpy_step_by_step_argmax_and_teacher_forcing():
    cache = _encode(PARAMS, SOURCES)
    result = _jitted("greedy", 6)(cache, max_length=6)
    _check_well_formed(result.tokens, result.lengths, [6] * len(SOURCES))
    for b, source in enumerate(SOURCES):
        expected = _numpy_greedy(source, 6)
        assert np.asarray(result.tokens[b, : result.lengths[b]]).tolist() == expected
    _check_attention(cache, result.tokens, result.lengths, np.asarray(result.attention))
    log_probs, _ = _teacher_force(cache, np.asarray(result.tokens))
    expected_scores = _sequence_log_prob(
        log_probs, np.asarray(result.tokens), np.asarray(result.lengths)
    )
    np.testing.assert_allclose(result.scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_per_example_max_length_equals_decoding_each_example_with_its_limit():
    limits = np.array([1, 2, 4, 6], np.int32)
    result = _jitted("greedy", 6)(_encode(PARAMS, SOURCES), max_length=jnp.asarray(limits))
    _check_well_formed(result.tokens, result.lengths, limits)
    for b, m in enumerate(limits):
        alone = _jitted("greedy", 6)(_encode(PARAMS, SOURCES[b : b + 1]), max_length=int(m))
        np.testing.assert_array_equal(result.tokens[b], alone.tokens[0])
        assert int(result.lengths[b]) == int(alone.lengths[0])


def test_max_length_from_source_matches_formula():
    lengths = np.array([1, 3, 7, 40])
    got = decoding.max_length_from_source(lengths, a=1.5, b=2, cap=30)
    np.testing.assert_array_equal(got, np.clip(np.ceil(1.5 * lengths + 2), 1, 30))
    with pytest.raises(ValueError, match="cap"):
        decoding.max_length_from_source(lengths, cap=0)


def test_loop_exits_early_once_every_example_has_finished():
    """With a strong EOS bias everything ends after a few steps; the step runs only that often."""
    params = _make_params(1, eos_bias=4.0)
    calls = []

    def counting_step(ids, cache):
        jax.debug.callback(lambda: calls.append(1))
        return _step(params, ids, cache)

    result = jax.jit(
        functools.partial(
            decoding.greedy_search, counting_step, bos_id=BOS, eos_id=EOS, max_length=6
        )
    )(_encode(params, SOURCES))
    assert len(calls) == int(np.max(result.lengths)) < 6
    calls.clear()
    result = jax.jit(
        functools.partial(
            decoding.beam_search, counting_step, beam_size=2, bos_id=BOS, eos_id=EOS, max_length=6
        )
    )(_encode(params, SOURCES))
    assert 1 <= len(calls) < 6 and (np.asarray(result.lengths) < 6).all()


# --------------------------------------------------------------------------- beam search


def test_beam_size_one_equals_greedy():
    cache = _encode(PARAMS, SOURCES)
    greedy = _jitted("greedy", 6)(cache, max_length=6)
    for alpha in (0.0, 1.0):
        beam = _jitted("beam", 6, beam_size=1)(cache, max_length=6, alpha=alpha)
        np.testing.assert_array_equal(beam.tokens, greedy.tokens)
        np.testing.assert_array_equal(beam.lengths, greedy.lengths)
        np.testing.assert_allclose(beam.attention, greedy.attention, atol=1e-6)
        np.testing.assert_allclose(
            beam.scores * _gnmt(beam.lengths, alpha), greedy.scores, rtol=1e-5
        )


@pytest.mark.parametrize("model", ["mixed", "eos_heavy"])
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0, -0.5])
def test_wide_beam_equals_exhaustive_search(alpha, model):
    """A beam as wide as the hypothesis space returns the brute-force ranking (a prefix of it when
    it stops early because no unfinished beam can win); per-example limits differ."""
    limits = np.array([3, 2, 1, 3], np.int32)
    beam_size = len(_all_hypotheses(3))  # 40
    cache = _encode(MODELS[model], SOURCES)
    result = _jitted("beam", 3, model, beam_size=beam_size)(
        cache, max_length=jnp.asarray(limits), alpha=alpha
    )
    beams = result.beams
    counts = []
    for b, source in enumerate(SOURCES):
        tokens, lengths, scores = _brute_force(source, int(limits[b]), alpha, model)
        valid = np.isfinite(np.asarray(beams.scores[b]))
        count = int(valid.sum())
        counts.append(count / len(tokens))
        assert valid[:count].all() and count >= 1
        np.testing.assert_array_equal(beams.tokens[b, :count, : limits[b]], tokens[:count])
        np.testing.assert_array_equal(beams.lengths[b, :count], lengths[:count])
        np.testing.assert_allclose(beams.scores[b, :count], scores[:count], rtol=1e-5, atol=1e-6)
        assert (np.asarray(beams.tokens[b, count:]) == PAD).all()
        np.testing.assert_array_equal(result.tokens[b, : limits[b]], tokens[0])
    # the mixed model fills the whole beam; the EOS-heavy one stops before finishing all
    assert (min(counts) == 1.0) if model == "mixed" else (min(counts) < 1.0)


def test_narrow_beam_is_no_better_than_exhaustive_and_well_formed():
    alpha = 0.6
    cache = _encode(PARAMS, SOURCES)
    result = _jitted("beam", 3, beam_size=3)(cache, max_length=3, alpha=alpha)
    _check_well_formed(result.tokens, result.lengths, [3] * len(SOURCES))
    log_probs, _ = _teacher_force(cache, np.asarray(result.tokens))
    own = _sequence_log_prob(log_probs, np.asarray(result.tokens), np.asarray(result.lengths))
    np.testing.assert_allclose(result.scores, own / _gnmt(result.lengths, alpha), rtol=1e-5)
    for b, source in enumerate(SOURCES):
        assert float(result.scores[b]) <= _brute_force(source, 3, alpha)[2][0] + 1e-6


def test_beam_attention_equals_teacher_forced_attention_of_every_returned_beam():
    cache = _encode(PARAMS, SOURCES)
    result = _jitted("beam", 6, beam_size=3)(cache, max_length=6, alpha=0.6)
    beams = result.beams
    k = beams.tokens.shape[1]
    flat_cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, k, axis=0), cache)
    _check_attention(
        flat_cache,
        np.asarray(beams.tokens).reshape(-1, 6),
        np.asarray(beams.lengths).reshape(-1),
        np.asarray(beams.attention).reshape(-1, 6, S),
    )
    np.testing.assert_array_equal(result.attention, beams.attention[:, 0])
    scores = np.asarray(beams.scores)
    np.testing.assert_array_equal(scores, -np.sort(-scores, axis=1))  # best first


def test_beam_output_does_not_depend_on_batch_size_or_neighbours():
    decode = _jitted("beam", 6, beam_size=3)
    full = decode(_encode(PARAMS, SOURCES), max_length=6, alpha=0.6)
    order = np.array([2, 0, 3, 1, 0])  # permuted, one sentence twice, different batch size
    mixed = decode(_encode(PARAMS, SOURCES[order]), max_length=6, alpha=0.6)
    for i, b in enumerate(order):
        np.testing.assert_array_equal(mixed.beams.tokens[i], full.beams.tokens[b])
        np.testing.assert_allclose(mixed.beams.scores[i], full.beams.scores[b], rtol=1e-5)
    for b in range(len(SOURCES)):
        alone = decode(_encode(PARAMS, SOURCES[b : b + 1]), max_length=6, alpha=0.6)
        np.testing.assert_array_equal(alone.beams.tokens[0], full.beams.tokens[b])
        np.testing.assert_allclose(alone.attention[0], full.attention[b], atol=1e-6)


# --------------------------------------------------------------------------- sampling


def test_sampling_with_top_k_one_or_zero_temperature_equals_greedy():
    cache = _encode(PARAMS, SOURCES)
    greedy = _jitted("greedy", 6)(cache, max_length=6)
    rng = jax.random.PRNGKey(3)
    for static in ({"top_k": 1}, {"temperature": 0.0}, {"temperature": 1e-4}):
        sampled = _jitted("sample", 6, **static)(cache, rng, max_length=6)
        np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
        np.testing.assert_allclose(sampled.scores, greedy.scores, rtol=1e-6)


def test_samples_follow_the_filtered_distribution():
    """First-token frequencies of many samples match NumPy's temperature/top-k probabilities."""
    count, temperature = 4000, 0.7
    cache = _encode(PARAMS, np.repeat(SOURCES[:1], count, 0))
    sampled = _jitted("sample", 1, temperature=temperature, top_k=3)(
        cache, jax.random.PRNGKey(0), max_length=1
    )
    logits = np.asarray(
        STEP(jnp.array([BOS], jnp.int32), _encode(PARAMS, SOURCES[:1]))[0][0], np.float64
    )
    logits[PAD] = -np.inf
    logits[np.argsort(-logits)[3:]] = -np.inf
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    freq = np.bincount(np.asarray(sampled.tokens[:, 0]), minlength=V) / count
    assert (freq[probs == 0] == 0).all()
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / count))


def test_sampling_with_per_example_keys_does_not_depend_on_the_batch():
    keys = jax.random.split(jax.random.PRNGKey(7), len(SOURCES))
    decode = _jitted("sample", 6, temperature=1.0, top_p=0.9)
    full = decode(_encode(PARAMS, SOURCES), keys, max_length=6)
    _check_well_formed(full.tokens, full.lengths, [6] * len(SOURCES))
    _check_attention(_encode(PARAMS, SOURCES), full.tokens, full.lengths, full.attention)
    order = np.array([3, 1])
    part = decode(_encode(PARAMS, SOURCES[order]), keys[order], max_length=6)
    np.testing.assert_array_equal(part.tokens, full.tokens[order])


def _numpy_top_p(logits: np.ndarray, p: float) -> np.ndarray:
    out = np.full_like(logits, -np.inf)
    for i, row in enumerate(logits):
        probs = np.exp(row - row.max())
        probs /= probs.sum()
        mass, threshold = 0.0, None
        for q in sorted(probs, reverse=True):
            threshold = q
            mass += q
            if mass >= p:
                break
        keep = probs >= threshold
        out[i, keep] = row[keep]
    return out


def _numpy_top_k(logits: np.ndarray, k: int) -> np.ndarray:
    kth = np.sort(logits, axis=-1)[:, -k][:, None]
    return np.where(logits >= kth, logits, -np.inf)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_top_p_filter_matches_numpy(p):
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(size=(64, 7)) * 2, 1).astype(np.float32)  # with ties
    got = np.asarray(decoding.top_p_filter(jnp.asarray(logits), p))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(_numpy_top_p(logits, p)))
    np.testing.assert_array_equal(got[np.isfinite(got)], logits[np.isfinite(got)])


def test_top_k_and_combined_filter_match_numpy():
    rng = np.random.default_rng(2)
    logits = np.round(rng.normal(size=(64, 7)), 1).astype(np.float32)
    for k in (1, 3, 6):
        got = np.asarray(decoding.top_k_filter(jnp.asarray(logits), k))
        np.testing.assert_array_equal(got, _numpy_top_k(logits, k))
    np.testing.assert_array_equal(decoding.top_k_filter(jnp.asarray(logits), 0), logits)
    got = decoding.filter_logits(jnp.asarray(logits), temperature=0.5, top_k=4, top_p=0.7)
    expected = _numpy_top_p(_numpy_top_k(logits / 0.5, 4), 0.7)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# --------------------------------------------------------------------------- failure paths


def test_contract_violations_raise_clear_errors():
    cache = _encode(PARAMS, SOURCES)
    bad = dict(cache, pos=jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="different leading dimensions"):
        decoding.greedy_search(STEP, bad, bos_id=BOS, eos_id=EOS, max_length=3)

    def float_pos_step(ids, cache):
        logits, attention, new = STEP(ids, cache)
        return logits, attention, dict(new, pos=new["pos"].astype(jnp.float32))

    with pytest.raises(ValueError, match="same structure, shapes and dtypes"):
        decoding.beam_search(
            float_pos_step, cache, beam_size=2, bos_id=BOS, eos_id=EOS, max_length=3
        )
    with pytest.raises(ValueError, match="max_decode_length"):
        decoding.greedy_search(STEP, cache, bos_id=BOS, eos_id=EOS, max_length=jnp.ones(4, int))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        decoding.greedy_search(
            STEP, cache, bos_id=BOS, eos_id=EOS, max_length=jnp.ones(3, int), max_decode_length=4
        )
    with pytest.raises(ValueError, match="beam_size"):
        decoding.beam_search(STEP, cache, beam_size=0, bos_id=BOS, eos_id=EOS, max_length=3)
    with pytest.raises(ValueError, match="top_p"):
        decoding.sample(
            STEP, cache, jax.random.PRNGKey(0), bos_id=BOS, eos_id=EOS, max_length=3, top_p=0.0
        )
    with pytest.raises(ValueError, match="one key or 4 keys"):
        decoding.per_example_keys(jnp.zeros((3, 2), jnp.uint32), 4)


def test_beam_search_reorders_only_the_cache_leaves_the_step_changes():
    """Source keys [N, S, D] and mask [N, S] come back unchanged from the step: equal across an
    example's beams, they are never gathered; the recurrent state h [N, D] is."""
    import re

    beam = 3
    cache = _encode(PARAMS, SOURCES)
    text = str(
        jax.make_jaxpr(
            functools.partial(
                decoding.beam_search, STEP, beam_size=beam, bos_id=BOS, eos_id=EOS, max_length=4
            )
        )(cache)
    )
    gathered = set(re.findall(r":([a-z0-9]+\[[\d,]*\]) = gather", text))
    n = len(SOURCES) * beam
    assert f"f32[{n},{D}]" in gathered
    assert f"f32[{n},{S},{D}]" not in gathered and f"bool[{n},{S}]" not in gathered
