"""Attention alignments: heatmap PNGs (as in Bahdanau et al., 2015) and a JSON-lines format.

Plots use matplotlib's object API on the Agg canvas (no pyplot state, no display needed).
Shape glossary: T output tokens (rows), S source tokens (columns).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_CELL_INCHES = 0.35  # size of one heatmap cell
_MARGIN_INCHES = 1.6  # room for tick labels, colorbar and title
_MAX_INCHES = 60.0


def _check_alignment(
    weights: Any, source_tokens: Sequence[str], output_tokens: Sequence[str], where: str
) -> np.ndarray:
    """Returns weights as float [T, S]; raises ValueError naming `where` on a mismatch."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2:
        raise ValueError(
            f"{where}: attention weights must be 2-D [output, source], got shape {weights.shape}."
        )
    expected = (len(output_tokens), len(source_tokens))
    if weights.shape != expected:
        raise ValueError(
            f"{where}: attention weights have shape {weights.shape} but there are "
            f"{expected[0]} output tokens and {expected[1]} source tokens "
            f"(expected {expected})."
        )
    if not np.isfinite(weights).all():
        raise ValueError(f"{where}: attention weights contain NaN or infinity.")
    return weights


def plot_attention(
    weights: Any,
    source_tokens: Sequence[str],
    output_tokens: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    dpi: int = 100,
) -> str:
    """Writes an alignment heatmap: source tokens along x (top), output tokens down y.

    The figure grows with the sentence lengths (0.35 inch a token) so every label stays
    readable; weights are drawn on a fixed 0-1 grey scale (white = all attention).

    Args:
      weights: [T, S] attention of each output token over the source tokens (e.g. a decode
        result's `attention[b, :length, :source_length]`).
      source_tokens: S source token strings.
      output_tokens: T output token strings.
      path: PNG file to write; parent directories are created.
      title: optional title.
      dpi: resolution.

    Returns:
      The path written, as a string.

    Raises:
      ValueError: if the weights are not [len(output_tokens), len(source_tokens)], not finite,
        or empty.
    """
    weights = _check_alignment(weights, source_tokens, output_tokens, f"plot_attention({path})")
    rows, cols = weights.shape
    if rows == 0 or cols == 0:
        raise ValueError(
            f"plot_attention({path}): nothing to plot, {rows} output and {cols} source tokens."
        )
    size = (
        min(_MAX_INCHES, _MARGIN_INCHES + 1.0 + _CELL_INCHES * max(cols, 1)),
        min(_MAX_INCHES, _MARGIN_INCHES + _CELL_INCHES * max(rows, 1)),
    )
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(
        weights, cmap="gray", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    ax.set_xticks(range(cols), labels=list(source_tokens), rotation=90, fontsize=9)
    ax.set_yticks(range(rows), labels=list(output_tokens), fontsize=9)
    ax.xaxis.tick_top()
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    if title:
        ax.set_title(title, fontsize=10, pad=12)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


@dataclass(frozen=True)
class AlignmentRecord:
    """One sentence's alignment: `weights[t, s]` is output token t's attention on source token s.

    Attributes:
      index: the sentence's line number in the input (0-based).
      source_tokens: S source token strings.
      output_tokens: T output token strings.
      weights: [T, S] attention weights.
    """

    index: int
    source_tokens: Sequence[str]
    output_tokens: Sequence[str]
    weights: Any

    def to_json(self, decimals: int = 6) -> str:
        """One JSON line: index, source_tokens, output_tokens, weights (rounded lists)."""
        weights = _check_alignment(
            self.weights, self.source_tokens, self.output_tokens, f"alignment record {self.index}"
        )
        return json.dumps(
            {
                "index": int(self.index),
                "source_tokens": list(self.source_tokens),
                "output_tokens": list(self.output_tokens),
                "weights": np.round(weights, decimals).tolist(),
            },
            ensure_ascii=False,
        )


def write_alignments_jsonl(
    path: str | os.PathLike,
    records: Iterable[AlignmentRecord | Mapping[str, Any]],
    *,
    decimals: int = 6,
) -> int:
    """Writes one JSON object per line: {"index", "source_tokens", "output_tokens", "weights"}.

    Args:
      path: output file (UTF-8); parent directories are created.
      records: `AlignmentRecord`s or mappings with the same keys.
      decimals: rounding of the weights.

    Returns:
      The number of records written.

    Raises:
      ValueError: if a record's weights do not match its token counts (names the record).
      KeyError: if a mapping lacks a key.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            if not isinstance(record, AlignmentRecord):
                missing = {"index", "source_tokens", "output_tokens", "weights"} - set(record)
                if missing:
                    raise KeyError(f"alignment record {count} lacks keys {sorted(missing)}.")
                record = AlignmentRecord(
                    record["index"],
                    record["source_tokens"],
                    record["output_tokens"],
                    record["weights"],
                )
            f.write(record.to_json(decimals) + "\n")
            count += 1
    return count


def read_alignments_jsonl(path: str | os.PathLike) -> list[AlignmentRecord]:
    """Reads a file written by `write_alignments_jsonl` (weights as float arrays [T, S])."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                weights = np.asarray(obj["weights"], np.float64).reshape(
                    len(obj["output_tokens"]), len(obj["source_tokens"])
                )
                records.append(
                    AlignmentRecord(
                        obj["index"], obj["source_tokens"], obj["output_tokens"], weights
                    )
                )
    return records
