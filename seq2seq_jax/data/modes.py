"""Batching modes: one strategy object per `data.batching`, chosen once by `for_config`.

Each mode turns the tokenized train stream (`pipeline.py`: a Grain `MapDataset` of chunks of
CHUNK_SIZE `(example or None, status)` items, one per stream position) into a resumable Grain
`IterDataset` of batch dicts, and says how the eval batches of a split are padded:

- `PadMode` ('pad'): B kept examples in stream order, padded to the max lengths (one shape).
- `BucketMode` ('bucket'): windows of `bucket_window_batches` global batches read by every
  host, sorted by bucket, cut into global batches of B * P rows (`batching.bucket_groups`);
  each host keeps its B rows, so all hosts have the same shapes at every step.
- `TokenBudgetMode` ('bucket' with `tokens_per_batch`): the same windows cut into batches of
  one length class each, rows from a fixed table (`batching.token_budget_groups`).
- `PackMode` ('pack'): Grain's own `FirstFitPackIterDataset` (B bins of the max lengths, rows
  emitted in bin order, `.batch(B)`), over the stream of kept examples.

`pad` and `pack` shard the stream by position (`shards_stream`: host p reads p, p+P, ...).
Every mode's iterator has the same state, a few integers: `position` (in the stream),
`batch_in_window`, `examples_read`, `examples_overlength`, and the `rows` and `process_count` it
was made with; restoring it continues with exactly the next batch.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import math
from typing import Any

import grain
import numpy as np

from seq2seq_jax.data import batching
from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data.batching import Example

log = logging.getLogger(__name__)

CHUNK_SIZE = 256  # Stream positions read and tokenized together (pipeline.py).
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The facts of one pipeline that every mode reads."""

    rows: int  # B per host; with token budgets the most rows a batch may have.
    process_index: int
    process_count: int  # P
    max_lengths: tuple[int, int]
    truncate: bool  # data.overlength == 'truncate'
    seed: int  # Derived from the experiment's (or shuffle) seed; orders bucket windows.
    split_size: int  # N, examples in the split.
    name: str  # '<dataset>:<split>', for messages.
    row_multiple: int = 1  # Token budgets: global rows are a multiple of this (device count).


class Mode(abc.ABC):
    """A batching mode, built for one pipeline (`for_config`)."""

    shards_stream: bool  # True: host p reads stream positions p, p+P, ... (else all read all).

    def __init__(self, config: config_lib.DataConfig, plan: Plan):
        self.plan = plan
        self.boundaries = config.side_boundaries

    @abc.abstractmethod
    def train_dataset(self, chunks: grain.MapDataset, stream_length: int) -> grain.IterDataset:
        """The `IterDataset` of this host's train batches over the tokenized `chunks`."""

    def eval_lengths(self, group: list[Example]) -> tuple[int, int]:
        """Padded (S, T) of the eval batch holding `group` (the global batch's examples)."""
        if not group:
            return self.plan.max_lengths
        return tuple(  # type: ignore[return-value]
            batching.padded_length(max(len(e[side]) for e in group), self.boundaries[side])
            for side in (0, 1)
        )


def for_config(config: config_lib.DataConfig, plan: Plan) -> Mode:
    """The mode `config.batching` (and `config.tokens_per_batch`) asks for."""
    if config.batching == "bucket" and config.tokens_per_batch:
        return TokenBudgetMode(config, plan)
    return _MODES[config.batching](config, plan)


# --- Reading the stream ----------------------------------------------------------------------


class _Progress:
    """Examples read and over-long so far; logs the first over-long one and every epoch."""

    def __init__(self, plan: Plan, shards_stream: bool):
        self._plan = plan
        self._per_epoch = plan.split_size
        if shards_stream:
            self._per_epoch = math.ceil(plan.split_size / plan.process_count)
        self.read = self.overlength = 0

    def add(self, read: int, overlength: int) -> None:
        plan = self._plan
        what = "truncated" if plan.truncate else "dropped"
        if self.overlength == 0 and overlength:
            log.warning(
                "%s: over-long examples (source > %d or target > %d tokens) are %s; the count "
                "is logged every epoch and kept in the iterator state",
                plan.name,
                *plan.max_lengths,
                what,
            )
        epoch_before = self.read // self._per_epoch
        self.read += read
        self.overlength += overlength
        if self.read // self._per_epoch > epoch_before:
            log.info(
                "%s: epoch %d read (process %d): %d of %d examples so far over-long (%s)",
                plan.name,
                self.read // self._per_epoch,
                plan.process_index,
                self.overlength,
                self.read,
                what,
            )


