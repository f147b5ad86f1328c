"""Grain pipelines: a deterministic, resumable train iterator and finite eval batches.

Train stream (glossary: B rows per host, P processes, N examples in the split):

    source (TFDS array_record) -> global shuffle, reseeded every epoch -> repeat
    -> [pad|pack: this host's positions p, p+P, ...] -> chunks of 256 -> tokenize + length policy
    -> batches (pad | bucket | pack) -> background prefetch

Every batch has exactly B rows. 'pad' and 'pack' give one shape, (B, max_source_length) and
(B, max_target_length); 'bucket' pads each side to the next bucket boundary. For 'bucket' all
hosts read the same global window of `bucket_window_batches * B * P` examples, sort it by length
and cut global batches of B * P rows, of which each host keeps its B: shapes agree on every host
at every step (jit sees the same global shape), at the price of tokenizing the window P times.

The iterator's state is a few integers (`position` in the stream, `batch_in_window`,
`examples_read`, `examples_overlength`, and the `rows` and `process_count` it was made with):
restoring it rebuilds the window from the deterministic stream, so batch k+1 onwards come out
exactly as they would have.

Token budgets (`data.tokens_per_batch`, 'bucket' only): the window is cut by
`batching.token_budget_groups` into batches of one length class L each, with the class's rows
from a fixed table (`batching.token_budget_rows`: rows x L <= budget, a multiple of the device
count, at most B * P), so each step function sees one shape per class; hosts agree on every
shape as above, each keeping its rows / P.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from collections.abc import Iterator

import grain
import ml_collections
import numpy as np

from seq2seq_jax.data import batching, sources
from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data.batching import Example

log = logging.getLogger(__name__)
CHUNK_SIZE = 256


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Resolved batching settings of one pipeline."""

    mode: str
    rows: int  # B, per host
    process_index: int
    process_count: int
    max_lengths: tuple[int, int]
    boundaries: tuple[tuple[int, ...], tuple[int, ...]]
    truncate: bool
    window_batches: int
    seed: int
    split_size: int  # N
    name: str
    # Token budgets ('bucket' with data.tokens_per_batch): {length class L: global rows}; empty
    # when off. `rows` is then the largest rows value per host (batch_size / P).
    rows_by_length: dict[int, int] = dataclasses.field(default_factory=dict)
    budget_padding: str = "side"  # data.token_budget_padding


def _make_plan(
    data_config: ml_collections.ConfigDict,
    batch_size: int,
    process_index: int,
    process_count: int,
    seed: int,
    split_size: int,
    name: str,
    row_multiple: int = 1,
) -> _Plan:
    config_lib.validate_data_config(data_config)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    lengths = (data_config.max_source_length, data_config.max_target_length)
    rows_by_length = {}
    if data_config.tokens_per_batch:
        rows_by_length = batching.token_budget_rows(
            config_lib.length_classes(data_config), data_config.tokens_per_batch,
            max_rows=batch_size * process_count, multiple=math.lcm(row_multiple, process_count))
    return _Plan(
        mode=data_config.batching,
        rows=batch_size,
        process_index=process_index,
        process_count=process_count,
        max_lengths=lengths,
        boundaries=tuple(config_lib.bucket_boundaries(data_config, n) for n in lengths),
        truncate=data_config.overlength == "truncate",
        window_batches=data_config.bucket_window_batches,
        seed=int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0]),
        split_size=split_size,
        name=name,
        rows_by_length=rows_by_length,
        budget_padding=data_config.token_budget_padding,
    )


def _chunk_stream(
    text_source: sources.TextPairSource,
    plan: _Plan,
    source_tok,
    target_tok,
    *,
    shuffle: bool,
    num_epochs: int | None,
    cache_max_examples: int = 0,
) -> grain.MapDataset:
    """Returns the MapDataset of tokenized chunks of CHUNK_SIZE stream positions.

    The stream is a Grain MapDataset of example indices (global permutation, reseeded every
    epoch; repeated; host-sharded for 'pad'/'pack'); each chunk of indices is read with one
    batched array_record read and tokenized in one call, and memoised per index when the split
    has at most `cache_max_examples` examples.
    """
    indices = grain.MapDataset.range(len(text_source))
    if shuffle:
        indices = indices.shuffle(seed=plan.seed)
    indices = indices.repeat(num_epochs)
    if plan.mode != "bucket" and plan.process_count > 1:
        indices = indices[plan.process_index :: plan.process_count]
    encode = lambda chunk: batching.encode_pairs(
        text_source.read(chunk), source_tok, target_tok, plan.max_lengths, plan.truncate
    )
    if len(text_source) <= cache_max_examples:
        encode = _CachedEncoder(encode)
    return indices.batch(CHUNK_SIZE, batch_fn=list).map(encode)


