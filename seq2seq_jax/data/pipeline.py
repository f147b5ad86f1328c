"""Grain pipelines: a deterministic, resumable train iterator and finite eval batches.

Train stream (glossary: B rows per host, P processes, N examples in the split):

    source (TFDS array_record) -> global shuffle, reseeded every epoch -> repeat
    -> [pad|pack: this host's positions p, p+P, ...] -> chunks of 256 -> tokenize + length policy
    -> batches (the batching mode, `modes.py`) -> background prefetch

Every batch has exactly B rows. 'pad' and 'pack' give one shape, (B, max_source_length) and
(B, max_target_length); 'bucket' pads each side to the next bucket boundary, and all hosts read
the same global window and keep their rows of each global batch (same shapes on every host at
every step, at the price of tokenizing the window P times). How each mode cuts the stream, and
the iterator state (a few integers that resume exactly), are in `modes.py`; `config.data`
is parsed once into a `DataConfig` (`config.py`), which every function here accepts (a
`ConfigDict` is parsed on the way in).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator

import grain
import numpy as np

from seq2seq_jax.data import batching, modes, sources
from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data.batching import Example
from seq2seq_jax.data.modes import CHUNK_SIZE

log = logging.getLogger(__name__)


def _make_plan(
    data_config: config_lib.DataConfig,
    batch_size: int,
    process_index: int,
    process_count: int,
    seed: int,
    split_size: int,
    name: str,
    row_multiple: int = 1,
) -> modes.Plan:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    return modes.Plan(
        rows=batch_size,
        process_index=process_index,
        process_count=process_count,
        max_lengths=data_config.max_lengths,
        truncate=data_config.overlength == "truncate",
        seed=int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0]),
        split_size=split_size,
        name=name,
        row_multiple=row_multiple,
    )


def _chunk_stream(
    text_source: sources.TextPairSource,
    mode: modes.Mode,
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
    plan = mode.plan
    indices = grain.MapDataset.range(len(text_source))
    if shuffle:
        indices = indices.shuffle(seed=plan.seed)
    indices = indices.repeat(num_epochs)
    if mode.shards_stream and plan.process_count > 1:
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


def make_train_dataset(
    data_config: config_lib.AnyDataConfig,
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
    data_config = config_lib.parse(data_config)
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
    mode = modes.for_config(data_config, plan)
    if len(text_source) < batch_size * process_count:
        raise ValueError(
            f"Dataset {plan.name} has {len(text_source)} examples, fewer than one batch "
            f"({batch_size} rows x {process_count} processes = {batch_size * process_count})"
        )
    chunks = _chunk_stream(
        text_source,
        mode,
        source_tokenizer,
        target_tokenizer,
        shuffle=data_config.shuffle,
        num_epochs=num_epochs,
        cache_max_examples=data_config.cache_max_examples,
    )
    stream_length = len(text_source) * (num_epochs or 1)
    if num_epochs is None:
        stream_length = sys.maxsize
    if mode.shards_stream:
        stream_length = len(range(process_index, stream_length, process_count))
    dataset = mode.train_dataset(chunks, stream_length)
    if data_config.prefetch > 0:
        dataset = grain.experimental.ThreadPrefetchIterDataset(
            dataset, prefetch_buffer_size=data_config.prefetch
        )
    return dataset


def make_train_iterator(
    data_config: config_lib.AnyDataConfig,
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
      data_config: `config.data`: a `DataConfig`, or a `ConfigDict` parsed here.
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
    of batches with the same shapes (the mode's `eval_lengths` of the global batch). Over-long
    examples are truncated, never dropped.
    """

    def __init__(self, examples: list[Example], mode: modes.Mode):
        self._examples, self._mode, self._plan = examples, mode, mode.plan

    def __len__(self) -> int:
        return max(1, math.ceil(len(self._examples) / (self._plan.rows * self._plan.process_count)))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        plan = self._plan
        group_size = plan.rows * plan.process_count
        for g in range(len(self)):
            group = self._examples[g * group_size : (g + 1) * group_size]
            start = g * group_size + plan.process_index * plan.rows
            mine = self._examples[start : min(start + plan.rows, (g + 1) * group_size)]
            yield batching.assemble([[e] for e in mine], plan.rows, self._mode.eval_lengths(group))


def make_eval_batches(
    data_config: config_lib.AnyDataConfig,
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
      data_config: `config.data`, a `DataConfig` or a `ConfigDict` parsed here ('pad' pads
          to the max lengths; 'bucket' and 'pack' pad each batch to the next bucket
          boundary; no packing).
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
    data_config = config_lib.parse(data_config)
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
    return EvalBatches([example for example, _ in encoded], modes.for_config(data_config, plan))
