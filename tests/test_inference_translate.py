"""The decode CLI's library: batch planning, over-length policy, line I/O, option resolution, and
batched decoding of a small random-weight RNNsearch checked sentence by sentence."""

import math

import jax
import numpy as np
import pytest

from seq2seq_jax import models
from seq2seq_jax.data import CharTokenizer
from seq2seq_jax.inference import run as run_lib
from seq2seq_jax.inference.translate import (
    BatchTranslator,
    SearchConfig,
    _one_line,
    batch_rows,
    bucket_widths,
    encode_sources,
    plan_batches,
)
from seq2seq_jax.inference.workdir import RestoredModel
from seq2seq_jax.training.experiment import base_config


def test_bucket_widths_and_rows():
    assert bucket_widths(40) == (8, 16, 32, 40)
    assert bucket_widths(64) == (8, 16, 32, 64)
    assert bucket_widths(8) == (8,) and bucket_widths(5) == (5,)
    assert [batch_rows(n, 64) for n in (1, 2, 3, 5, 64, 65, 1000)] == [1, 2, 4, 8, 64, 64, 64]
    with pytest.raises(ValueError, match="batch_size"):
        batch_rows(3, 0)


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_covers_each_sentence_once_sorted_in_the_smallest_bucket(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 41, size=int(rng.integers(1, 60)))
    batch_size = int(rng.integers(1, 9))
    widths = bucket_widths(40)
    batches = plan_batches(lengths, batch_size=batch_size, widths=widths)
    order = np.concatenate([b.indices for b in batches]) if batches else np.zeros(0, int)
    assert sorted(order.tolist()) == [i for i, n in enumerate(lengths) if n > 0]
    assert np.all(np.diff(lengths[order]) >= 0)  # Sorted by length.
    for b in batches:
        assert 1 <= len(b.indices) <= batch_size
        assert b.width == min(w for w in widths if w >= lengths[b.indices].max())
    assert all(len(b.indices) == batch_size for b in batches[:-1])
    with pytest.raises(ValueError, match="widest bucket 40"):
        plan_batches([41], batch_size=2, widths=widths)


def test_encode_sources_truncates_keeping_eos_and_skips_blank_lines():
    tok = CharTokenizer.train(["abcdef "])
    ids, truncated = encode_sources(["abc", "", "  ", "abcdef", "abcdefa"], tok, 7)
    assert truncated == [4]
    assert [len(x) for x in ids] == [4, 0, 0, 7, 7]
    assert ids[0].tolist() == [*tok.encode("abc"), tok.eos_id]
    assert ids[4].tolist() == [*tok.encode("abcdef"), tok.eos_id]
    with pytest.raises(ValueError, match="max_source_length"):
        encode_sources(["a"], tok, 1)


def test_read_and_write_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("a\r\n\nb c\nü".encode())
    assert run_lib.read_lines(str(path)) == ["a", "", "b c", "ü"]
    path.write_bytes(b"a\n\n")
    assert run_lib.read_lines(str(path)) == ["a", ""]
    path.write_bytes(b"")
    assert run_lib.read_lines(str(path)) == []
    path.write_bytes(b"ok\nok\nbad \xff\n")
    with pytest.raises(ValueError, match=r"in.txt, line 3: not valid UTF-8"):
        run_lib.read_lines(str(path))
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        run_lib.read_lines(str(tmp_path / "absent.txt"))
    out = tmp_path / "sub" / "out.txt"
    run_lib.write_lines(str(out), ["x", "", "ü"])
    assert out.read_text(encoding="utf-8") == "x\n\nü\n"
    assert run_lib.read_lines(str(out)) == ["x", "", "ü"]


def test_outputs_never_break_lines():
    assert _one_line("a\nb") == "a b" and _one_line("a\u2028b\r\nc") == "a b c"
    assert _one_line("") == "" and _one_line("plain") == "plain"


def _restored(name="rnnsearch", **config_overrides) -> RestoredModel:
    """A RestoredModel of a config only (option resolution reads no parameters)."""
    config = base_config(name)
    for key, value in config_overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    model_config = models.ModelConfig.from_config(
        config.model, source_vocab_size=10, target_vocab_size=10, bos_id=1, eos_id=2
    )
    return RestoredModel(
        config, model_config, models.build_model(model_config), None, None, None, 0, None
    )