class _CachedEncoder:
    """Memoises the tokenized example of each source index (later epochs skip read + encode)."""

    def __init__(self, encode):
        self._encode = encode
        self._cache: dict[int, tuple[Example | None, int]] = {}

    def __call__(self, chunk: list[int]) -> list[tuple[Example | None, int]]:
        missing = [i for i in dict.fromkeys(chunk) if i not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encode(missing), strict=True))
        return [self._cache[i] for i in chunk]


@dataclasses.dataclass
class _Window:
    batches: list[dict[str, np.ndarray]]
    end: int  # stream position after the window
    read: int  # stream positions consumed
    overlength: int  # of which over-long (filtered or truncated)


class _BatchIterator(grain.DatasetIterator):
    """Builds batches window by window from the tokenized stream; its state is integers."""

    def __init__(self, chunks: grain.MapDataset, stream_length: int, plan: _Plan):
        super().__init__()
        self._chunks, self._stream_length, self._plan = chunks, stream_length, plan
        self._position = self._batch = self._read = self._overlength = 0
        self._window: _Window | None = None
        self._chunk_cache: tuple[int, list] = (-1, [])

    def _example(self, position: int) -> tuple[Example | None, int] | None:
        """(example or None if filtered, status) at a stream position; None past the end."""
        if position >= self._stream_length:
            return None
        index, offset = divmod(position, CHUNK_SIZE)
        if self._chunk_cache[0] != index:
            self._chunk_cache = (index, self._chunks[index])
        return self._chunk_cache[1][offset]

    def _take(
        self, start: int, stop_after_kept: float, packer: batching.FirstFitPacker | None = None
    ) -> tuple[list[Example], int, int]:
        """Reads kept examples from `start`.

        Returns:
            (kept examples, position after the last one read, over-long examples read).
        """
        kept, position, overlength, dropped_in_a_row = [], start, 0, 0
        while len(kept) < stop_after_kept:
            item = self._example(position)
            if item is None:
                break
            example, status = item
            if example is None:
                dropped_in_a_row += 1
                if dropped_in_a_row > self._plan.split_size:
                    raise ValueError(
                        f"{self._plan.name}: every example is longer than max_source_length="
                        f"{self._plan.max_lengths[0]} / max_target_length="
                        f"{self._plan.max_lengths[1]} (overlength='filter')"
                    )
            else:
                dropped_in_a_row = 0
                if packer is not None and not packer.add(example):
                    break
                kept.append(example)
            overlength += status != batching.KEPT
            position += 1
        return kept, position, overlength

    def _build_window(self, start: int) -> _Window:
        plan = self._plan
        if plan.mode == "pack":
            packer = batching.FirstFitPacker(plan.rows, plan.max_lengths)
            kept, end, overlength = self._take(start, math.inf, packer)
            rows = [r for r in packer.rows if r]
            batches = [batching.assemble(rows, plan.rows, plan.max_lengths)] if kept else []
        elif plan.mode == "pad":
            kept, end, overlength = self._take(start, plan.rows)
            batches = [batching.assemble([[e] for e in kept], plan.rows, plan.max_lengths)]
            batches = batches if kept else []
        else:
            group_size = plan.rows * plan.process_count
            kept, end, overlength = self._take(start, plan.window_batches * group_size)
            rng = np.random.default_rng([plan.seed, start])
            if plan.rows_by_length:
                groups = batching.token_budget_groups(
                    kept, plan.rows_by_length, plan.max_lengths, rng, plan.budget_padding)
            else:
                groups = [(group, lengths, group_size) for group, lengths in
                          batching.bucket_groups(kept, group_size, plan.boundaries, rng)]
            batches = []
            for group, lengths, global_rows in groups:
                rows = global_rows // plan.process_count  # This host's rows of the batch.
                mine = group[plan.process_index * rows : (plan.process_index + 1) * rows]
                batches.append(batching.assemble([[e] for e in mine], rows, lengths))
        return _Window(batches, end, end - start, overlength)

    def __next__(self) -> dict[str, np.ndarray]:
        if self._window is None:
            self._window = self._build_window(self._position)
        if self._batch >= len(self._window.batches):
            raise StopIteration
        batch = self._window.batches[self._batch]
        self._batch += 1
        if self._batch == len(self._window.batches):
            self._finish_window()
        return batch

    def _finish_window(self) -> None:
        window, plan = self._window, self._plan
        examples_per_epoch = plan.split_size
        if plan.mode != "bucket":
            examples_per_epoch = math.ceil(plan.split_size / plan.process_count)
        if self._overlength == 0 and window.overlength:
            log.warning(
                "%s: over-long examples (source > %d or target > %d tokens) are %s; the count "
                "is logged every epoch and kept in the iterator state",
                plan.name,
                *plan.max_lengths,
                "truncated" if plan.truncate else "dropped",
            )
        epoch_before = self._read // examples_per_epoch
        self._read += window.read
        self._overlength += window.overlength
        self._position, self._batch, self._window = window.end, 0, None
        if self._read // examples_per_epoch > epoch_before:
            log.info(
                "%s: epoch %d read (process %d): %d of %d examples so far over-long (%s)",
                plan.name,
                self._read // examples_per_epoch,
                plan.process_index,
                self._overlength,
                self._read,
                "truncated" if plan.truncate else "dropped",
            )

    def get_state(self) -> dict[str, int]:
        return {
            "position": int(self._position),
            "batch_in_window": int(self._batch),
            "examples_read": int(self._read),
            "examples_overlength": int(self._overlength),
            "rows": int(self._plan.rows),
            "process_count": int(self._plan.process_count),
        }

    def set_state(self, state: dict[str, int]) -> None:
        """Restores a state; one saved with other rows or process count resumes approximately.

        Same rows and process count: exactly the next batch. Otherwise (with a warning) the
        stream resumes from the start of the saved window ('bucket', so a few examples may be
        seen twice), or from the same point of the global stream ('pad'/'pack').
        """
        plan = self._plan
        self._position = int(state["position"])
        self._batch = int(state["batch_in_window"])
        self._read = int(state["examples_read"])
        self._overlength = int(state["examples_overlength"])
        self._window = None
        saved = (
            int(state.get("rows", plan.rows)),
            int(state.get("process_count", plan.process_count)),
        )
        if saved != (plan.rows, plan.process_count):
            log.warning(
                "%s: data state saved with %d rows x %d processes, restored with %d x %d: "
                "resuming approximately",
                plan.name,
                *saved,
                plan.rows,
                plan.process_count,
            )
            self._batch = 0
            if plan.mode != "bucket":
                self._position = self._position * saved[1] // plan.process_count


