"""How texts become decoding batches, without a model: shared by `BatchTranslator` (in-process)
and the exported translator (`inference.exported`, which must import neither Flax nor
`seq2seq_jax.models`, so nothing here does).

Shape glossary: B rows of a decoding batch, S source bucket width (EOS included).

- empty lines are not decoded (their output is the empty string);
- sources longer than `max_source_length` tokens (EOS included) are truncated, keeping EOS;
- sentences are sorted by length and cut into batches of `batch_size` rows; each batch is padded
  to the smallest width of `bucket_widths(max_source_length)` holding it, and the last batch is
  filled with copies of its first row (their outputs are dropped). Inputs shorter than one batch
  use the next power of two as their row count (`batch_rows`);
- each sentence's output limit is `max_length_from_source(source length)` capped by
  `SearchConfig.max_length` (`source_limits`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from seq2seq_jax.decoding.lengths import max_length_from_source
from seq2seq_jax.decoding.options import SearchConfig

_MIN_BUCKET = 8


@dataclasses.dataclass
class TranslateStats:
    """Timing of one translation call (compilation excluded from decoding)."""

    sentences: int = 0  # Non-empty sentences decoded.
    batches: int = 0
    programs_compiled: int = 0
    compile_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def sentences_per_second(self) -> float:
        """Decoded sentences per second of decoding (0 if nothing was decoded)."""
        return self.sentences / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class Batch:
    """Sentence indices decoded together, and the source width S they are padded to."""

    indices: np.ndarray  # int [n <= rows]
    width: int


def bucket_widths(max_source_length: int) -> tuple[int, ...]:
    """Source widths batches are padded to: 8, 16, 32, ... below the maximum, then the maximum."""
    if max_source_length < 1:
        raise ValueError(f"max_source_length must be >= 1, got {max_source_length}")
    widths, width = [], _MIN_BUCKET
    while width < max_source_length:
        widths.append(width)
        width *= 2
    return (*widths, max_source_length)


def batch_rows(num_sentences: int, batch_size: int) -> int:
    """Rows of every batch: `batch_size`, or the next power of two for a smaller input."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return min(batch_size, 1 << max(0, num_sentences - 1).bit_length())


def plan_batches(lengths: Sequence[int], *, batch_size: int, widths: Sequence[int]) -> list[Batch]:
    """Sorts sentences by length and groups them into batches (empty sentences are skipped).

    Args:
      lengths: token count of each sentence (EOS included; 0 = empty, not decoded), each at most
        `max(widths)`.
      batch_size: most sentences per batch.
      widths: increasing bucket widths (`bucket_widths`).

    Returns:
      Batches covering every non-empty sentence once, shortest first.
    """
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > widths[-1]:
        raise ValueError(
            f"a sentence has {lengths.max()} tokens, more than the widest bucket {widths[-1]}"
        )
    order = [i for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]
    batches = []
    for start in range(0, len(order), batch_size):
        indices = np.asarray(order[start : start + batch_size], np.int64)
        longest = int(lengths[indices].max())
        width = next(w for w in widths if w >= longest)
        batches.append(Batch(indices, width))
    return batches


def encode_sources(
    texts: Sequence[str], tokenizer: Any, max_source_length: int
) -> tuple[list[np.ndarray], list[int]]:
    """Token ids + EOS of each text (empty text: no ids), cut to `max_source_length` keeping EOS.

    Returns:
      (ids int32 [S_i] per text, indices of the truncated texts).
    """
    if max_source_length < 2:
        raise ValueError(
            f"max_source_length must be >= 2 (a token and EOS), got {max_source_length}"
        )
    ids, truncated = [], []
    for i, tokens in enumerate(tokenizer.encode_batch(list(texts))):
        if not texts[i].strip():
            ids.append(np.zeros((0,), np.int32))
            continue
        if len(tokens) + 1 > max_source_length:
            truncated.append(i)
            tokens = tokens[: max_source_length - 1]
        ids.append(np.asarray([*tokens, tokenizer.eos_id], np.int32))
    return ids, truncated


def row_index(batch: Batch, rows: int) -> np.ndarray:
    """The sentence index of each of a batch's rows (filler rows repeat the first sentence)."""
    return np.concatenate([batch.indices, np.repeat(batch.indices[:1], rows - len(batch.indices))])


def batch_sources(batch: Batch, source_ids: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """inputs int32 [rows, S] of a batch: its sources padded with 0, filler rows copying row 0."""
    inputs = np.zeros((rows, batch.width), np.int32)
    for row, i in enumerate(batch.indices):
        inputs[row, : len(source_ids[i])] = source_ids[i]
    inputs[len(batch.indices) :] = inputs[0]  # Copies of a real row; outputs dropped.
    return inputs


def source_limits(source_lengths: np.ndarray, search: SearchConfig) -> np.ndarray:
    """int32 per-sentence output limits `min(max_length, ceil(ratio * length + offset))`."""
    return np.asarray(
        max_length_from_source(
            np.asarray(source_lengths),
            a=search.length_ratio,
            b=search.length_offset,
            cap=search.max_length,
        ),
        np.int32,
    )


def one_line(text: str) -> str:
    """Keeps one output per line: line breaks inside an output (any `str.splitlines` one) become
    spaces."""
    parts = text.splitlines()
    return text if parts == [text] or not text else " ".join(parts)
