"""Peak memory and speed of additive cross-attention for parallel queries: naive vs chunked.

The measured function is a Transformer decoder's cross-attention sub-layer, forward and
backward: `x + Dense(AdditiveAttention(LN(x), encoded, mask))` with a padding mask [B, T, S],
loss = sum of squares, gradients with respect to the parameters, `x` and `encoded`. The naive
form materialises the [B, T, S, A] tanh tensor (and its gradient); the chunked form
(`implementation='chunked'`) keeps one T-chunk of it alive at a time and recomputes it in the
backward pass.

Memory is XLA's own figure for the compiled function (`memory_analysis()`: temporary buffers
plus arguments and outputs), so the naive form is measured at the issue's size (B=32,
T=S=256, D=512: 4 GiB for the tanh tensor alone) without running it. Speed is timed at a size
where the naive form fits comfortably.

Shape glossary: B batch, T query (target) length, S source length, D model width = A.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from benchmarks.settings import BenchSettings
from benchmarks.timing import Figure, figure, median, time_calls
from seq2seq_jax.layers.attention import AdditiveAttention


class CrossAttentionBlock(nn.Module):
    """Pre-LN residual additive cross-attention, as in a Transformer decoder layer.

    Attributes:
      dim: D, the model and attention width.
      implementation: 'naive' or 'chunked' (see `AdditiveAttention`).
      chunk_size: T-chunk of the chunked form (0: the layer's automatic choice).
    """

    dim: int
    implementation: str
    chunk_size: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, encoded: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, T, D], encoded [B, S, D], mask bool [B, T, S] -> [B, T, D]."""
        attention = AdditiveAttention(
            self.dim, implementation=self.implementation, chunk_size=self.chunk_size
        )
        context, _ = attention(nn.LayerNorm()(x), encoded, mask)  # [B, T, D]
        return x + nn.Dense(self.dim)(context)


def _inputs(batch: int, length: int, dim: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, T, D], encoded [B, S, D] and a padding mask [B, T, S] (sources of length S/2..S)."""
    kx, ke = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (batch, length, dim))
    encoded = jax.random.normal(ke, (batch, length, dim))
    lengths = length - jnp.arange(batch) % (length // 2 + 1)  # [B]
    mask = jnp.arange(length)[None, None, :] < lengths[:, None, None]  # [B, 1, S]
    return x, encoded, jnp.broadcast_to(mask, (batch, length, length))


def make_grad_fn(block: CrossAttentionBlock) -> Callable[..., Any]:
    """jit of (params, x, encoded, mask) -> (loss, grads w.r.t. params, x and encoded)."""

    def loss(params, x, encoded, mask):
        y = block.apply({"params": params}, x, encoded, mask)
        return jnp.sum(jnp.square(y.astype(jnp.float32)))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def compiled_bytes(block: CrossAttentionBlock, batch: int, length: int) -> dict[str, int]:
    """XLA's memory figures of forward + backward, from compilation alone (nothing runs)."""
    x, encoded, mask = (
        jax.ShapeDtypeStruct(a.shape, a.dtype)
        for a in jax.eval_shape(lambda: _inputs(batch, length, block.dim))
    )
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), x, encoded, mask)["params"]
    memory = make_grad_fn(block).lower(params, x, encoded, mask).compile().memory_analysis()
    temp = int(memory.temp_size_in_bytes)
    total = temp + int(memory.argument_size_in_bytes) + int(memory.output_size_in_bytes)
    return {"temp": temp, "total": total}


def time_block(block: CrossAttentionBlock, batch: int, length: int, repeats: int) -> float:
    """Median seconds of one forward + backward at [B, T=S, D]."""
    x, encoded, mask = _inputs(batch, length, block.dim)
    params = block.init(jax.random.PRNGKey(0), x, encoded, mask)["params"]
    grad_fn = make_grad_fn(block)
    return median(time_calls(lambda: grad_fn(params, x, encoded, mask), repeats=repeats))


def run(settings: BenchSettings) -> list[Figure]:
    """Memory of both forms at the issue's size; speed of both where the naive form fits."""
    b, t, d = settings.attention_batch, settings.attention_length, settings.attention_dim
    naive, chunked = CrossAttentionBlock(d, "naive"), CrossAttentionBlock(d, "chunked")
    sizes = {"batch": b, "length": t, "dim": d}
    mem_naive, mem_chunked = compiled_bytes(naive, b, t), compiled_bytes(chunked, b, t)
    figures = [
        figure(
            "attention/naive/peak_memory",
            mem_naive["total"] / 2**20,
            "MiB",
            temp_mib=round(mem_naive["temp"] / 2**20, 1),
            **sizes,
        ),
        figure(
            "attention/chunked/peak_memory",
            mem_chunked["total"] / 2**20,
            "MiB",
            peer_value=mem_naive["total"] / 2**20,
            lower_is_better=True,
            peer="naive",
            temp_mib=round(mem_chunked["temp"] / 2**20, 1),
            **sizes,
        ),
    ]
    sb, st = settings.attention_speed_batch, settings.attention_speed_length
    speed_sizes = {"batch": sb, "length": st, "dim": d, "repeats": settings.attention_repeats}
    t_naive = time_block(naive, sb, st, settings.attention_repeats)
    t_chunked = time_block(chunked, sb, st, settings.attention_repeats)
    figures += [
        figure("attention/naive/fwd_bwd_time", t_naive * 1e3, "ms", **speed_sizes),
        figure(
            "attention/chunked/fwd_bwd_time",
            t_chunked * 1e3,
            "ms",
            peer_value=t_naive * 1e3,
            lower_is_better=True,
            peer="naive",
            **speed_sizes,
        ),
    ]
    return figures
