"""The task metric during training: decode a subset of a split and score it against references.

Shapes: B decode batch rows, S = data.max_source_length, L = output buffer length.

Decoding uses `seq2seq_jax.decoding` (greedy, or beam search when `eval.beam_size > 1`) through
the model's incremental-decoding cache. Every host decodes the same examples (the subset is small)
and process 0 scores and logs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from seq2seq_jax import decoding, models
from seq2seq_jax.evaluation import metrics as eval_metrics

PyTree = Any


def make_decode_fn(
    model: nn.Module,
    *,
    bos_id: int,
    eos_id: int,
    max_decode_length: int,
    beam_size: int = 1,
    alpha: float = 0.6,
) -> Callable[[PyTree, np.ndarray], tuple[jax.Array, jax.Array]]:
    """A jitted `fn(params, inputs [B, S]) -> (tokens [B, L], lengths [B])`."""

    def decode(params: PyTree, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        variables = {"params": params}
        cache = models.init_decode_cache(model, variables, inputs,
                                         max_decode_length=max_decode_length)
        step = models.make_tokens_to_logits(model, variables)
        if beam_size > 1:
            result = decoding.beam_search(step, cache, beam_size=beam_size, bos_id=bos_id,
                                          eos_id=eos_id, max_length=max_decode_length,
                                          alpha=alpha)
        else:
            result = decoding.greedy_search(step, cache, bos_id=bos_id, eos_id=eos_id,
                                            max_length=max_decode_length)
        return result.tokens, result.lengths

    return jax.jit(decode)


def encode_sources(texts: Sequence[str], tokenizer: Any, max_length: int, rows: int) -> np.ndarray:
    """Token ids + EOS, truncated to `max_length`, padded to `[rows, max_length]` (pad rows 0)."""
    out = np.zeros((rows, max_length), np.int32)
    for i, ids in enumerate(tokenizer.encode_batch(list(texts))):
        ids = list(ids[: max_length - 1]) + [tokenizer.eos_id]
        out[i, : len(ids)] = ids
    return out


def decode_texts(
    decode_fn: Callable[..., Any],
    params: PyTree,
    sources: Sequence[str],
    *,
    source_tokenizer: Any,
    target_tokenizer: Any,
    max_source_length: int,
    batch_size: int,
) -> list[str]:
    """Detokenised outputs for `sources`, in order (fixed-shape batches: one compilation)."""
    outputs: list[str] = []
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        inputs = encode_sources(chunk, source_tokenizer, max_source_length, batch_size)
        if len(chunk) < batch_size:  # Fill with copies of a real row; their outputs are dropped.
            inputs[len(chunk):] = inputs[0]
        tokens, lengths = jax.device_get(decode_fn(params, inputs))
        for row in range(len(chunk)):
            outputs.append(target_tokenizer.decode(tokens[row, : lengths[row]].tolist()))
    return outputs


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