class _BatchDataset(grain.IterDataset):
    """IterDataset of batch dicts over a MapDataset of tokenized chunks."""

    def __init__(self, chunks: grain.MapDataset, stream_length: int, plan: _Plan):
        super().__init__(chunks)
        self._stream_length, self._plan = stream_length, plan

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self._parent, self._stream_length, self._plan)

    def __str__(self) -> str:
        return f"Seq2seqBatches(mode={self._plan.mode}, rows={self._plan.rows})"


def make_train_dataset(
    data_config: ml_collections.ConfigDict,
    source_tokenizer,
    target_tokenizer,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    row_multiple: int = 1,
) -> grain.IterDataset:
    """Returns the train `IterDataset` (see `make_train_iterator`, which iterates it)."""
    split = data_config.train_split
    text_source = sources.open_split(data_config, split)
    if data_config.shuffle_seed is not None:
        seed = data_config.shuffle_seed
    plan = _make_plan(
        data_config,
        batch_size,
        process_index,
        process_count,
        seed,
        len(text_source),
        f"{data_config.name}:{split}",
        row_multiple,
    )
    if len(text_source) < batch_size * process_count:
        raise ValueError(
            f"Dataset {plan.name} has {len(text_source)} examples, fewer than one batch "
            f"({batch_size} rows x {process_count} processes = {batch_size * process_count})"
        )
    chunks = _chunk_stream(
        text_source,
        plan,
        source_tokenizer,
        target_tokenizer,
        shuffle=data_config.shuffle,
        num_epochs=num_epochs,
        cache_max_examples=data_config.cache_max_examples,
    )
    stream_length = len(text_source) * (num_epochs or 1)
    if num_epochs is None:
        stream_length = sys.maxsize
    if plan.mode != "bucket":
        stream_length = len(range(process_index, stream_length, process_count))
    dataset = _BatchDataset(chunks, stream_length, plan)
    if data_config.prefetch > 0:
        dataset = grain.experimental.ThreadPrefetchIterDataset(
            dataset, prefetch_buffer_size=data_config.prefetch
        )
    return dataset


