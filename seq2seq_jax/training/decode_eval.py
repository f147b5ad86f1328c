"""The task metric during training: decode a subset of a split and score it against references.

Shapes: B decode batch rows, S source bucket width (<= data.max_source_length), L output buffer
length.

Decoding is the decode CLI's path (`seq2seq_jax.inference.translate.BatchTranslator`: greedy, or
beam search when `eval.beam_size > 1`, over the model's incremental-decoding cache), so the
logged score is what `python -m seq2seq_jax.decode` reproduces from the checkpoint. Every host
decodes the same examples (the subset is small) and process 0 scores and logs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from seq2seq_jax.evaluation import metrics as eval_metrics
from seq2seq_jax.inference.translate import BatchTranslator, SearchConfig

PyTree = Any


@dataclasses.dataclass(frozen=True)
class EvalDecoder:
    """The decode-mode model and search of the task metric (`make_decode_fn`)."""

    model: nn.Module
    search: SearchConfig
    bos_id: int
    eos_id: int


def make_decode_fn(
    model: nn.Module,
    *,
    bos_id: int,
    eos_id: int,
    max_decode_length: int,
    beam_size: int = 1,
    alpha: float = 0.6,
) -> EvalDecoder:
    """The decoder `decode_texts` runs: greedy, or beam search when `beam_size > 1`.

    `max_decode_length` caps every output; each sentence's limit is also
    `ceil(1.5 * source_length + 10)`, as in `python -m seq2seq_jax.decode`.
    """
    search = SearchConfig(beam_size=beam_size, alpha=alpha, max_length=max_decode_length)
    return EvalDecoder(model, search.validate(), bos_id, eos_id)


def decode_texts(
    decode_fn: EvalDecoder,
    params: PyTree,
    sources: Sequence[str],
    *,
    source_tokenizer: Any,
    target_tokenizer: Any,
    max_source_length: int,
    batch_size: int,
) -> list[str]:
    """Detokenised outputs for `sources`, in order, through the decode CLI's batched path
    (`seq2seq_jax.inference.translate.BatchTranslator`: bucketed, compiled once per bucket)."""
    if (decode_fn.bos_id, decode_fn.eos_id) != (target_tokenizer.bos_id, target_tokenizer.eos_id):
        raise ValueError(f"decoder BOS/EOS ids {(decode_fn.bos_id, decode_fn.eos_id)} differ "
                         f"from the target tokenizer's "
                         f"{(target_tokenizer.bos_id, target_tokenizer.eos_id)}")
    translator = BatchTranslator(decode_fn.model, decode_fn.search,
                                 source_tokenizer=source_tokenizer,
                                 target_tokenizer=target_tokenizer,
                                 max_source_length=max_source_length, batch_size=batch_size)
    return [t.text for t in translator.translate(params, sources)]


def score(hypotheses: Sequence[str], references: Sequence[str], metric: str) -> dict[str, float]:
    """`{"exact_match": %}` or `{"bleu", "chrf", "exact_match"}` (sacreBLEU), in percent."""
    exact = eval_metrics.exact_match(hypotheses, references)
    if metric == "exact_match":
        return {"exact_match": exact}
    if metric == "bleu":
        return {"bleu": eval_metrics.corpus_bleu(hypotheses, references).score,
                "chrf": eval_metrics.corpus_chrf(hypotheses, references).score,
                "exact_match": exact}
    raise ValueError(f"config.eval.task_metric={metric!r} is not 'exact_match' or 'bleu'")
