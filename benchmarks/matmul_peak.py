"""The machine's measured matmul peak: large square `jnp.dot` compiled by XLA.

This is the denominator of the "fraction of peak" figures: model FLOP/s are compared with what
XLA itself reaches on one large dense matmul on the same machine in the same run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.timing import Figure, figure, median, time_calls


def measure_peak(size: int, dtype: str = "float32", repeats: int = 10) -> float:
    """FLOP/s of one jitted `[size, size] @ [size, size]` matmul (median over `repeats`).

    Args:
      size: the matrix side n; the matmul costs 2 n^3 FLOPs.
      dtype: operand dtype ("float32" or "bfloat16"; bf16 accumulates in float32).
      repeats: timed calls after one warm-up.

    Returns:
      FLOP/s (not GFLOP/s).
    """
    if size < 1:
        raise ValueError(f"matmul size must be >= 1, got {size}")
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (size, size), jnp.float32).astype(dtype)  # [n, n]
    y = jax.random.normal(ky, (size, size), jnp.float32).astype(dtype)  # [n, n]
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    seconds = median(time_calls(lambda: dot(x, y), repeats=repeats))
    return 2.0 * size**3 / seconds


def run(
    size: int = 2048, repeats: int = 10, dtypes: tuple[str, ...] = ("float32",)
) -> list[Figure]:
    """The matmul peak figures, one per dtype, in GFLOP/s."""
    figures = []
    for dtype in dtypes:
        peak = measure_peak(size, dtype, repeats)
        figures.append(
            figure(f"matmul_peak/{dtype}", peak / 1e9, "GFLOP/s", size=size, repeats=repeats)
        )
    return figures
