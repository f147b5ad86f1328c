"""Greedy search and sampling over a model-agnostic decoding step.

Both run one `lax.while_loop` that stops as soon as every example has finished (EOS or its
maximum length). An example that has finished only extends with pad, its score frozen, so its
result does not depend on the other examples of the batch or on the batch size.

Shape glossary: B batch, L static maximum output length, S source length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seq2seq_jax.decoding.filtering import filter_logits
from seq2seq_jax.decoding.lengths import resolve_max_length
from seq2seq_jax.decoding.result import DecodeResult
from seq2seq_jax.decoding.step import PAD_ID, PyTree, TokensToLogits, probe_step, step_log_probs
from seq2seq_jax.ops import first_argmax

# choose(log_probs [B, V], step) -> int32 [B]
Chooser = Callable[[jax.Array, jax.Array], jax.Array]


class _State(NamedTuple):
    step: jax.Array  # int32 scalar: index of the token produced next
    ids: jax.Array  # [B] last token, the next step's input
    cache: PyTree
    tokens: jax.Array  # [B, L]
    attention: jax.Array  # [B, L, S]
    scores: jax.Array  # [B]
    lengths: jax.Array  # [B]
    finished: jax.Array  # [B] bool


def _greedy_choice(log_probs: jax.Array, step: jax.Array) -> jax.Array:
    del step
    return first_argmax(log_probs, axis=-1)


def _decode_one_token(tokens_to_logits, choose, eos_id, limits, state: _State) -> _State:
    logits, attention, cache = tokens_to_logits(state.ids, state.cache)
    log_probs = step_log_probs(logits)  # [B, V]
    live = ~state.finished  # [B]
    token = jnp.where(live, choose(log_probs, state.step), PAD_ID).astype(jnp.int32)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    attention = jnp.where(live[:, None], attention.astype(jnp.float32), 0.0)  # [B, S]
    return _State(
        step=state.step + 1,
        ids=token,
        cache=cache,
        tokens=state.tokens.at[:, state.step].set(token),
        attention=state.attention.at[:, state.step].set(attention),
        scores=state.scores + jnp.where(live, token_log_prob, 0.0),
        lengths=jnp.where(live, state.step + 1, state.lengths),
        finished=state.finished | (token == eos_id) | (state.step + 1 >= limits),
    )


def decode_sequentially(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    choose: Chooser,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int | jax.Array,
    max_decode_length: int | None = None,
) -> DecodeResult:
    """Decodes one token per step with `choose` until every example has finished.

    Args:
      tokens_to_logits: the model's step function (see `seq2seq_jax.decoding.step`).
      cache: initial cache, every leaf with leading dimension B.
      choose: `choose(log_probs [B, V], step) -> int32 [B]` picks each example's next token.
      bos_id: first input id.
      eos_id: id that ends a hypothesis.
      max_length: int, or int32 [B] per-example limits (see `max_length_from_source`).
      max_decode_length: static buffer length L (required with a per-example array).

    Returns:
      A `DecodeResult` with `beams=None`.
    """
    shapes = probe_step(tokens_to_logits, cache)
    batch = shapes.rows
    length, limits = resolve_max_length(max_length, max_decode_length, batch)
    state = _State(
        step=jnp.zeros((), jnp.int32),
        ids=jnp.full((batch,), bos_id, jnp.int32),
        cache=cache,
        tokens=jnp.zeros((batch, length), jnp.int32),
        attention=jnp.zeros((batch, length, shapes.source), jnp.float32),
        scores=jnp.zeros((batch,), jnp.float32),
        lengths=jnp.zeros((batch,), jnp.int32),
        finished=jnp.zeros((batch,), bool),
    )
    state = jax.lax.while_loop(
        lambda s: (s.step < length) & ~jnp.all(s.finished),
        lambda s: _decode_one_token(tokens_to_logits, choose, eos_id, limits, s),
        state,
    )
    return DecodeResult(state.tokens, state.lengths, state.scores, state.attention)


def greedy_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int | jax.Array,
    max_decode_length: int | None = None,
) -> DecodeResult:
    """Greedy decoding: the most probable token at every step (pad is never produced).

    Jit-compatible: wrap it in `jax.jit` with a `functools.partial` binding the step function,
    ids and `max_decode_length` (static); `cache` and a per-example `max_length` may be traced.

    Args:
      tokens_to_logits: `(ids int32[B], cache) -> (logits [B, V], attention [B, S], cache)`.
      cache: initial cache, every leaf with leading dimension B.
      bos_id: first input id.
      eos_id: end-of-sequence id.
      max_length: Python int, or int32 [B] per-example maximum output lengths (EOS included).
      max_decode_length: static output buffer length L; defaults to an int `max_length`.

    Returns:
      `DecodeResult(tokens [B, L], lengths [B], scores [B], attention [B, L, S])`; scores are
      sums of log-probabilities.
    """
    return decode_sequentially(
        tokens_to_logits,
        cache,
        _greedy_choice,
        bos_id=bos_id,
        eos_id=eos_id,
        max_length=max_length,
        max_decode_length=max_decode_length,
    )


def per_example_keys(rng: jax.Array, batch: int) -> jax.Array:
    """Returns one PRNG key per example.

    Args:
      rng: a single key (raw uint32[2] or typed scalar), expanded as `fold_in(rng, b)` for row b,
        or a batch of keys (raw uint32[B, 2] or typed [B]) used as given. Pass per-example keys
        (e.g. derived from each sentence's index in the corpus) to make samples independent of
        the batch composition.
      batch: B.

    Returns:
      Keys with leading dimension B, of the same kind (raw or typed) as `rng`.
    """
    typed = jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
    single_rank = 0 if typed else 1
    if rng.ndim == single_rank:
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch))
    if rng.ndim == single_rank + 1 and rng.shape[0] == batch:
        return rng
    raise ValueError(
        f"rng must be one key or {batch} keys (one per example), got shape "
        f"{rng.shape} of dtype {rng.dtype}."
    )


def sample(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    rng: jax.Array,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int | jax.Array,
    max_decode_length: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> DecodeResult:
    """Ancestral sampling with temperature, top-k and top-p (nucleus) filtering.

    Step t of example b draws from `filter_logits(log_probs_b, ...)` with key
    `fold_in(key_b, t)`, so with per-example keys a sample depends on nothing else in the batch.
    `temperature=0` is greedy search.

    Args:
      tokens_to_logits: the model's step function.
      cache: initial cache, every leaf with leading dimension B.
      rng: one key, or one key per example (see `per_example_keys`).
      bos_id: first input id.
      eos_id: end-of-sequence id.
      max_length: Python int, or int32 [B] per-example maximum output lengths.
      max_decode_length: static output buffer length L.
      temperature: >= 0 Python float; logits are divided by it (0: greedy).
      top_k: keep the k most probable tokens (0: all).
      top_p: keep the smallest most-probable set with mass >= top_p (1: all).

    Returns:
      `DecodeResult`; `scores` are the model's log-probabilities of the sampled tokens
      (before temperature and filtering).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if isinstance(top_p, float | int) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if temperature == 0:
        choose = _greedy_choice
    else:
        keys = per_example_keys(rng, probe_step(tokens_to_logits, cache).rows)

        def choose(log_probs: jax.Array, step: jax.Array) -> jax.Array:
            filtered = filter_logits(log_probs, temperature=temperature, top_k=top_k, top_p=top_p)
            step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
            return jax.vmap(jax.random.categorical)(step_keys, filtered).astype(jnp.int32)

    return decode_sequentially(
        tokens_to_logits,
        cache,
        choose,
        bos_id=bos_id,
        eos_id=eos_id,
        max_length=max_length,
        max_decode_length=max_decode_length,
    )
