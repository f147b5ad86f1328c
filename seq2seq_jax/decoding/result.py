"""Decoding results shared by greedy search, sampling and beam search.

Shape glossary: B batch, K beam, L static maximum output length, S source length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Beams(NamedTuple):
    """All finished hypotheses of a beam search, best first.

    Slots that hold no finished hypothesis (fewer than K exist, or the search stopped early because
    no unfinished beam could still win) have score `-inf`, length 0, and all-pad tokens and zero
    attention.

    Attributes:
      tokens: int32 [B, K, L]; each hypothesis' tokens, EOS included, pad (0) after it.
      lengths: int32 [B, K]; number of tokens including EOS (the maximum length if truncated).
      scores: float32 [B, K]; log-probability divided by the GNMT length penalty.
      attention: float32 [B, K, L, S]; the step attention that produced each token, 0 after the end.
    """

    tokens: jax.Array  # [B, K, L]
    lengths: jax.Array  # [B, K]
    scores: jax.Array  # [B, K]
    attention: jax.Array  # [B, K, L, S]


class DecodeResult(NamedTuple):
    """The hypothesis returned for each example.

    Attributes:
      tokens: int32 [B, L]; output tokens without BOS, EOS included, pad (0) after EOS. A
        hypothesis that reached its maximum length without EOS is returned truncated (no EOS).
      lengths: int32 [B]; number of output tokens including EOS.
      scores: float32 [B]; greedy/sampling: sum of the model's log-probabilities of the tokens;
        beam search: that sum divided by the GNMT length penalty.
      attention: float32 [B, L, S]; row t is the cross-attention of the decoder step that produced
        token t (equal to the teacher-forced attention of the returned tokens); zero after the end.
      beams: beam search only: all K hypotheses (`Beams`), best first; `None` otherwise.
    """

    tokens: jax.Array  # [B, L]
    lengths: jax.Array  # [B]
    scores: jax.Array  # [B]
    attention: jax.Array  # [B, L, S]
    beams: Beams | None = None
