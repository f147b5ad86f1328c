"""Timing helpers and the figure record shared by the benchmark modules.

A figure is one JSON-able dict `{"name", "value", "unit"}`, plus `"peer_value"` and `"ratio"`
(ours / peer, oriented so that higher is better) when a peer measured the same thing, plus any
extra context keys (sizes, repeats, notes).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

Figure = dict[str, Any]


def figure(
    name: str,
    value: float,
    unit: str,
    *,
    peer_value: float | None = None,
    lower_is_better: bool = False,
    **extra: Any,
) -> Figure:
    """Builds one figure record.

    Args:
      name: the figure's name, e.g. "train/rnnsearch/tokens_per_s".
      value: our measurement.
      unit: its unit, e.g. "tokens/s".
      peer_value: the peer's measurement of the same thing, if any.
      lower_is_better: for times and memory: the ratio is then peer / ours, so a ratio above 1
        still means "we are better".
      **extra: context kept in the record (sizes, notes).

    Returns:
      The record; `ratio` present only with a positive `peer_value`.
    """
    record: Figure = {"name": name, "value": _round(value), "unit": unit}
    if peer_value is not None:
        record["peer_value"] = _round(peer_value)
        if peer_value > 0 and value > 0:
            ratio = peer_value / value if lower_is_better else value / peer_value
            record["ratio"] = round(ratio, 3)
    record.update(extra)
    return record


def _round(x: float) -> float:
    """Four significant digits: enough for noisy timings, short on screen."""
    return float(f"{float(x):.4g}")


def block(tree: Any) -> Any:
    """Waits for every array of `tree` (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of `fn()` (outputs blocked on), `repeats` times after `warmup` calls."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    """The median (robust to the other engineers' processes stealing a core now and then)."""
    return float(statistics.median(values))
