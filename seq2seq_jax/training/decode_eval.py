"""The task metric during training: decode a subset of a split and score it against references.

Shapes: B decode batch rows, S source bucket width (<= data.max_source_length), L output buffer
length.

Decoding is the decode CLI's path (`seq2seq_jax.inference.translate.BatchTranslator`: greedy, or
beam search when `eval.beam_size > 1`, over the model's incremental-decoding cache), so the
logged score is what `python -m seq2seq_jax.decode` reproduces from the checkpoint. Every host
decodes the same examples (the subset is small) and process 0 scores and logs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from seq2seq_jax.evaluation import metrics as eval_metrics
from seq2seq_jax.inference.translate import BatchTranslator, SearchConfig

PyTree = Any


def make_translator(
    model: nn.Module,
    search: SearchConfig,
    *,
    source_tokenizer: Any,
    target_tokenizer: Any,
    max_source_length: int,
    batch_size: int,
) -> BatchTranslator:
    """The task metric's translator, built once per training run: the decode CLI's batched path
    (`seq2seq_jax.inference.translate.BatchTranslator`: bucketed, compiled once per bucket), so
    a score logged during training is what the CLI reproduces from the checkpoint.

    `search` is normally `SearchConfig.from_config(config)`: greedy or beam search as in
    `config.eval`, each sentence's limit `ceil(length_ratio * source_length + length_offset)`
    capped by `max_length`, as in `python -m seq2seq_jax.decode`.
    """
    return BatchTranslator(
        model,
        search.validate(),
        source_tokenizer=source_tokenizer,
        target_tokenizer=target_tokenizer,
        max_source_length=max_source_length,
        batch_size=batch_size,
    )


def decode_texts(translator: BatchTranslator, params: PyTree, sources: Sequence[str]) -> list[str]:
    """Detokenised outputs for `sources`, in order."""
    return [t.text for t in translator.translate(params, sources)]


def score(hypotheses: Sequence[str], references: Sequence[str], metric: str) -> dict[str, float]:
    """`{"exact_match": %}` or `{"bleu", "chrf", "exact_match"}` (sacreBLEU), in percent."""
    exact = eval_metrics.exact_match(hypotheses, references)
    if metric == "exact_match":
        return {"exact_match": exact}
    if metric == "bleu":
        return {
            "bleu": eval_metrics.corpus_bleu(hypotheses, references).score,
            "chrf": eval_metrics.corpus_chrf(hypotheses, references).score,
            "exact_match": exact,
        }
    raise ValueError(f"config.eval.task_metric={metric!r} is not 'exact_match' or 'bleu'")
