"""Tests of seq2seq_jax.evaluation: metrics against sacreBLEU's own API, plots and alignments."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import sacrebleu

from seq2seq_jax.evaluation import (
    AlignmentRecord,
    corpus_bleu,
    corpus_chrf,
    exact_match,
    plot_attention,
    read_alignments_jsonl,
    write_alignments_jsonl,
)

HYPS = ["The cat sat on the mat.", "A dog runs in the park!", "", "Zwei Männer  spielen Fußball."]
REFS = [
    "The cat is sitting on the mat.",
    "A dog is running in the park!",
    "Nothing here.",
    "Zwei Männer spielen Fußball.",
]
REFS2 = ["A cat sat on the mat.", "The dog runs through the park!", "", "Two men play football."]


@pytest.mark.parametrize(
    "options",
    [{}, {"tokenize": "intl"}, {"tokenize": "char"}, {"lowercase": True, "smooth_method": "floor"}],
)
def test_bleu_equals_sacrebleu(options):
    score, signature = corpus_bleu(HYPS, REFS, **options)
    metric = sacrebleu.BLEU(**options)
    expected = metric.corpus_score(HYPS, [REFS])
    assert score == pytest.approx(expected.score, abs=1e-9)
    assert signature == str(metric.get_signature())
    assert "nrefs:1" in signature and f"version:{sacrebleu.__version__}" in signature
    assert f"tok:{options.get('tokenize', '13a')}" in signature


def test_bleu_and_chrf_with_two_reference_streams_equal_sacrebleu():
    score, signature = corpus_bleu(HYPS, [REFS, REFS2])
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score, abs=1e-9)
    assert "nrefs:2" in signature
    chrf, chrf_signature = corpus_chrf(HYPS, [REFS, REFS2], word_order=2)
    assert chrf == pytest.approx(
        sacrebleu.CHRF(word_order=2).corpus_score(HYPS, [REFS, REFS2]).score, abs=1e-9
    )
    assert "nw:2" in chrf_signature and "nrefs:2" in chrf_signature


def test_chrf_equals_sacrebleu_and_perfect_output_scores_100():
    score, signature = corpus_chrf(HYPS, REFS)
    assert score == pytest.approx(sacrebleu.CHRF().corpus_score(HYPS, [REFS]).score, abs=1e-9)
    assert "nc:6" in signature and "nw:0" in signature
    assert corpus_bleu(REFS, REFS).score == pytest.approx(100.0)
    assert corpus_chrf(REFS, REFS).score == pytest.approx(100.0)


def test_exact_match():
    assert exact_match(HYPS, REFS) == pytest.approx(25.0)  # only the whitespace-normalised last
    assert exact_match(HYPS, REFS, normalize_whitespace=False) == pytest.approx(0.0)
    assert exact_match(["", " a "], ["", "a"]) == pytest.approx(100.0)
    assert exact_match([], []) == 0.0


def test_metric_input_errors_are_clear():
    with pytest.raises(ValueError, match="reference stream 0 has 3 lines but there are 4"):
        corpus_bleu(HYPS, REFS[:3])
    with pytest.raises(ValueError, match="reference stream 1 has 2 lines"):
        corpus_chrf(HYPS, [REFS, REFS2[:2]])
    with pytest.raises(ValueError, match="has 1 lines but there are 2"):
        exact_match(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="line 1 is NoneType"):
        corpus_bleu(["a", None], ["a", "b"])
    with pytest.raises(TypeError, match="not one string"):
        corpus_bleu("a cat", ["a cat"])
    with pytest.raises(ValueError, match="unknown sacreBLEU tokenize='moses'"):
        corpus_bleu(HYPS, REFS, tokenize="moses")
    for fn in (corpus_bleu, corpus_chrf):
        with pytest.raises(ValueError, match=f"{fn.__name__}: the corpus is empty"):
            fn([], [])
    with pytest.raises(ValueError, match="has 1 lines but there are 0"):
        corpus_bleu([], ["a"])
    assert exact_match([], []) == 0.0


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plot_attention_writes_a_png_that_grows_with_the_sentences(tmp_path):
    rng = np.random.default_rng(0)
    source = "▁Ein ▁Mann ▁läuft ▁über ▁die ▁Straße . </s>".split()
    output = "▁A ▁man ▁walks </s>".split()
    weights = rng.dirichlet(np.ones(len(source)), size=len(output))  # [T, S]
    small = plot_attention(weights, source, output, tmp_path / "a" / "small.png", dpi=100)
    width, height = _png_size(small)
    # 0.35 inch a token plus fixed margins, at 100 dpi
    assert width == pytest.approx(100 * (2.6 + 0.35 * len(source)), abs=2)
    assert height == pytest.approx(100 * (1.6 + 0.35 * len(output)), abs=2)
    long_output = output * 5
    big = plot_attention(
        np.tile(weights, (5, 1)), source, long_output, tmp_path / "big.png", title="sentence 0"
    )
    assert _png_size(big)[1] > height and _png_size(big)[0] == width


def test_plot_attention_rejects_mismatched_shapes(tmp_path):
    weights = np.full((3, 4), 0.25)
    with pytest.raises(
        ValueError,
        match=r"bad\.png\): attention weights have shape \(3, 4\) but "
        r"there are 2 output tokens and 4 source tokens",
    ):
        plot_attention(weights, list("abcd"), ["x", "y"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="must be 2-D"):
        plot_attention(np.ones(4), list("abcd"), ["x"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="NaN"):
        plot_attention(np.full((1, 4), np.nan), list("abcd"), ["x"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_attention(np.zeros((0, 4)), list("abcd"), [], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_alignments_jsonl_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    records = [
        AlignmentRecord(0, ["a", "b", "c"], ["x", "</s>"], rng.random((2, 3))),
        {"index": 5, "source_tokens": ["ü"], "output_tokens": ["y"], "weights": [[1.0]]},
    ]
    path = tmp_path / "out" / "align.jsonl"
    assert write_alignments_jsonl(path, records) == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["source_tokens"] == ["ü"]
    back = read_alignments_jsonl(path)
    assert [r.index for r in back] == [0, 5]
    np.testing.assert_allclose(back[0].weights, records[0].weights, atol=1e-6)
    assert back[0].output_tokens == ["x", "</s>"]
    with pytest.raises(ValueError, match="alignment record 7: .*shape \\(2, 2\\)"):
        write_alignments_jsonl(path, [AlignmentRecord(7, ["a"], ["x", "y"], np.ones((2, 2)))])
    with pytest.raises(KeyError, match="lacks keys \\['weights'\\]"):
        write_alignments_jsonl(path, [{"index": 0, "source_tokens": [], "output_tokens": []}])