class _Reader:
    """Random access to the tokenized stream by position (the current chunk cached)."""

    def __init__(self, chunks: grain.MapDataset, stream_length: int, plan: Plan):
        self._chunks, self._length, self._plan = chunks, stream_length, plan
        self._cache: tuple[int, list] = (-1, [])

    def __call__(self, position: int) -> tuple[Example | None, int] | None:
        """(example or None if filtered, status) at a stream position; None past the end."""
        if position >= self._length:
            return None
        index, offset = divmod(position, CHUNK_SIZE)
        if self._cache[0] != index:
            self._cache = (index, self._chunks[index])
        return self._cache[1][offset]

    def check_dropped(self, dropped_in_a_row: int) -> None:
        if dropped_in_a_row > self._plan.split_size:
            raise ValueError(
                f"{self._plan.name}: every example is longer than max_source_length="
                f"{self._plan.max_lengths[0]} / max_target_length={self._plan.max_lengths[1]} "
                f"(overlength='filter')"
            )


def _state(position: int, batch: int, progress: _Progress, plan: Plan) -> dict[str, int]:
    return {
        "position": int(position),
        "batch_in_window": int(batch),
        "examples_read": int(progress.read),
        "examples_overlength": int(progress.overlength),
        "rows": int(plan.rows),
        "process_count": int(plan.process_count),
    }


def _restored_position(state: dict[str, int], plan: Plan, shards_stream: bool) -> int | None:
    """The position to resume from; None when the state is exact (same rows and processes).

    A state saved with other rows or process count resumes approximately (with a warning):
    from the start of the saved window (all hosts read the same stream), or from the same
    point of the global stream (sharded streams).
    """
    saved = (int(state.get("rows", plan.rows)), int(state.get("process_count", plan.process_count)))
    if saved == (plan.rows, plan.process_count):
        return None
    log.warning(
        "%s: data state saved with %d rows x %d processes, restored with %d x %d: "
        "resuming approximately",
        plan.name,
        *saved,
        plan.rows,
        plan.process_count,
    )
    position = int(state["position"])
    return position * saved[1] // plan.process_count if shards_stream else position


# --- Window modes: pad, bucket, token budgets ------------------------------------------------


@dataclasses.dataclass
class _Window:
    batches: list[Batch]
    end: int  # stream position after the window
    read: int  # stream positions consumed
    overlength: int  # of which over-long (filtered or truncated)


class WindowMode(Mode):
    """Reads windows of kept examples and cuts each into batches (ours: Grain has no bucketing)."""

    @abc.abstractmethod
    def window_examples(self) -> int:
        """Kept examples per window."""

    @abc.abstractmethod
    def cut(self, kept: list[Example], start: int) -> list[Batch]:
        """This host's batches of a window of kept examples (non-empty) read from `start`."""

    def train_dataset(self, chunks: grain.MapDataset, stream_length: int) -> grain.IterDataset:
        return _ModeDataset(chunks, lambda: _WindowIterator(chunks, stream_length, self), self)


class _ModeDataset(grain.IterDataset):
    """IterDataset of a mode's batch dicts over a MapDataset of tokenized chunks."""

    def __init__(self, parent, make_iterator, mode: Mode):
        super().__init__(parent)
        self._make_iterator, self._mode = make_iterator, mode

    def __iter__(self) -> grain.DatasetIterator:
        return self._make_iterator()

    def __str__(self) -> str:
        return f"Seq2seqBatches(mode={type(self._mode).__name__}, rows={self._mode.plan.rows})"