def test_search_options_come_from_flags_then_config_then_defaults():
    restored = _restored(**{"eval.beam_size": 5, "eval.alpha": 0.8, "data.max_target_length": 30})
    search = run_lib.search_config(run_lib.DecodeOptions(workdir="w"), restored)
    assert (search.beam_size, search.alpha, search.max_length) == (5, 0.8, 30)
    options = run_lib.DecodeOptions(workdir="w", beam_size=1, alpha=0.0, max_length=7)
    assert run_lib.search_config(options, restored).mode == "greedy"
    sampled = run_lib.search_config(run_lib.DecodeOptions(workdir="w", sample=True), restored)
    assert sampled.mode == "sample" and sampled.beam_size == 1
    with pytest.raises(ValueError, match="beam_size=5"):
        run_lib.search_config(
            run_lib.DecodeOptions(workdir="w", sample=True, beam_size=5), restored
        )
    with pytest.raises(ValueError, match="top_p"):
        run_lib.search_config(run_lib.DecodeOptions(workdir="w", top_p=0.0), restored)
    del restored.config.eval["beam_size"]  # An older run's config: the CLI's default beam.
    search = run_lib.search_config(run_lib.DecodeOptions(workdir="w"), restored)
    assert search.beam_size == run_lib.DEFAULT_BEAM_SIZE


def test_transformer_lengths_are_capped_by_its_positions():
    restored = _restored(
        "transformer",
        **{"model.max_len": 24, "data.max_target_length": 64, "data.max_source_length": 20},
    )
    assert run_lib.search_config(run_lib.DecodeOptions(workdir="w"), restored).max_length == 24
    with pytest.raises(ValueError, match="--max_length=30 exceeds the model's max_len 24"):
        run_lib.search_config(run_lib.DecodeOptions(workdir="w", max_length=30), restored)
    assert run_lib.max_source_length(run_lib.DecodeOptions(workdir="w"), restored) == 20
    with pytest.raises(ValueError, match="--max_source_length=25"):
        run_lib.max_source_length(
            run_lib.DecodeOptions(workdir="w", max_source_length=25), restored
        )


@pytest.fixture(scope="module")
def random_model():
    tok = CharTokenizer.train(["abcdefgh 0123456789"])
    config = models.ModelConfig(
        source_vocab_size=tok.vocab_size,
        target_vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        emb_dim=8,
        encoder_hidden_size=8,
        decoder_hidden_size=16,
        deterministic=True,
    )
    model = models.build_model(config)
    params = models.init_variables(model, jax.random.PRNGKey(3))["params"]
    return model, params, tok


def _translator(random_model, batch_size: int, **search) -> BatchTranslator:
    model, _, tok = random_model
    return BatchTranslator(
        model,
        SearchConfig(max_length=16, **search),
        source_tokenizer=tok,
        target_tokenizer=tok,
        max_source_length=8,
        batch_size=batch_size,
    )


SOURCES = ["ab 12", "", "h", "0 9 a", "abcdefgh0"]  # The last one is over-long (10 > 8).


def test_sampling_is_per_sentence_and_limits_follow_the_source(random_model):
    _, params, tok = random_model
    translator = _translator(random_model, 4, sample=True, temperature=1.5, seed=7)
    together = translator.translate(params, SOURCES, attention_for=range(len(SOURCES)))
    assert translator.stats.sentences == 4 and translator.stats.batches == 1
    assert [t.truncated for t in together] == [False, False, False, False, True]
    for i, t in enumerate(together):
        assert t.text == tok.decode(t.output_ids.tolist())
        if not SOURCES[i]:
            assert t.text == "" and t.output_ids.size == 0
            continue
        limit = min(16, math.ceil(1.5 * len(t.source_ids) + 10))
        ends = t.output_ids.size and t.output_ids[-1] == tok.eos_id
        assert (ends and t.output_ids.size <= limit) or t.output_ids.size == limit
        assert tok.eos_id not in t.output_ids[:-1].tolist()
        assert t.attention.shape == (t.output_ids.size, t.source_ids.size)
    # Sentence i samples with fold_in(seed, i): the same tokens when decoded in another batch
    # (keys follow the index, so put each sentence at its own index among blank lines).
    alone = _translator(random_model, 1, sample=True, temperature=1.5, seed=7)
    for i, t in enumerate(together):
        if SOURCES[i]:
            texts = [""] * len(SOURCES)
            texts[i] = SOURCES[i]
            out = alone.translate(params, texts)[i]
            np.testing.assert_array_equal(out.output_ids, t.output_ids)


