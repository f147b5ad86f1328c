"""Corpus metrics: sacreBLEU BLEU and chrF (with their reproducibility signatures), exact match.

Scores are in percent (0-100), like sacreBLEU's. Hypotheses and references are detokenised text,
one string per sentence; empty strings are valid sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import sacrebleu


class MetricResult(NamedTuple):
    """A corpus score and the sacreBLEU signature that makes it reproducible."""

    score: float
    signature: str


def _reference_streams(
    hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """Validates inputs; returns sacreBLEU's list of reference streams (one list per reference)."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a sequence of sentences, not one string.")
    if isinstance(references, str):
        raise TypeError("references must be a sequence of sentences, not one string.")
    streams = (
        [list(references)]
        if not references or isinstance(references[0], str)
        else [list(stream) for stream in references]
    )
    for i, stream in enumerate([list(hypotheses), *streams]):
        name = "hypotheses" if i == 0 else f"reference stream {i - 1}"
        bad = next((j for j, line in enumerate(stream) if not isinstance(line, str)), None)
        if bad is not None:
            raise TypeError(f"{name}: line {bad} is {type(stream[bad]).__name__}, not str.")
        if len(stream) != len(hypotheses):
            raise ValueError(
                f"{name} has {len(stream)} lines but there are {len(hypotheses)} "
                "hypotheses; every reference stream needs one line per hypothesis."
            )
    return streams


def _nonempty_streams(
    name: str, hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """`_reference_streams`, refusing an empty corpus (sacreBLEU fails on it with IndexError)."""
    streams = _reference_streams(hypotheses, references)
    if not hypotheses:
        raise ValueError(
            f"{name}: the corpus is empty (no hypotheses, no references); "
            "corpus scores are undefined without sentences."
        )
    return streams


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    tokenize: str = "13a",
    lowercase: bool = False,
    smooth_method: str = "exp",
) -> MetricResult:
    """Corpus BLEU computed by sacreBLEU.

    Args:
      hypotheses: one detokenised output per sentence.
      references: one reference per sentence, or several reference streams (a sequence of
        sequences, each with one line per hypothesis).
      tokenize: sacreBLEU tokenizer ("13a", "intl", "char", "zh", "none", ...).
      lowercase: case-insensitive BLEU.
      smooth_method: "exp", "floor", "add-k" or "none".

    Returns:
      `MetricResult(score, signature)`, e.g. signature
      "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0".

    Raises:
      ValueError: if a reference stream's length differs from the hypotheses', the corpus is
        empty (no score is defined), or an option is unknown. TypeError: on non-string lines.
    """
    streams = _nonempty_streams("corpus_bleu", hypotheses, references)
    if tokenize not in sacrebleu.BLEU.TOKENIZERS:
        raise ValueError(
            f"unknown sacreBLEU tokenize={tokenize!r}; one of {sorted(sacrebleu.BLEU.TOKENIZERS)}."
        )
    if smooth_method not in sacrebleu.BLEU.SMOOTH_DEFAULTS:
        raise ValueError(
            f"unknown smooth_method={smooth_method!r}; one of "
            f"{sorted(sacrebleu.BLEU.SMOOTH_DEFAULTS)}."
        )
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method)
    score = metric.corpus_score(list(hypotheses), streams)
    return MetricResult(float(score.score), str(metric.get_signature()))


def corpus_chrf(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    word_order: int = 0,
    lowercase: bool = False,
) -> MetricResult:
    """Corpus chrF (word_order=0) or chrF++ (word_order=2) computed by sacreBLEU.

    Args:
      hypotheses: one detokenised output per sentence.
      references: one reference per sentence, or several reference streams.
      word_order: word n-gram order (0: chrF, 2: chrF++).
      lowercase: case-insensitive.

    Returns:
      `MetricResult(score, signature)`.

    Raises:
      ValueError / TypeError: as `corpus_bleu`.
    """
    streams = _nonempty_streams("corpus_chrf", hypotheses, references)
    metric = sacrebleu.CHRF(word_order=word_order, lowercase=lowercase)
    score = metric.corpus_score(list(hypotheses), streams)
    return MetricResult(float(score.score), str(metric.get_signature()))


def _normalise(line: str) -> str:
    return re.sub(r"\s+", " ", line).strip()


def exact_match(
    hypotheses: Sequence[str], references: Sequence[str], *, normalize_whitespace: bool = True
) -> float:
    """Percentage of hypotheses identical to their reference.

    Args:
      hypotheses: one output per sentence.
      references: one reference per sentence (a single stream).
      normalize_whitespace: compare after collapsing runs of whitespace and stripping the ends.

    Returns:
      Exact-match rate in percent; 0.0 for an empty corpus.

    Raises:
      ValueError: on different numbers of lines. TypeError: on non-string lines.
    """
    (refs,) = _reference_streams(hypotheses, list(references))
    if not refs:
        return 0.0
    norm = _normalise if normalize_whitespace else (lambda line: line)
    hits = sum(norm(h) == norm(r) for h, r in zip(hypotheses, refs, strict=True))
    return 100.0 * hits / len(refs)