class _WindowIterator(grain.DatasetIterator):
    """Builds batches window by window; a window is rebuilt from its start on restore."""

    def __init__(self, chunks: grain.MapDataset, stream_length: int, mode: WindowMode):
        super().__init__()
        self._read = _Reader(chunks, stream_length, mode.plan)
        self._mode, self._plan = mode, mode.plan
        self._progress = _Progress(mode.plan, mode.shards_stream)
        self._position = self._batch = 0
        self._window: _Window | None = None

    def _take(self, start: int, limit: int) -> tuple[list[Example], int, int]:
        """(up to `limit` kept examples from `start`, position after them, over-long read)."""
        kept, position, overlength, dropped_in_a_row = [], start, 0, 0
        while len(kept) < limit:
            item = self._read(position)
            if item is None:
                break
            example, status = item
            if example is None:
                dropped_in_a_row += 1
                self._read.check_dropped(dropped_in_a_row)
            else:
                dropped_in_a_row = 0
                kept.append(example)
            overlength += status != batching.KEPT
            position += 1
        return kept, position, overlength

    def __next__(self) -> Batch:
        if self._window is None:
            start = self._position
            kept, end, overlength = self._take(start, self._mode.window_examples())
            batches = self._mode.cut(kept, start) if kept else []
            self._window = _Window(batches, end, end - start, overlength)
        if self._batch >= len(self._window.batches):
            raise StopIteration
        batch = self._window.batches[self._batch]
        self._batch += 1
        if self._batch == len(self._window.batches):
            self._progress.add(self._window.read, self._window.overlength)
            self._position, self._batch, self._window = self._window.end, 0, None
        return batch

    def get_state(self) -> dict[str, int]:
        return _state(self._position, self._batch, self._progress, self._plan)

    def set_state(self, state: dict[str, int]) -> None:
        """Restores a state; one saved with other rows or process count resumes approximately."""
        self._position, self._batch = int(state["position"]), int(state["batch_in_window"])
        self._progress.read = int(state["examples_read"])
        self._progress.overlength = int(state["examples_overlength"])
        self._window = None
        position = _restored_position(state, self._plan, self._mode.shards_stream)
        if position is not None:
            self._position, self._batch = position, 0


class PadMode(WindowMode):
    """'pad': B examples in stream order, [B, max_source_length] / [B, max_target_length]."""

    shards_stream = True

    def window_examples(self) -> int:
        return self.plan.rows

    def cut(self, kept: list[Example], start: int) -> list[Batch]:
        return [batching.assemble([[e] for e in kept], self.plan.rows, self.plan.max_lengths)]

    def eval_lengths(self, group: list[Example]) -> tuple[int, int]:
        return self.plan.max_lengths


class BucketMode(WindowMode):
    """'bucket': windows sorted by bucket, cut into global batches of B * P rows."""

    shards_stream = False

    def __init__(self, config: config_lib.DataConfig, plan: Plan):
        super().__init__(config, plan)
        self.window_batches = config.bucket_window_batches

    def window_examples(self) -> int:
        return self.window_batches * self.plan.rows * self.plan.process_count

    def groups(self, kept: list[Example], rng: np.random.Generator):
        """[(examples, (S, T), global rows)] of a window, in batch order."""
        group_size = self.plan.rows * self.plan.process_count
        groups = batching.bucket_groups(kept, group_size, self.boundaries, rng)
        return [(group, lengths, group_size) for group, lengths in groups]

    def cut(self, kept: list[Example], start: int) -> list[Batch]:
        plan = self.plan
        batches, rng = [], np.random.default_rng([plan.seed, start])
        for group, lengths, global_rows in self.groups(kept, rng):
            rows = global_rows // plan.process_count  # This host's rows of the batch.
            mine = group[plan.process_index * rows : (plan.process_index + 1) * rows]
            batches.append(batching.assemble([[e] for e in mine], rows, lengths))
        return batches


class TokenBudgetMode(BucketMode):
    """'bucket' with `tokens_per_batch`: batches of one length class each, rows from a table."""

    def __init__(self, config: config_lib.DataConfig, plan: Plan):
        super().__init__(config, plan)
        self.padding = config.token_budget_padding
        self.rows_by_length = batching.token_budget_rows(
            config.length_classes,
            config.tokens_per_batch,
            max_rows=plan.rows * plan.process_count,
            multiple=math.lcm(plan.row_multiple, plan.process_count),
        )

    def groups(self, kept: list[Example], rng: np.random.Generator):
        return batching.token_budget_groups(
            kept, self.rows_by_length, self.plan.max_lengths, rng, self.padding
        )


# --- Packing: Grain's FirstFitPackIterDataset ------------------------------------------------

# Grain's packed feature names -> the batch dict's.
_PACKED_KEYS = {
    "inputs": "inputs",
    "targets": "targets",
    "inputs_segment_ids": "inputs_segmentation",
    "targets_segment_ids": "targets_segmentation",
    "inputs_positions": "inputs_position",
    "targets_positions": "targets_position",
}


