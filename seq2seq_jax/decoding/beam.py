"""Beam search with the GNMT length penalty over a model-agnostic decoding step.

Each example keeps K beams. At every step each unfinished beam proposes its V continuations and
each finished beam proposes itself (extended with pad, score frozen); the K candidates with the
best length-normalised score `log_prob / ((5 + length) / 6) ** alpha` form the new beams. A
candidate ending in EOS, or reaching the example's maximum length, is finished. So beam size 1
is greedy search, and a beam wide enough to hold every hypothesis is exhaustive search.

An example stops when all its beams have finished, or when no unfinished beam can still beat the
worst finished one (its log-probability can only fall, and its penalty is bounded by the largest
penalty of any length it could still reach). A stopped example is frozen, so results do not
depend on the batch; the loop exits when every example has stopped.

The cache is tiled to B*K rows (`jnp.repeat` on axis 0; beam k of example b is row b*K + k) and
reordered with one gather on axis 0 of every leaf that the step changes; a leaf it returns
unchanged (the same array) is equal across the beams of an example and is never reordered. The
attention row of every produced token is carried per beam and reordered with the beams.

Shape glossary: B batch, K beam, N = B*K, L static maximum output length, S source, V vocab.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from seq2seq_jax.decoding.lengths import gnmt_length_penalty, resolve_max_length
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.decoding.result import Beams, DecodeResult
from seq2seq_jax.decoding.step import PAD_ID, PyTree, TokensToLogits, probe_step, step_log_probs
from seq2seq_jax.ops import top_k


class _BeamState(NamedTuple):
    step: jax.Array  # int32 scalar: index of the token produced next
    ids: jax.Array  # [B, K] last token of each beam
    cache: PyTree  # leaves [N, ...]
    log_probs: jax.Array  # [B, K] sum of log-probs; -inf marks an empty slot
    finished: jax.Array  # [B, K] bool
    lengths: jax.Array  # [B, K]
    tokens: jax.Array  # [B, K, L]
    attention: jax.Array  # [B, K, L, S]
    done: jax.Array  # [B] bool: the example has stopped


def _gather_beams(x: jax.Array, parent: jax.Array) -> jax.Array:
    """x [B, K, ...], parent [B, K] -> x[b, parent[b, k], ...]."""
    return x[jnp.arange(x.shape[0])[:, None], parent]


def _candidates(state: _BeamState, step_log_probs_: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log-probs [B, K, V] and lengths [B, K, 1] of every continuation of every beam."""
    vocab = step_log_probs_.shape[-1]
    extended = state.log_probs[..., None] + step_log_probs_  # [B, K, V]
    frozen = jnp.where(jnp.arange(vocab) == PAD_ID, state.log_probs[..., None], -jnp.inf)
    log_probs = jnp.where(state.finished[..., None], frozen, extended)
    lengths = jnp.where(state.finished, state.lengths, state.step + 1)[..., None]
    return log_probs, lengths


def _select(
    state: _BeamState,
    step_log_probs_: jax.Array,
    attention: jax.Array,
    *,
    eos_id: int,
    limits: jax.Array,
    alpha: float | jax.Array,
) -> tuple[_BeamState, jax.Array]:
    """Keeps the K best candidates; returns the new beams (cache not yet reordered) and parents.

    Args:
      state: beams before the step.
      step_log_probs_: [B, K, V] log-probs of the step.
      attention: [B, K, S] attention of the step.
      eos_id: end-of-sequence id.
      limits: [B] maximum lengths.
      alpha: length-penalty strength.
    """
    batch, beam, vocab = step_log_probs_.shape
    cand_log_probs, cand_lengths = _candidates(state, step_log_probs_)
    rank = cand_log_probs / gnmt_length_penalty(cand_lengths, alpha)  # [B, K, V]
    _, flat = top_k(rank.reshape(batch, beam * vocab), beam)  # [B, K]; == lax.top_k
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    parent_finished = _gather_beams(state.finished, parent)
    token = jnp.where(parent_finished, PAD_ID, token)
    row = jnp.where(parent_finished[..., None], 0.0, _gather_beams(attention, parent))  # [B, K, S]
    return state._replace(
        ids=token,
        log_probs=jnp.take_along_axis(cand_log_probs.reshape(batch, -1), flat, axis=1),
        finished=parent_finished | (token == eos_id) | (state.step + 1 >= limits[:, None]),
        lengths=jnp.take_along_axis(
            jnp.broadcast_to(cand_lengths, cand_log_probs.shape).reshape(batch, -1), flat, axis=1
        ),
        tokens=_gather_beams(state.tokens, parent).at[:, :, state.step].set(token),
        attention=_gather_beams(state.attention, parent).at[:, :, state.step].set(row),
    ), parent


def _stopped(state: _BeamState, limits: jax.Array, alpha) -> jax.Array:
    """[B] whether no unfinished beam can still change the example's finished hypotheses.

    `state.step` is the length of the unfinished beams, so they can finish at lengths
    step + 1 .. limit only.
    """
    valid = state.log_probs > -jnp.inf
    alive = valid & ~state.finished
    done_beams = valid & state.finished
    best_alive = jnp.max(jnp.where(alive, state.log_probs, -jnp.inf), axis=-1)  # [B]
    largest_penalty = jnp.maximum(
        gnmt_length_penalty(state.step + 1, alpha), gnmt_length_penalty(limits, alpha)
    )
    bound = best_alive / largest_penalty
    scores = state.log_probs / gnmt_length_penalty(state.lengths, alpha)
    worst_finished = jnp.min(jnp.where(done_beams, scores, jnp.inf), axis=-1)
    return ~jnp.any(alive, axis=-1) | (jnp.any(done_beams, axis=-1) & (bound < worst_finished))


