"""Evaluation: sacreBLEU/chrF/exact-match corpus metrics and attention alignment plots."""

from seq2seq_jax.evaluation.metrics import MetricResult, corpus_bleu, corpus_chrf, exact_match
from seq2seq_jax.evaluation.plots import (
    AlignmentRecord,
    plot_attention,
    read_alignments_jsonl,
    write_alignments_jsonl,
)

__all__ = [
    "AlignmentRecord",
    "MetricResult",
    "corpus_bleu",
    "corpus_chrf",
    "exact_match",
    "plot_attention",
    "read_alignments_jsonl",
    "write_alignments_jsonl",
]