def make_train_iterator(
    data_config: ml_collections.ConfigDict,
    source_tokenizer,
    target_tokenizer,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
    row_multiple: int = 1,
) -> grain.DatasetIterator:
    """Returns the deterministic, checkpointable iterator of train batches of this host.

    Args:
        data_config: `config.data`.
        source_tokenizer: Tokenizer of the source side.
        target_tokenizer: Tokenizer of the target side.
        batch_size: Rows of every batch on this host (B); with `data.tokens_per_batch`, the
            most rows a batch may have.
        seed: Shuffle seed (`data_config.shuffle_seed` overrides it when set).
        process_index: This host's index (`jax.process_index()`).
        process_count: Number of hosts (`jax.process_count()`).
        num_epochs: None repeats forever; else stops after that many passes (the last batch
            padded with all-zero rows).
        row_multiple: With token budgets, global rows are a multiple of this (the
            data-parallel device count).

    Returns:
        A `grain.DatasetIterator` of batch dicts (int32 numpy, B rows); `get_state()` /
        `set_state()`, and `grain.checkpoint.CheckpointSave/CheckpointRestore` inside an Orbax
        `CheckpointManager`, resume it exactly.

    Raises:
        ValueError: the split has fewer examples than one global batch; bad config values.
    """
    dataset = make_train_dataset(
        data_config,
        source_tokenizer,
        target_tokenizer,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
        row_multiple=row_multiple,
    )
    return iter(dataset)


class EvalBatches:
    """Re-iterable, finite batches covering a split once, in stored order.

    Global batch g holds examples [g*B*P, (g+1)*B*P); process p gets rows [p*B, (p+1)*B) of it,
    so concatenating the processes' rows in process order restores the split order (the
    order of `load_texts`); all-zero rows fill the end. Every process yields the same number
    of batches with the same shapes. Over-long examples are truncated, never dropped.
    """

    def __init__(self, examples: list[Example], plan: _Plan):
        self._examples, self._plan = examples, plan

    def __len__(self) -> int:
        return max(1, math.ceil(len(self._examples) / (self._plan.rows * self._plan.process_count)))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        plan = self._plan
        group_size = plan.rows * plan.process_count
        for g in range(len(self)):
            group = self._examples[g * group_size : (g + 1) * group_size]
            lengths = plan.max_lengths
            if plan.mode != "pad" and group:
                lengths = tuple(
                    batching.padded_length(max(len(e[side]) for e in group), plan.boundaries[side])
                    for side in (0, 1)
                )
            start = g * group_size + plan.process_index * plan.rows
            mine = self._examples[start : min(start + plan.rows, (g + 1) * group_size)]
            yield batching.assemble([[e] for e in mine], plan.rows, lengths)


def make_eval_batches(
    data_config: ml_collections.ConfigDict,
    source_tokenizer,
    target_tokenizer,
    *,
    split: str,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int | None = None,
) -> EvalBatches:
    """Returns the finite batches of a split (each example once, in `load_texts` order).

    Args:
        data_config: `config.data` ('pad' pads to the max lengths; 'bucket' and 'pack' pad each
            batch to the next bucket boundary; no packing).
        source_tokenizer: Tokenizer of the source side.
        target_tokenizer: Tokenizer of the target side.
        split: TFDS split string, e.g. 'validation'.
        batch_size: Rows per batch on this host (B).
        process_index: This host's index.
        process_count: Number of hosts.
        max_examples: Use only the first this many examples.

    Returns:
        An `EvalBatches` (re-iterable; `len()` = number of batches).
    """
    pairs = sources.load_texts(data_config, split, max_examples)
    plan = _make_plan(
        data_config,
        batch_size,
        process_index,
        process_count,
        0,
        len(pairs),
        f"{data_config.name}:{split}",
    )
    encoded = batching.encode_pairs(
        pairs, source_tokenizer, target_tokenizer, plan.max_lengths, truncate=True
    )
    truncated = sum(status == batching.TRUNCATED for _, status in encoded)
    if truncated:
        log.warning(
            "%s: %d of %d examples longer than %d/%d tokens were truncated for evaluation",
            plan.name,
            truncated,
            len(pairs),
            *plan.max_lengths,
        )
    return EvalBatches([example for example, _ in encoded], plan)
