"""Batched, jit-compiled translation of text with a model: the one decoding path of the project.

Used by `python -m seq2seq_jax.decode` and by the training loop's task metric, so a score logged
during training is what the CLI reproduces from the checkpoint.

Shape glossary: B rows of a decoding batch, S source bucket width (EOS included), L output buffer
length (the absolute maximum output length), K beam.

How texts become batches (`plan_batches`):
- empty lines are not decoded (their output is the empty string);
- sources longer than `max_source_length` tokens (EOS included) are truncated, keeping EOS
  (the over-length policy; their indices are reported so callers can warn);
- sentences are sorted by length and cut into batches of `batch_size` rows; each batch is padded
  to the smallest width of `bucket_widths(max_source_length)` holding it, and the last batch is
  filled with copies of its first row (their outputs are dropped), so only one program per bucket
  width is compiled. Inputs shorter than one batch use the next power of two as their row count.
- each sentence's output limit is `max_length_from_source(source length)` capped by
  `SearchConfig.max_length`; sampling uses the key `fold_in(PRNGKey(seed), sentence index)`.
Padding never changes a model's result, and a finished example is frozen by the searches, so a
sentence's output does not depend on the batch it lands in.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Container, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from seq2seq_jax import decoding, models

PyTree = Any
_MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """How to search (hashable; every field but `alpha` and `seed` is compiled in).

    Attributes:
      beam_size: K; 1 = greedy search.
      alpha: GNMT length-penalty strength of beam search.
      max_length: L, the absolute maximum output length (EOS included) and buffer size.
      length_ratio: `a` of the per-sentence limit `ceil(a * source_length + b)`.
      length_offset: `b` of that limit.
      sample: ancestral sampling instead of search (needs `beam_size == 1`).
      temperature: sampling temperature (0 = greedy).
      top_k: sample among the k most probable tokens (0 = all).
      top_p: nucleus sampling mass (1 = all).
      seed: sampling seed; sentence i uses `fold_in(PRNGKey(seed), i)`.
    """

    beam_size: int = 1
    alpha: float = 0.6
    max_length: int = 64
    length_ratio: float = 1.5
    length_offset: float = 10.0
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> SearchConfig:
        """Returns `self`; raises ValueError naming the bad option."""
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.sample and self.beam_size > 1:
            raise ValueError(f"sampling decodes one hypothesis: use beam_size=1 with sample, "
                             f"got beam_size={self.beam_size}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        return self

    @property
    def mode(self) -> str:
        """'sample', 'greedy' or 'beam<K>'."""
        if self.sample:
            return "sample"
        return "greedy" if self.beam_size == 1 else f"beam{self.beam_size}"


@dataclasses.dataclass
class Translation:
    """One sentence's output.

    Attributes:
      text: the detokenised output (stops before EOS); "" for an empty input line.
      source_ids: int32 [S_i] source ids fed to the model, EOS included (after truncation).
      output_ids: int32 [T_i] output ids, EOS included when produced.
      score: the search's score (log-prob; beam: divided by the length penalty); 0 if empty.
      attention: float32 [T_i, S_i] when requested, else None.
      truncated: whether the source was cut to `max_source_length`.
    """

    text: str
    source_ids: np.ndarray
    output_ids: np.ndarray
    score: float
    attention: np.ndarray | None = None
    truncated: bool = False


@dataclasses.dataclass
class TranslateStats:
    """Timing of one `BatchTranslator.translate` call (compilation excluded from decoding)."""

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


def plan_batches(lengths: Sequence[int], *, batch_size: int,
                 widths: Sequence[int]) -> list[Batch]:
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
        raise ValueError(f"a sentence has {lengths.max()} tokens, more than the widest bucket "
                         f"{widths[-1]}")
    order = [i for i in np.argsort(lengths, kind="stable") if lengths[i] > 0]
    batches = []
    for start in range(0, len(order), batch_size):
        indices = np.asarray(order[start:start + batch_size], np.int64)
        longest = int(lengths[indices].max())
        width = next(w for w in widths if w >= longest)
        batches.append(Batch(indices, width))
    return batches


def encode_sources(texts: Sequence[str], tokenizer: Any,
                   max_source_length: int) -> tuple[list[np.ndarray], list[int]]:
    """Token ids + EOS of each text (empty text: no ids), cut to `max_source_length` keeping EOS.

    Returns:
      (ids int32 [S_i] per text, indices of the truncated texts).
    """
    if max_source_length < 2:
        raise ValueError(f"max_source_length must be >= 2 (a token and EOS), got "
                         f"{max_source_length}")
    ids, truncated = [], []
    for i, tokens in enumerate(tokenizer.encode_batch(list(texts))):
        if not texts[i].strip():
            ids.append(np.zeros((0,), np.int32))
            continue
        if len(tokens) + 1 > max_source_length:
            truncated.append(i)
            tokens = tokens[:max_source_length - 1]
        ids.append(np.asarray([*tokens, tokenizer.eos_id], np.int32))
    return ids, truncated


def make_search_fn(model: nn.Module, search: SearchConfig, *, bos_id: int,
                   eos_id: int) -> Callable[..., tuple[jax.Array, ...]]:
    """A jitted `fn(params, inputs [B, S], limits [B], keys uint32 [B, 2], alpha)`.

    It encodes `inputs`, runs the search of `search` with per-row output limits and returns
    `(tokens [B, L], lengths [B], scores [B], attention [B, L, S])` of the best hypotheses.
    The function is shared by every call with an equal model and equal compiled options (alpha,
    seed and the length function are arguments), so its compiled programs are reused, e.g. by
    each evaluation of a training run.
    """
    compiled_options = dataclasses.replace(search.validate(), alpha=0.0, seed=0,
                                           length_ratio=0.0, length_offset=0.0)
    return _search_fn(model, compiled_options, int(bos_id), int(eos_id))


@functools.lru_cache(maxsize=16)
def _search_fn(model: nn.Module, search: SearchConfig, bos_id: int,
               eos_id: int) -> Callable[..., tuple[jax.Array, ...]]:
    def run(params: PyTree, inputs: jax.Array, limits: jax.Array, keys: jax.Array,
            alpha: jax.Array) -> tuple[jax.Array, ...]:
        variables = {"params": params}
        cache = models.init_decode_cache(model, variables, inputs,
                                         max_decode_length=search.max_length)
        step = models.make_tokens_to_logits(model, variables)
        common = dict(bos_id=bos_id, eos_id=eos_id, max_length=limits,
                      max_decode_length=search.max_length)
        if search.sample:
            result = decoding.sample(step, cache, keys, temperature=search.temperature,
                                     top_k=search.top_k, top_p=search.top_p, **common)
        elif search.beam_size > 1:
            result = decoding.beam_search(step, cache, beam_size=search.beam_size, alpha=alpha,
                                          **common)
        else:
            result = decoding.greedy_search(step, cache, **common)
        return result.tokens, result.lengths, result.scores, result.attention

    return jax.jit(run)


def sentence_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """uint32 [n, 2] sampling keys `fold_in(PRNGKey(seed), index)` of the given sentences."""
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.asarray(indices, jnp.uint32))
    return np.asarray(jax.device_get(keys), np.uint32)


class BatchTranslator:
    """Translates lists of texts with a model and its tokenizers; keeps its compiled programs.

    ```
    translator = BatchTranslator(model, SearchConfig(beam_size=4, max_length=64),
                                 source_tokenizer=src, target_tokenizer=tgt,
                                 max_source_length=64, batch_size=64)
    outputs = translator.translate(params, ["a sentence", ""])
    texts = [t.text for t in outputs]
    ```
    """

    def __init__(self, model: nn.Module, search: SearchConfig, *, source_tokenizer: Any,
                 target_tokenizer: Any, max_source_length: int, batch_size: int) -> None:
        """Builds the translator.

        Args:
          model: a decode-mode model (`ModelConfig.replace(deterministic=True)`).
          search: the search options.
          source_tokenizer: encodes inputs (`encode_batch`, `eos_id`).
          target_tokenizer: decodes outputs (`decode` stops at EOS; `bos_id`, `eos_id`).
          max_source_length: longest source fed to the model, EOS included (over-length policy).
          batch_size: most sentences per decoding call.
        """
        self.search = search.validate()
        self.source_tokenizer, self.target_tokenizer = source_tokenizer, target_tokenizer
        self.max_source_length = int(max_source_length)
        self.widths = bucket_widths(self.max_source_length)
        self.batch_size = int(batch_size)
        batch_rows(1, self.batch_size)  # Validates batch_size.
        self._search_fn = make_search_fn(model, self.search, bos_id=target_tokenizer.bos_id,
                                         eos_id=target_tokenizer.eos_id)
        self._compiled: set[tuple[int, int]] = set()
        self.stats = TranslateStats()

    def translate(self, params: PyTree, texts: Sequence[str], *,
                  attention_for: Container[int] = (), progress: bool = False
                  ) -> list[Translation]:
        """Translates `texts`; returns one `Translation` per text, in input order.

        Args:
          params: the model's parameters.
          texts: one sentence per item; blank ones give "" without being decoded.
          attention_for: indices of the sentences whose attention is returned.
          progress: show a tqdm bar on stderr.

        Returns:
          The translations; `self.stats` holds this call's timing.
        """
        source_ids, truncated = encode_sources(texts, self.source_tokenizer,
                                               self.max_source_length)
        batches = plan_batches([len(s) for s in source_ids], batch_size=self.batch_size,
                               widths=self.widths)
        rows = batch_rows(sum(len(b.indices) for b in batches), self.batch_size)
        self.stats = TranslateStats(sentences=sum(len(b.indices) for b in batches),
                                    batches=len(batches))
        self._compile(params, rows, sorted({b.width for b in batches}))
        empty = np.zeros((0,), np.int32)
        results = [Translation("", ids, empty, 0.0) for ids in source_ids]
        for i in truncated:
            results[i].truncated = True
        bar = _progress_bar(self.stats.sentences, progress and len(batches) > 1)
        start, pending = time.perf_counter(), None
        for batch in [*batches, None]:  # Dispatch batch k+1 before reading batch k's results.
            outputs = None if batch is None else self._dispatch(params, batch, source_ids, rows)
            if pending is not None:
                self._collect(pending[0], jax.device_get(pending[1]), results, attention_for)
                bar.update(len(pending[0].indices))
            pending = None if batch is None else (batch, outputs)
        self.stats.decode_seconds = time.perf_counter() - start
        bar.close()
        return results

    def _inputs(self, batch: Batch, source_ids: Sequence[np.ndarray],
                rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """inputs int32 [rows, S], limits int32 [rows], keys uint32 [rows, 2] of a batch."""
        inputs = np.zeros((rows, batch.width), np.int32)
        for row, i in enumerate(batch.indices):
            inputs[row, :len(source_ids[i])] = source_ids[i]
        index = np.concatenate([batch.indices, np.repeat(batch.indices[:1],
                                                         rows - len(batch.indices))])
        inputs[len(batch.indices):] = inputs[0]  # Copies of a real row; outputs dropped.
        source_lengths = np.asarray([len(source_ids[i]) for i in index])
        limits = np.asarray(decoding.max_length_from_source(
            source_lengths, a=self.search.length_ratio, b=self.search.length_offset,
            cap=self.search.max_length), np.int32)
        if self.search.sample:
            return inputs, limits, sentence_keys(self.search.seed, index)
        return inputs, limits, np.zeros((rows, 2), np.uint32)

    def _dispatch(self, params: PyTree, batch: Batch, source_ids: Sequence[np.ndarray],
                  rows: int) -> tuple[jax.Array, ...]:
        """Starts decoding a batch (asynchronously); returns its device outputs."""
        inputs, limits, keys = self._inputs(batch, source_ids, rows)
        return self._search_fn(params, inputs, limits, keys, np.float32(self.search.alpha))

    def _compile(self, params: PyTree, rows: int, widths: Sequence[int]) -> None:
        """Compiles (and runs once on a one-token input) the programs not compiled yet."""
        start = time.perf_counter()
        for width in widths:
            if (rows, width) in self._compiled:
                continue
            inputs = np.zeros((rows, width), np.int32)
            inputs[:, 0] = self.source_tokenizer.eos_id
            limits = np.ones((rows,), np.int32)
            keys = np.zeros((rows, 2), np.uint32)
            outputs = self._search_fn(params, inputs, limits, keys, np.float32(self.search.alpha))
            jax.block_until_ready(outputs)
            self._compiled.add((rows, width))
            self.stats.programs_compiled += 1
        self.stats.compile_seconds = time.perf_counter() - start

    def _collect(self, batch: Batch, outputs: tuple[np.ndarray, ...],
                 results: list[Translation], attention_for: Container[int]) -> None:
        tokens, lengths, scores, attention = outputs  # [B, L], [B], [B], [B, L, S]
        for row, i in enumerate(batch.indices):
            i, length = int(i), int(lengths[row])
            out = results[i]
            out.output_ids = np.asarray(tokens[row, :length], np.int32)
            out.text = _one_line(self.target_tokenizer.decode(out.output_ids.tolist()))
            out.score = float(scores[row])
            if i in attention_for:
                out.attention = np.asarray(attention[row, :length, :len(out.source_ids)],
                                           np.float32)


def _one_line(text: str) -> str:
    """Keeps one output per line: line breaks inside an output (any `str.splitlines` one) become
    spaces."""
    parts = text.splitlines()
    return text if parts == [text] or not text else " ".join(parts)


def _progress_bar(total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, disable=not enabled, file=sys.stderr, unit="sent",
                dynamic_ncols=True, mininterval=0.5, desc="decode")