class PackMode(Mode):
    """'pack': several examples per row, first fit in stream order, never split (Grain's packer).

    `grain.experimental.FirstFitPackIterDataset` with B bins and no bin shuffling is our former
    packer exactly: each example goes to the first row with room on both sides; one that fits
    no row closes the batch and starts the next one. Its state is the state of its parent (the
    kept examples, below) before the current batch's first example, so a restore re-packs
    that batch from the stream: exact. The parent reads the filtered (over-long) examples that
    follow a kept one together with it, so that a batch's state covers what was read before
    the example that did not fit, as the window modes' do, and the end of an epoch counts all
    its examples.
    """

    shards_stream = True

    def train_dataset(self, chunks: grain.MapDataset, stream_length: int) -> grain.IterDataset:
        plan = self.plan
        examples = _ModeDataset(chunks, lambda: _ExampleIterator(chunks, stream_length, self), self)
        packed = grain.experimental.FirstFitPackIterDataset(
            examples,
            length_struct=dict(zip(("inputs", "targets"), plan.max_lengths, strict=True)),
            num_packing_bins=plan.rows,
            shuffle_bins=False,
        )
        batches = packed.batch(plan.rows, batch_fn=self._batch)
        return _ModeDataset(batches, lambda: _PackedBatchIterator(iter(batches), self), self)

    def _batch(self, rows: list[dict[str, np.ndarray]]) -> Batch:
        """Grain's packed rows -> the batch dict, all-zero rows filling the epoch's last batch."""
        out = {}
        for theirs, ours in _PACKED_KEYS.items():
            packed = np.stack([row[theirs] for row in rows])
            out[ours] = np.zeros((self.plan.rows, packed.shape[1]), np.int32)
            out[ours][: len(rows)] = packed
        return {key: out[key] for key in batching.BATCH_KEYS}


class _ExampleIterator(grain.DatasetIterator):
    """The kept examples of the stream as {'inputs', 'targets'}; state: position and counts."""

    def __init__(self, chunks: grain.MapDataset, stream_length: int, mode: Mode):
        super().__init__()
        self._read, self._plan = _Reader(chunks, stream_length, mode.plan), mode.plan
        self._progress = _Progress(mode.plan, mode.shards_stream)
        self._position = 0

    def _skip_filtered(self) -> None:
        dropped_in_a_row = 0
        while (item := self._read(self._position)) is not None and item[0] is None:
            dropped_in_a_row += 1
            self._read.check_dropped(dropped_in_a_row)
            self._progress.add(1, 1)
            self._position += 1

    def __next__(self) -> dict[str, np.ndarray]:
        self._skip_filtered()
        item = self._read(self._position)
        if item is None:
            raise StopIteration
        (source, target), status = item
        self._progress.add(1, int(status != batching.KEPT))
        self._position += 1
        self._skip_filtered()  # Read with this example (see PackMode).
        return {"inputs": source, "targets": target}

    def get_state(self) -> dict[str, int]:
        return {
            "position": self._position,
            "examples_read": self._progress.read,
            "examples_overlength": self._progress.overlength,
        }

    def set_state(self, state: dict[str, int]) -> None:
        self._position = int(state["position"])
        self._progress.read = int(state["examples_read"])
        self._progress.overlength = int(state["examples_overlength"])


class _PackedBatchIterator(grain.DatasetIterator):
    """Grain's packed batches, with the state of every other mode (flat integers)."""

    def __init__(self, parent: grain.DatasetIterator, mode: PackMode):
        super().__init__(parent)
        self._mode, self._plan = mode, mode.plan

    def __next__(self) -> Batch:
        return next(self._parent)

    def get_state(self) -> dict[str, int]:
        state: dict[str, Any] = self._parent.get_state()  # Grain's packer's.
        # Between batches no packed row is pending: the state is the stream's before the batch.
        assert state["next_row"] == 0, state
        stream = state["parent"]
        progress = _Progress(self._plan, True)
        progress.read, progress.overlength = stream["examples_read"], stream["examples_overlength"]
        return _state(stream["position"], 0, progress, self._plan)

    def set_state(self, state: dict[str, int]) -> None:
        position = _restored_position(state, self._plan, shards_stream=True)
        stream = {
            "position": int(state["position"] if position is None else position),
            "examples_read": int(state["examples_read"]),
            "examples_overlength": int(state["examples_overlength"]),
        }
        # `counter` only seeds bin shuffling, which is off.
        self._parent.set_state({"parent": stream, "next_row": 0, "counter": 0})


_MODES: dict[str, type[Mode]] = {"pad": PadMode, "bucket": BucketMode, "pack": PackMode}
