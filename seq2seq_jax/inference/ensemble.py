"""Ensembles over the decoding step contract: one step function that averages several models'.

`ensemble_step([step_1, ..., step_M])` is itself a `tokens_to_logits(ids, cache)` (docs/
ARCHITECTURE.md, "Decoding step contract"), so greedy search, beam search, sampling and forced
decoding (scoring) run an ensemble unchanged. Its cache is the tuple of the members' caches
(every leaf keeps the leading dimension N, so beam search reorders it like a single model's),
its "logits" are the mean of the members' log-probabilities (pad excluded, as the searches
compute them), which the searches renormalise: the ensemble's distribution is the normalised
geometric mean of the members' (log-linear interpolation with equal weights). An ensemble of a
model with itself is that model. Its attention is the mean of the members' (each row still sums
to 1), so alignments and plots work too; that needs the members to read the same source ids,
which is why an ensemble shares the source vocabulary as well as the target one.

`same_vocabulary(a, b)` says whether two tokenizers give the same ids to the same pieces.
Nothing here imports the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from seq2seq_jax.decoding.step import PyTree, TokensToLogits, step_log_probs


def ensemble_step(steps: Sequence[TokensToLogits]) -> TokensToLogits:
    """The step function of an equal-weight ensemble of `steps` (see the module docstring).

    Args:
      steps: the members' `tokens_to_logits`, same vocabulary V and source length S.

    Returns:
      `fn(ids int32 [N], caches: tuple) -> (mean log-probs float32 [N, V], mean attention
      float32 [N, S], caches)`, with `caches[m]` the cache of `steps[m]`.
    """
    steps = tuple(steps)
    if not steps:
        raise ValueError("an ensemble needs at least one model")

    def tokens_to_logits(ids: Any, caches: tuple[PyTree, ...]):
        outputs = [step(ids, cache) for step, cache in zip(steps, caches, strict=True)]
        log_probs = sum(step_log_probs(logits) for logits, _, _ in outputs) / len(steps)
        attention = sum(a.astype(jnp.float32) for _, a, _ in outputs) / len(steps)
        return log_probs, attention, tuple(cache for _, _, cache in outputs)

    return tokens_to_logits


def vocabulary(tokenizer: Any) -> tuple[Any, ...]:
    """What two tokenizers must share to be interchangeable for a model: every id's piece, the
    special ids and the tokenizer kind."""
    pieces = tuple(tokenizer.id_to_piece(i) for i in range(int(tokenizer.vocab_size)))
    return (type(tokenizer).__name__, int(tokenizer.bos_id), int(tokenizer.eos_id), pieces)


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether tokenizers `a` and `b` map the same pieces to the same ids."""
    return a is b or vocabulary(a) == vocabulary(b)