def _beam_step(tokens_to_logits, state: _BeamState, *, eos_id, limits, alpha) -> _BeamState:
    batch, beam = state.ids.shape
    logits, attention, cache = tokens_to_logits(state.ids.reshape(-1), state.cache)
    log_probs = step_log_probs(logits).reshape(batch, beam, -1)  # [B, K, V]
    attention = attention.astype(jnp.float32).reshape(batch, beam, -1)  # [B, K, S]
    new, parent = _select(state, log_probs, attention, eos_id=eos_id, limits=limits, alpha=alpha)
    rows = (jnp.arange(batch)[:, None] * beam + parent).reshape(-1)  # [N]
    # A leaf the step returns unchanged (the same array: a source annotation, projected keys,
    # a mask) still holds the values it was tiled with, equal across the beams of an example,
    # so reordering it within the example is the identity: skip the gather.
    cache = jax.tree_util.tree_map(
        lambda new_leaf, old_leaf: new_leaf if new_leaf is old_leaf else new_leaf[rows],
        cache,
        state.cache,
    )
    frozen = state.done

    def keep_if_done(old, updated):
        return jnp.where(frozen.reshape((-1,) + (1,) * (old.ndim - 1)), old, updated)

    new = jax.tree_util.tree_map(
        keep_if_done, state._replace(cache=None, step=None), new._replace(cache=None, step=None)
    )
    new = new._replace(step=state.step + 1, cache=cache)
    return new._replace(done=state.done | _stopped(new, limits, alpha))


def _init_state(cache, shapes, *, beam, bos_id, length) -> _BeamState:
    batch = shapes.rows
    first = jnp.where(jnp.arange(beam) == 0, 0.0, -jnp.inf)  # one live beam, no duplicates
    return _BeamState(
        step=jnp.zeros((), jnp.int32),
        ids=jnp.full((batch, beam), bos_id, jnp.int32),
        cache=jax.tree_util.tree_map(lambda x: jnp.repeat(x, beam, axis=0), cache),
        log_probs=jnp.broadcast_to(first, (batch, beam)).astype(jnp.float32),
        finished=jnp.zeros((batch, beam), bool),
        lengths=jnp.zeros((batch, beam), jnp.int32),
        tokens=jnp.zeros((batch, beam, length), jnp.int32),
        attention=jnp.zeros((batch, beam, length, shapes.source), jnp.float32),
        done=jnp.zeros((batch,), bool),
    )


def _finalize(state: _BeamState, alpha) -> DecodeResult:
    valid = state.finished & (state.log_probs > -jnp.inf)  # [B, K]
    scores = jnp.where(valid, state.log_probs / gnmt_length_penalty(state.lengths, alpha), -jnp.inf)
    scores, order = jax.lax.top_k(scores, scores.shape[-1])
    valid = _gather_beams(valid, order)
    tokens = jnp.where(valid[..., None], _gather_beams(state.tokens, order), PAD_ID)
    attention = jnp.where(valid[..., None, None], _gather_beams(state.attention, order), 0.0)
    lengths = jnp.where(valid, _gather_beams(state.lengths, order), 0)
    beams = Beams(tokens=tokens, lengths=lengths, scores=scores, attention=attention)
    return DecodeResult(tokens[:, 0], lengths[:, 0], scores[:, 0], attention[:, 0], beams)


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    *,
    beam_size: int,
    bos_id: int,
    eos_id: int,
    max_length: int | jax.Array,
    max_decode_length: int | None = None,
    alpha: float | jax.Array = SearchConfig.alpha,
) -> DecodeResult:
    """Batched beam search with the GNMT length penalty `((5 + len) / 6) ** alpha`.

    Jit-compatible: bind the step function, `beam_size`, ids and `max_decode_length` statically
    (e.g. `functools.partial`); `cache`, a per-example `max_length` and `alpha` may be traced.

    Args:
      tokens_to_logits: `(ids int32[N], cache) -> (logits [N, V], attention [N, S], cache)`.
      cache: initial cache, every leaf with leading dimension B (tiled to B*K here).
      beam_size: K >= 1; 1 is greedy search.
      bos_id: first input id.
      eos_id: end-of-sequence id.
      max_length: Python int, or int32 [B] per-example maximum output lengths (EOS included);
        a hypothesis reaching it without EOS is finished there (truncated).
      max_decode_length: static output buffer length L; defaults to an int `max_length`.
      alpha: length-penalty strength (0: plain log-probabilities).

    Returns:
      `DecodeResult` of the best hypothesis per example (scores length-normalised), with
      `beams` holding all K hypotheses best first.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}.")
    shapes = probe_step(tokens_to_logits, cache)
    length, limits = resolve_max_length(max_length, max_decode_length, shapes.rows)
    state = _init_state(cache, shapes, beam=beam_size, bos_id=bos_id, length=length)
    state = jax.lax.while_loop(
        lambda s: (s.step < length) & ~jnp.all(s.done),
        lambda s: _beam_step(tokens_to_logits, s, eos_id=eos_id, limits=limits, alpha=alpha),
        state,
    )
    return _finalize(state, alpha)