def test_zero_temperature_sampling_is_greedy(random_model):
    _, params, _ = random_model
    greedy = _translator(random_model, 4).translate(params, SOURCES)
    cold = _translator(random_model, 4, sample=True, temperature=0.0).translate(params, SOURCES)
    assert [t.output_ids.tolist() for t in cold] == [t.output_ids.tolist() for t in greedy]


def test_blank_inputs_are_not_decoded(random_model):
    _, params, _ = random_model
    translator = _translator(random_model, 4)
    assert translator.translate(params, []) == []
    out = translator.translate(params, ["", "   "])
    assert [(t.text, t.output_ids.size) for t in out] == [("", 0), ("", 0)]
    assert translator.stats.sentences == 0 and translator.stats.batches == 0


def test_search_defaults_are_declared_once_in_search_config():
    """Every default of how to decode comes from `SearchConfig`: the decode CLI's options and
    flags, the experiment config's eval section, the library's searches."""
    import inspect

    from absl import flags as absl_flags

    from seq2seq_jax import decoding
    from seq2seq_jax.decoding.options import SearchConfig
    from seq2seq_jax.training import experiment

    defaults = SearchConfig()
    options = run_lib.DecodeOptions(workdir="w")
    for name in (
        "length_ratio",
        "length_offset",
        "sample",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "nbest",
    ):
        assert getattr(options, name) == getattr(defaults, name), name
    eval_cfg = experiment.default_eval_config()
    assert (eval_cfg.beam_size, eval_cfg.alpha) == (defaults.beam_size, defaults.alpha)
    beam = inspect.signature(decoding.beam_search).parameters
    assert beam["alpha"].default == defaults.alpha
    limit = inspect.signature(decoding.max_length_from_source).parameters
    assert (limit["a"].default, limit["b"].default) == (
        defaults.length_ratio,
        defaults.length_offset,
    )
    from seq2seq_jax import decode  # noqa: F401  (defines the flags)

    for name in (
        "length_ratio",
        "length_offset",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "batch_size",
        "num_plots",
        "nbest",
        "nbest_format",
        "score_format",
        "alignment_format",
        "stream",
    ):
        assert absl_flags.FLAGS[name].default == getattr(options, name), name


def test_search_config_from_an_experiment_config():
    from seq2seq_jax.decoding.options import SearchConfig
    from seq2seq_jax.training import experiment

    config = experiment.base_config()
    config.eval.beam_size, config.eval.alpha = 5, 1.0
    config.data.max_target_length, config.eval.max_decode_length = 40, 0
    search = SearchConfig.from_config(config)
    assert (search.beam_size, search.alpha, search.max_length) == (5, 1.0, 40)
    config.eval.max_decode_length = 12
    assert SearchConfig.from_config(config, alpha=0.0).max_length == 12
    assert SearchConfig.from_config(config, alpha=0.0).alpha == 0.0


# --- n-best, forced decoding (scoring) and ensembles, on both model families (issue 15) -------
# The RNNsearch is `random_model` and the settings are `_translator`'s, so the greedy programs
# compiled by the tests above are reused.


@pytest.fixture(scope="module")
def transformer_model(random_model):
    tok = random_model[2]
    config = models.ModelConfig(
        name="transformer",
        source_vocab_size=tok.vocab_size,
        target_vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        emb_dim=8,
        num_heads=2,
        mlp_dim=16,
        encoder_layers=1,
        decoder_layers=1,
        max_len=32,
        deterministic=True,
    )
    model = models.build_model(config)
    return model, models.init_variables(model, jax.random.PRNGKey(5))["params"], tok


