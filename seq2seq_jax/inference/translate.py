"""Batched, jit-compiled translation of text with a model: the one decoding path of the project.

Used by `python -m seq2seq_jax.decode` and by the training loop's task metric, so a score logged
during training is what the CLI reproduces from the checkpoint.

Shape glossary: B rows of a decoding batch, S source bucket width (EOS included), L output buffer
length (the absolute maximum output length), K beam.

How texts become batches (`plan_batches`, in the model-free `inference.batching`):
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

The same batches serve forced decoding (`BatchTranslator.score`: the log-probability of given
targets, padded to `bucket_widths` of the longest target) and n-best lists
(`SearchConfig.nbest`). A list of models is an ensemble (`inference.ensemble.ensemble_step`):
every search and the scoring run over its averaged step unchanged.
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
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.decoding.search import decode_sequentially
from seq2seq_jax.inference.batching import (
    Batch,
    TranslateStats,
    batch_rows,
    batch_sources,
    bucket_widths,
    encode_sources,
    one_line,
    plan_batches,
    row_index,
    source_limits,
)
from seq2seq_jax.inference.ensemble import ensemble_step

PyTree = Any
__all__ = [
    "Batch",
    "BatchTranslator",
    "Hypothesis",
    "SearchConfig",
    "TranslateStats",
    "Translation",
    "batch_rows",
    "bucket_widths",
    "encode_sources",
    "make_search_fn",
    "plan_batches",
]


@dataclasses.dataclass
class Hypothesis:
    """One entry of an n-best list (`SearchConfig.nbest`).

    Attributes:
      text: the detokenised output.
      output_ids: int32 [T] output ids, EOS included when produced.
      score: the search's score (beam: log-probability / GNMT length penalty).
      log_prob: the sum of the tokens' log-probabilities (EOS included).
    """

    text: str
    output_ids: np.ndarray
    score: float
    log_prob: float


@dataclasses.dataclass
class Translation:
    """One sentence's output (or, from `BatchTranslator.score`, its given target's score).

    Attributes:
      text: the detokenised output (stops before EOS); "" for an empty input line.
      source_ids: int32 [S_i] source ids fed to the model, EOS included (after truncation).
      output_ids: int32 [T_i] output ids, EOS included when produced.
      score: the search's score (log-prob; beam: divided by the length penalty); 0 if empty.
      attention: float32 [T_i, S_i] when requested, else None.
      truncated: whether the source was cut to `max_source_length`.
      log_prob: the sum of the output tokens' log-probabilities (= `score` but under beam search).
      hypotheses: with `SearchConfig.nbest > 1`, the n-best list, best first (the first is this
        output; empty beam slots are left out); else None.
    """

    text: str
    source_ids: np.ndarray
    output_ids: np.ndarray
    score: float
    attention: np.ndarray | None = None
    truncated: bool = False
    log_prob: float = 0.0
    hypotheses: list[Hypothesis] | None = None


def members(model: nn.Module | Sequence[nn.Module]) -> tuple[nn.Module, ...]:
    """The models of an ensemble (a sequence of modules) or of a single model, as a tuple."""
    return tuple(model) if isinstance(model, list | tuple) else (model,)


def _step_and_cache(
    modules: tuple[nn.Module, ...],
    params: tuple[PyTree, ...],
    inputs: jax.Array,
    max_decode_length: int,
) -> tuple[Any, PyTree]:
    """The decoding step over `tokens_to_logits` and the initial cache of `inputs` [B, S]: the
    model's own, or `ensemble_step` of the members' (cache: the tuple of their caches)."""
    steps, caches = [], []
    for model, member_params in zip(modules, params, strict=True):
        variables = {"params": member_params}
        caches.append(
            models.init_decode_cache(model, variables, inputs, max_decode_length=max_decode_length)
        )
        steps.append(models.make_tokens_to_logits(model, variables))
    if len(steps) == 1:
        return steps[0], caches[0]
    return ensemble_step(steps), tuple(caches)


def make_search_fn(
    model: nn.Module | Sequence[nn.Module], search: SearchConfig, *, bos_id: int, eos_id: int
) -> Callable[..., tuple[jax.Array, ...]]:
    """A jitted `fn(params, inputs [B, S], limits [B], keys uint32 [B, 2], alpha)`.

    It encodes `inputs`, runs the search of `search` with per-row output limits and returns
    `(tokens [B, L], lengths [B], scores [B], attention [B, L, S])` of the best hypotheses, and
    with `search.nbest = n > 1` also the n best beams' `(tokens [B, n, L], lengths [B, n],
    scores [B, n])`. The function is shared by every call with an equal model and equal compiled
    options (alpha, seed and the length function are arguments), so its compiled programs are
    reused, e.g. by each evaluation of a training run.

    `model` may be a sequence of models sharing the target vocabulary (an ensemble, see
    `ensemble_step`); `params` is then the sequence of their parameters.
    """
    compiled_options = dataclasses.replace(
        search.validate(), alpha=0.0, seed=0, length_ratio=0.0, length_offset=0.0
    )
    fn = _search_fn(members(model), compiled_options, int(bos_id), int(eos_id))
    if isinstance(model, list | tuple):
        return fn
    return lambda params, *args: fn((params,), *args)


@functools.lru_cache(maxsize=16)
def _search_fn(
    modules: tuple[nn.Module, ...], search: SearchConfig, bos_id: int, eos_id: int
) -> Callable[..., tuple[jax.Array, ...]]:
    def run(
        params: tuple[PyTree, ...],
        inputs: jax.Array,
        limits: jax.Array,
        keys: jax.Array,
        alpha: jax.Array,
    ) -> tuple[jax.Array, ...]:
        step, cache = _step_and_cache(modules, params, inputs, search.max_length)
        common = dict(
            bos_id=bos_id, eos_id=eos_id, max_length=limits, max_decode_length=search.max_length
        )
        if search.sample:
            result = decoding.sample(
                step,
                cache,
                keys,
                temperature=search.temperature,
                top_k=search.top_k,
                top_p=search.top_p,
                **common,
            )
        elif search.beam_size > 1:
            result = decoding.beam_search(
                step, cache, beam_size=search.beam_size, alpha=alpha, **common
            )
        else:
            result = decoding.greedy_search(step, cache, **common)
        outputs = (result.tokens, result.lengths, result.scores, result.attention)
        if search.nbest > 1:
            n = search.nbest
            outputs += (
                result.beams.tokens[:, :n],
                result.beams.lengths[:, :n],
                result.beams.scores[:, :n],
            )
        return outputs

    return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _score_fn(
    modules: tuple[nn.Module, ...], bos_id: int, eos_id: int
) -> Callable[..., tuple[jax.Array, ...]]:
    """Jitted forced decoding `fn(params, inputs [B, S], targets [B, T], lengths [B]) ->
    (scores [B], lengths [B], attention [B, T, S])`: the search loop of greedy search
    (`decode_sequentially`) with a chooser that picks the given target token at every step, so
    a score is computed exactly as a search computes its hypotheses' scores."""

    def run(
        params: tuple[PyTree, ...], inputs: jax.Array, targets: jax.Array, lengths: jax.Array
    ) -> tuple[jax.Array, ...]:
        width = targets.shape[1]
        step, cache = _step_and_cache(modules, params, inputs, width)

        def forced(log_probs: jax.Array, t: jax.Array) -> jax.Array:
            del log_probs
            return jax.lax.dynamic_index_in_dim(targets, t, axis=1, keepdims=False)

        result = decode_sequentially(
            step,
            cache,
            forced,
            bos_id=bos_id,
            eos_id=eos_id,
            max_length=lengths,
            max_decode_length=width,
        )
        return result.scores, result.lengths, result.attention

    return jax.jit(run)


def sentence_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """uint32 [n, 2] sampling keys `fold_in(PRNGKey(seed), index)` of the given sentences."""
    base = jax.random.PRNGKey(seed)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.asarray(indices, jnp.uint32))
    return np.asarray(jax.device_get(keys), np.uint32)


class BatchTranslator:
    """Translates lists of texts with a model (or an ensemble) and its tokenizers, or scores
    given translations; keeps its compiled programs.

    ```
    translator = BatchTranslator(model, SearchConfig(beam_size=4, max_length=64),
                                 source_tokenizer=src, target_tokenizer=tgt,
                                 max_source_length=64, batch_size=64)
    outputs = translator.translate(params, ["a sentence", ""])
    texts = [t.text for t in outputs]
    scored = translator.score(params, ["a sentence"], ["a translation"])  # forced decoding
    ```
    """

    def __init__(
        self,
        model: nn.Module | Sequence[nn.Module],
        search: SearchConfig,
        *,
        source_tokenizer: Any,
        target_tokenizer: Any,
        max_source_length: int,
        batch_size: int,
    ) -> None:
        """Builds the translator.

        Args:
          model: a decode-mode model (`ModelConfig.replace(deterministic=True)`), or a sequence
            of them sharing both vocabularies (an ensemble: `params` is then the sequence of
            their parameters, and every step averages their log-probabilities).
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
        self._ensemble = isinstance(model, list | tuple)
        self._modules = members(model)
        self._search_fn = make_search_fn(
            self._modules,
            self.search,
            bos_id=target_tokenizer.bos_id,
            eos_id=target_tokenizer.eos_id,
        )
        self._score_fn = _score_fn(
            self._modules, int(target_tokenizer.bos_id), int(target_tokenizer.eos_id)
        )
        self._compiled: set[tuple[Any, ...]] = set()
        self.stats = TranslateStats()

    def _params(self, params: PyTree) -> tuple[PyTree, ...]:
        if not self._ensemble:
            return (params,)
        if len(params) != len(self._modules):
            raise ValueError(
                f"an ensemble of {len(self._modules)} models needs as many "
                f"parameter trees, got {len(params)}"
            )
        return tuple(params)

    def target_length_cap(self) -> int | None:
        """The longest target the models can embed (Transformer positions), None if unbounded."""
        caps = [m.max_length(m.config) for m in self._modules if hasattr(m, "max_length")]
        caps = [c for c in caps if c is not None]
        return min(caps) if caps else None

    def translate(
        self,
        params: PyTree,
        texts: Sequence[str],
        *,
        attention_for: Container[int] = (),
        progress: bool = False,
        first_index: int = 0,
    ) -> list[Translation]:
        """Translates `texts`; returns one `Translation` per text, in input order.

        Args:
          params: the model's parameters (an ensemble: the sequence of its models').
          texts: one sentence per item; blank ones give "" without being decoded.
          attention_for: indices of the sentences whose attention is returned.
          progress: show a tqdm bar on stderr.
          first_index: the corpus index of `texts[0]` (sampling keys follow the corpus index,
            so texts translated in pieces, e.g. streamed, sample as if translated together).

        Returns:
          The translations; `self.stats` holds this call's timing.
        """
        params = self._params(params)
        source_ids, results, batches, rows = self._prepare(texts)
        self._compile(params, rows, sorted({b.width for b in batches}), None)
        alpha = np.float32(self.search.alpha)

        def dispatch(batch: Batch) -> tuple[jax.Array, ...]:
            inputs, limits, keys = self._inputs(batch, source_ids, rows, first_index)
            return self._search_fn(params, inputs, limits, keys, alpha)

        def collect(batch: Batch, outputs: tuple[np.ndarray, ...]) -> None:
            self._collect(batch, outputs, results, attention_for)

        self._pipeline(batches, dispatch, collect, progress)
        return results

    def score(
        self,
        params: PyTree,
        texts: Sequence[str],
        targets: Sequence[str | np.ndarray],
        *,
        attention_for: Container[int] = (),
        progress: bool = False,
    ) -> list[Translation]:
        """Forced decoding: the model's log-probability of each given target, without searching.

        Batched like `translate` (sources sorted into the same buckets; targets padded to
        `bucket_widths` of the longest target). The score is the sum of the target tokens'
        log-probabilities, EOS included, computed by the step function exactly as the searches
        compute their hypotheses' scores (pad excluded from the softmax; an ensemble averages
        its models' log-probabilities).

        Args:
          params: the model's parameters (an ensemble: the sequence of its models').
          texts: the sources, one per item; a blank one is not scored.
          targets: one per source: a text (encoded with the target tokenizer, EOS appended), or
            int ids [T] taken as given (e.g. a `Translation.output_ids`).
          attention_for: indices whose forced attention [T_i, S_i] is returned.
          progress: show a tqdm bar on stderr.

        Returns:
          One `Translation` per source: `text` = the target text, `output_ids` = the target ids
          scored, `score` = `log_prob` = their log-probability; a blank source gives no ids and
          score 0.

        Raises:
          ValueError: a count mismatch, an empty id target, or a target longer than the
            model can embed (naming the 1-based line).
        """
        if len(targets) != len(texts):
            raise ValueError(f"{len(targets)} targets for {len(texts)} sources")
        params = self._params(params)
        source_ids, results, batches, rows = self._prepare(texts)
        target_ids = self._encode_targets(targets, results)
        widths = bucket_widths(max([len(t) for t in target_ids] + [1]))
        plan = [
            (b, next(w for w in widths if w >= max(len(target_ids[i]) for i in b.indices)))
            for b in batches
        ]
        self._compile(params, rows, sorted({(b.width, w) for b, w in plan}), "score")
        width_of = {id(b): w for b, w in plan}

        def dispatch(batch: Batch) -> tuple[jax.Array, ...]:
            inputs, _, _ = self._inputs(batch, source_ids, rows, 0)
            index = _row_index(batch, rows)
            forced = np.zeros((rows, width_of[id(batch)]), np.int32)
            for row, i in enumerate(index):
                forced[row, : len(target_ids[i])] = target_ids[i]
            lengths = np.asarray([len(target_ids[i]) for i in index], np.int32)
            return self._score_fn(params, inputs, forced, lengths)

        def collect(batch: Batch, outputs: tuple[np.ndarray, ...]) -> None:
            scores, _, attention = outputs
            for row, i in enumerate(batch.indices):
                out = results[int(i)]
                out.output_ids = target_ids[i]
                out.score = out.log_prob = float(scores[row])
                if int(i) in attention_for:
                    out.attention = np.asarray(
                        attention[row, : len(out.output_ids), : len(out.source_ids)], np.float32
                    )

        self._pipeline(batches, dispatch, collect, progress)
        return results

    def _encode_targets(
        self, targets: Sequence[str | np.ndarray], results: list[Translation]
    ) -> list[np.ndarray]:
        """Target ids (text: tokens + EOS) of the sources that are decoded; sets `text`."""
        cap = self.target_length_cap()
        texts = [t if isinstance(t, str) else "" for t in targets]
        encoded = self.target_tokenizer.encode_batch(texts)
        ids = []
        for i, target in enumerate(targets):
            if isinstance(target, str):
                results[i].text = _one_line(target)
                row = np.asarray([*encoded[i], self.target_tokenizer.eos_id], np.int32)
            else:
                row = np.asarray(target, np.int32).reshape(-1)
                results[i].text = _one_line(self.target_tokenizer.decode(row.tolist()))
            if results[i].source_ids.size and row.size == 0:
                raise ValueError(
                    f"line {i + 1}: an empty target has no token to score (a text target gets EOS)"
                )
            if results[i].source_ids.size and cap is not None and row.size > cap:
                raise ValueError(
                    f"line {i + 1}: the target has {row.size} tokens (EOS "
                    f"included), more than the model's max_len {cap}"
                )
            ids.append(row if results[i].source_ids.size else np.zeros((0,), np.int32))
        return ids

    def _prepare(
        self, texts: Sequence[str]
    ) -> tuple[list[np.ndarray], list[Translation], list[Batch], int]:
        """Encodes and plans `texts`: (source ids, empty results, batches, rows); resets stats."""
        source_ids, truncated = encode_sources(texts, self.source_tokenizer, self.max_source_length)
        batches = plan_batches(
            [len(s) for s in source_ids], batch_size=self.batch_size, widths=self.widths
        )
        rows = batch_rows(sum(len(b.indices) for b in batches), self.batch_size)
        self.stats = TranslateStats(
            sentences=sum(len(b.indices) for b in batches), batches=len(batches)
        )
        empty = np.zeros((0,), np.int32)
        results = [Translation("", ids, empty, 0.0) for ids in source_ids]
        for i in truncated:
            results[i].truncated = True
        return source_ids, results, batches, rows

    def _pipeline(
        self,
        batches: Sequence[Batch],
        dispatch: Callable[[Batch], Any],
        collect: Callable[[Batch, Any], None],
        progress: bool,
    ) -> None:
        """Runs `dispatch` on each batch, collecting batch k while batch k+1 computes."""
        bar = _progress_bar(self.stats.sentences, progress and len(batches) > 1)
        start, pending = time.perf_counter(), None
        for batch in [*batches, None]:  # Dispatch batch k+1 before reading batch k's results.
            outputs = None if batch is None else dispatch(batch)
            if pending is not None:
                collect(pending[0], jax.device_get(pending[1]))
                bar.update(len(pending[0].indices))
            pending = None if batch is None else (batch, outputs)
        self.stats.decode_seconds = time.perf_counter() - start
        bar.close()

    def _inputs(
        self, batch: Batch, source_ids: Sequence[np.ndarray], rows: int, first_index: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """inputs int32 [rows, S], limits int32 [rows], keys uint32 [rows, 2] of a batch."""
        inputs = batch_sources(batch, source_ids, rows)
        index = row_index(batch, rows)
        limits = source_limits(np.asarray([len(source_ids[i]) for i in index]), self.search)
        if self.search.sample:
            return inputs, limits, sentence_keys(self.search.seed, index + first_index)
        return inputs, limits, np.zeros((rows, 2), np.uint32)

    def _compile(
        self, params: tuple[PyTree, ...], rows: int, shapes: Sequence[Any], kind: str | None
    ) -> None:
        """Compiles (and runs once on a one-token input) the programs not compiled yet: one per
        source width (`kind=None`, search) or (source width, target width) (`kind='score'`)."""
        start = time.perf_counter()
        for shape in shapes:
            if (kind, rows, shape) in self._compiled:
                continue
            width = shape[0] if kind else shape
            inputs = np.zeros((rows, width), np.int32)
            inputs[:, 0] = self.source_tokenizer.eos_id
            if kind:
                targets = np.zeros((rows, shape[1]), np.int32)
                targets[:, 0] = self.target_tokenizer.eos_id
                outputs = self._score_fn(params, inputs, targets, np.ones((rows,), np.int32))
            else:
                outputs = self._search_fn(
                    params,
                    inputs,
                    np.ones((rows,), np.int32),
                    np.zeros((rows, 2), np.uint32),
                    np.float32(self.search.alpha),
                )
            jax.block_until_ready(outputs)
            self._compiled.add((kind, rows, shape))
            self.stats.programs_compiled += 1
        self.stats.compile_seconds = time.perf_counter() - start

    def _log_probs(self, scores: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Sums of token log-probabilities from the search's scores (beam: times the GNMT
        penalty the score was divided by)."""
        if self.search.beam_size == 1:
            return np.asarray(scores, np.float64)
        penalty = np.asarray(decoding.gnmt_length_penalty(lengths, self.search.alpha), np.float64)
        return (np.asarray(scores, np.float64) * penalty).astype(np.float32)  # Float32 sums.

    def _collect(
        self,
        batch: Batch,
        outputs: tuple[np.ndarray, ...],
        results: list[Translation],
        attention_for: Container[int],
    ) -> None:
        tokens, lengths, scores, attention = outputs[:4]  # [B, L], [B], [B], [B, L, S]
        log_probs = self._log_probs(scores, lengths)
        for row, i in enumerate(batch.indices):
            i, length = int(i), int(lengths[row])
            out = results[i]
            out.output_ids = np.asarray(tokens[row, :length], np.int32)
            out.text = _one_line(self.target_tokenizer.decode(out.output_ids.tolist()))
            out.score = float(scores[row])
            out.log_prob = float(log_probs[row])
            if i in attention_for:
                out.attention = np.asarray(
                    attention[row, :length, : len(out.source_ids)], np.float32
                )
        if len(outputs) > 4:  # The n-best beams [B, n, L], [B, n], [B, n].
            nbest_tokens, nbest_lengths, nbest_scores = outputs[4:]
            nbest_log_probs = self._log_probs(nbest_scores, nbest_lengths)
            for row, i in enumerate(batch.indices):
                hypotheses = []
                for k in range(nbest_tokens.shape[1]):
                    if not np.isfinite(nbest_scores[row, k]):  # An empty beam slot.
                        continue
                    ids = np.asarray(nbest_tokens[row, k, : int(nbest_lengths[row, k])], np.int32)
                    hypotheses.append(
                        Hypothesis(
                            _one_line(self.target_tokenizer.decode(ids.tolist())),
                            ids,
                            float(nbest_scores[row, k]),
                            float(nbest_log_probs[row, k]),
                        )
                    )
                results[int(i)].hypotheses = hypotheses


_row_index = row_index  # Model-free helpers: seq2seq_jax.inference.batching.
_one_line = one_line


def _progress_bar(total: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        disable=not enabled,
        file=sys.stderr,
        unit="sent",
        dynamic_ncols=True,
        mininterval=0.5,
        desc="decode",
    )
