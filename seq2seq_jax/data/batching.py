"""Pure NumPy batch building: length policy, bucketing, token budgets, and the batch dict.

Glossary: B rows of a batch, S source length, T target length. An example is a pair of int32
arrays (source ids, target ids), each ending with EOS. A row is a list of examples (one unless
packed). The batch dict (see docs/ARCHITECTURE.md) has `inputs`, `targets`,
`inputs_segmentation`, `targets_segmentation`, `inputs_position`, `targets_position`, all int32.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

Example = tuple[np.ndarray, np.ndarray]  # (source ids [s], target ids [t]), each ends with EOS
Row = list[Example]

KEPT, TRUNCATED, FILTERED = 0, 1, 2
BATCH_KEYS = (
    "inputs",
    "targets",
    "inputs_segmentation",
    "targets_segmentation",
    "inputs_position",
    "targets_position",
)


def with_eos(
    ids: Sequence[int], eos_id: int, max_length: int, truncate: bool
) -> tuple[np.ndarray | None, bool]:
    """Appends EOS and applies the length policy.

    Args:
      ids: Token ids without EOS.
      eos_id: The tokenizer's EOS id.
      max_length: Maximum length with EOS.
      truncate: Cut to `max_length - 1` ids plus EOS when too long; else return None.

    Returns:
      (int32 array ending with EOS or None when dropped, whether it was too long).
    """
    too_long = len(ids) + 1 > max_length
    if too_long and not truncate:
        return None, True
    kept = list(ids[: max_length - 1]) if too_long else list(ids)
    return np.asarray([*kept, eos_id], dtype=np.int32), too_long


def encode_pairs(
    pairs: Sequence[tuple[str, str]],
    source_tokenizer,
    target_tokenizer,
    max_lengths: tuple[int, int],
    truncate: bool,
) -> list[tuple[Example | None, int]]:
    """Tokenizes text pairs and applies the length policy.

    Args:
      pairs: (source, target) texts.
      source_tokenizer: Tokenizer of the source side (`encode_batch`, `eos_id`).
      target_tokenizer: Tokenizer of the target side.
      max_lengths: (max source length, max target length), EOS included.
      truncate: Truncate over-long examples (else drop them).

    Returns:
      Per pair: (example or None when filtered, KEPT | TRUNCATED | FILTERED).
    """
    src_ids = source_tokenizer.encode_batch([s for s, _ in pairs])
    tgt_ids = target_tokenizer.encode_batch([t for _, t in pairs])
    out = []
    for s, t in zip(src_ids, tgt_ids, strict=True):
        src, src_long = with_eos(s, source_tokenizer.eos_id, max_lengths[0], truncate)
        tgt, tgt_long = with_eos(t, target_tokenizer.eos_id, max_lengths[1], truncate)
        if src is None or tgt is None:
            out.append((None, FILTERED))
        else:
            out.append(((src, tgt), TRUNCATED if (src_long or tgt_long) else KEPT))
    return out


def padded_length(length: int, boundaries: Sequence[int]) -> int:
    """Returns the smallest boundary >= `length` (boundaries ascending, last = max length)."""
    i = bisect.bisect_left(boundaries, length)
    if i == len(boundaries):
        raise ValueError(f"Length {length} exceeds the largest bucket boundary {boundaries[-1]}")
    return boundaries[i]


def assemble(rows: Sequence[Row], num_rows: int, lengths: tuple[int, int]) -> dict[str, np.ndarray]:
    """Builds the batch dict from rows of examples, padding with all-zero rows.

    Args:
      rows: At most `num_rows` rows; each a list of examples laid out left to right.
      num_rows: B, rows of the batch.
      lengths: (S, T) padded lengths.

    Returns:
      The batch dict; segmentation is 1..n per row on real tokens (0 on padding) and
      positions restart at 0 for every example.
    """
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit in a batch of {num_rows}")
    batch = {k: np.zeros((num_rows, lengths[k.startswith("t")]), np.int32) for k in BATCH_KEYS}
    for r, row in enumerate(rows):
        offsets = [0, 0]
        for segment, example in enumerate(row, start=1):
            for side, prefix in enumerate(("inputs", "targets")):
                ids, start = example[side], offsets[side]
                end = start + len(ids)
                if end > lengths[side]:
                    raise ValueError(f"Row {r} needs {prefix} length {end} > {lengths[side]}")
                batch[prefix][r, start:end] = ids
                batch[f"{prefix}_segmentation"][r, start:end] = segment
                batch[f"{prefix}_position"][r, start:end] = np.arange(len(ids))
                offsets[side] = end
    return batch


def bucket_groups(
    examples: Sequence[Example],
    group_size: int,
    boundaries: tuple[Sequence[int], Sequence[int]],
    rng: np.random.Generator,
) -> list[tuple[list[Example], tuple[int, int]]]:
    """Sorts a window of examples by bucket, cuts it into groups, shuffles the group order.

    Args:
      examples: The window.
      group_size: Examples per group (the global batch: rows x processes).
      boundaries: (source boundaries, target boundaries).
      rng: Orders the groups.

    Returns:
      Groups of `group_size` examples (the last may be smaller), each with its padded
      (S, T): the smallest boundaries that hold every example of the group.
    """

    def key(i: int) -> tuple[int, int, int]:
        s, t = len(examples[i][0]), len(examples[i][1])
        return (bisect.bisect_left(boundaries[0], s), bisect.bisect_left(boundaries[1], t), s + t)

    order = sorted(range(len(examples)), key=key)
    groups = []
    for start in range(0, len(order), group_size):
        group = [examples[i] for i in order[start : start + group_size]]
        lengths = (
            padded_length(max(len(e[0]) for e in group), boundaries[0]),
            padded_length(max(len(e[1]) for e in group), boundaries[1]),
        )
        groups.append((group, lengths))
    return [groups[i] for i in rng.permutation(len(groups))]


def token_budget_rows(
    lengths: Sequence[int], tokens_per_batch: int, max_rows: int, multiple: int
) -> dict[int, int]:
    """The fixed rows table of token-budget batches: one global rows value per length class.

    Args:
      lengths: The ascending length classes L (padded lengths, EOS included).
      tokens_per_batch: The global budget: rows x L <= tokens_per_batch.
      max_rows: At most this many rows (`batch_size`).
      multiple: Rows are a multiple of this (the data-parallel device count).

    Returns:
      {L: rows}, each rows the largest multiple of `multiple` <= min(max_rows, budget // L).

    Raises:
      ValueError: the budget holds fewer than `multiple` rows of some length class.
    """
    table = {}
    for length in lengths:
        rows = min(max_rows, tokens_per_batch // length)
        rows -= rows % multiple
        if rows < multiple:
            raise ValueError(
                f"config.data.tokens_per_batch={tokens_per_batch} holds fewer than {multiple} "
                f"rows (the device count) of length {length}; raise it to at least "
                f"{multiple * length} or lower the max lengths"
            )
        table[int(length)] = int(rows)
    return table


def token_budget_groups(
    examples: Sequence[Example],
    rows_by_length: dict[int, int],
    max_lengths: tuple[int, int],
    rng: np.random.Generator,
    padding: str = "side",
) -> list[tuple[list[Example], tuple[int, int], int]]:
    """Cuts a window of examples into token-budget batches of one length class each.

    An example's class is the smallest L of `rows_by_length` with max(source, target length)
    <= L. With `padding='class'` a batch pads both sides to L (capped at each side's max
    length): one shape per class, so the step compiles at most once per class. With
    `padding='side'` each side is padded to the smallest class length that holds its longest
    example (<= L), so a short side (a summary's target) is not padded to the long one, at the
    price of more shapes (up to a pair of classes each). Classes are filled in ascending order
    and the examples left over from one class (fewer than its rows) move up into the next, so
    only the last batch of the window has empty rows. The batch order is shuffled with `rng`.

    Args:
      examples: The window.
      rows_by_length: `token_budget_rows(...)`: {L: global rows}.
      max_lengths: (max source length, max target length).
      rng: Orders the batches.
      padding: 'class' or 'side' (above).

    Returns:
      (examples, (S, T), global rows) per batch; len(examples) <= rows.
    """
    classes = sorted(rows_by_length)

    def length_class(e: Example) -> int:
        return bisect.bisect_left(classes, max(len(e[0]), len(e[1])))

    by_class: list[list[Example]] = [[] for _ in classes]
    keyed = sorted((length_class(e), len(e[0]) + len(e[1]), i) for i, e in enumerate(examples))
    for c, _, i in keyed:
        by_class[c].append(examples[i])
    groups, pending = [], []
    for c, length in enumerate(classes):
        pending += by_class[c]
        rows = rows_by_length[length]
        last = c == len(classes) - 1
        while len(pending) >= rows or (last and pending):
            group, pending = pending[:rows], pending[rows:]
            if padding == "class":
                padded = (min(length, max_lengths[0]), min(length, max_lengths[1]))
            else:
                padded = tuple(
                    min(
                        classes[bisect.bisect_left(classes, max(len(e[side]) for e in group))],
                        max_lengths[side],
                    )
                    for side in (0, 1)
                )
            groups.append((group, padded, rows))
    return [groups[i] for i in rng.permutation(len(groups))]