@pytest.mark.parametrize(("family", "dtype"), [("rnnsearch", None), ("transformer", "bfloat16")])
def test_nbest_and_forced_scores(family, dtype, random_model, transformer_model):
    """Greedy's own output scores to greedy's score; every n-best hypothesis' log_prob is its
    forced score, and both match the teacher-forced `model.apply` reference."""
    from forced_reference import forced_scores

    model, params, tok = random_model if family == "rnnsearch" else transformer_model
    if dtype is not None:
        config, params = models.with_dtype(model.config, params, dtype)
        model = models.build_model(config)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype is None else dict(rtol=2e-2, atol=0.1)
    greedy = _translator((model, params, tok), 4).translate(params, SOURCES)
    beam = _translator((model, params, tok), 4, beam_size=3, nbest=3).translate(params, SOURCES)
    hyps = [(i, h) for i, t in enumerate(beam) for h in t.hypotheses or []]
    for t in beam:
        if t.hypotheses is not None:
            assert t.hypotheses[0].text == t.text and t.hypotheses[0].score == t.score
            scores = [h.score for h in t.hypotheses]
            assert scores == sorted(scores, reverse=True) and 1 <= len(scores) <= 3
    # One forced-decoding call scores greedy's outputs (blank lines included) and the n-best.
    sources = SOURCES + [SOURCES[i] for i, _ in hyps]
    targets = [t.output_ids for t in greedy] + [h.output_ids for _, h in hyps]
    forced = _translator((model, params, tok), 4).score(params, sources, targets)
    for g, f in zip(greedy, forced[: len(SOURCES)], strict=True):  # Greedy's own score.
        assert f.score == pytest.approx(g.score, rel=1e-6, abs=1e-5) and g.log_prob == g.score
        assert f.truncated == g.truncated and f.output_ids.size == g.output_ids.size
    for (_, h), f in zip(hyps, forced[len(SOURCES) :], strict=True):
        assert h.log_prob == pytest.approx(h.score * ((5 + len(h.output_ids)) / 6) ** 0.6, rel=1e-6)
        assert h.log_prob == pytest.approx(f.score, rel=1e-5, abs=1e-4)
    real = [f for f in forced if f.output_ids.size]
    np.testing.assert_allclose(
        [f.score for f in real],
        forced_scores(
            [(model, params)], [f.source_ids for f in real], [f.output_ids for f in real]
        ),
        **tol,
    )


def test_mixed_family_ensemble_averages_log_probabilities(random_model, transformer_model):
    """An RNNsearch + Transformer ensemble (same vocabulary): greedy, sampling and forced scores
    follow the normalised mean of the two models' teacher-forced log-probabilities (an ensemble
    of a model with itself: tests/test_decode_cli.py)."""
    from forced_reference import forced_scores

    members = [random_model[:2], transformer_model[:2]]
    modules, params = [m for m, _ in members], [p for _, p in members]
    greedy = _translator((modules, None, random_model[2]), 4).translate(params, SOURCES)
    sampled = _translator((modules, None, random_model[2]), 4, sample=True, seed=3).translate(
        params, SOURCES
    )
    scored = _translator((modules, None, random_model[2]), 4).score(
        params, SOURCES, ["12", "", "a", "", "0"]
    )
    eos = random_model[2].eos_id  # A blank source is not scored; a blank target is EOS alone.
    assert scored[1].output_ids.size == 0 and scored[3].output_ids.tolist() == [eos]
    assert scored[2].output_ids.tolist() == [*random_model[2].encode("a"), eos]
    real = [t for t in [*greedy, *sampled, *scored] if t.output_ids.size]
    np.testing.assert_allclose(
        [t.score for t in real],
        forced_scores(members, [t.source_ids for t in real], [t.output_ids for t in real]),
        rtol=1e-5,
        atol=1e-4,
    )
    with pytest.raises(ValueError, match="2 models needs as many parameter trees, got 1"):
        _translator((modules, None, random_model[2]), 4).translate(params[:1], SOURCES)
    with pytest.raises(
        ValueError,
        match=r"^line 2: the target has 41 tokens \(EOS included\), "
        "more than the model's max_len 32$",
    ):
        _translator((modules, None, random_model[2]), 4).score(params, ["a", "b"], ["", "0" * 40])
