"""Decoding speed: greedy and beam-search sentences/s, encoder included, as the peer measures.

One jitted function per mode encodes the source, builds the decoding cache and runs the
project's `greedy_search` / `beam_search` (`seq2seq_jax.decoding`) over the model's
`decode_step`, for at most `target_length` steps (EOS included), like the peer's `max_len`.
Each mode runs in float32 (like the peer) and in bfloat16 (`python -m seq2seq_jax.decode
--dtype=bfloat16`: weights cast once, float32 accumulation and logits); the bfloat16 figures are
compared with the peer's float32 ones and say so (`"dtype"`, `"peer_dtype"`).

Shape glossary: B batch, S source length, L maximum output length, K beam.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks.settings import BenchSettings
from benchmarks.timing import Figure, figure, median, time_calls
from benchmarks.train_bench import model_config, reference_batch
from seq2seq_jax.decoding import beam_search, greedy_search
from seq2seq_jax.models import (
    ModelConfig,
    build_model,
    init_decode_cache,
    init_variables,
    make_tokens_to_logits,
    with_dtype,
)

DTYPES = ("float32", "bfloat16")
DTYPE_SUFFIX = {"bfloat16": "bf16"}


def make_decoder(
    cfg: ModelConfig, mode: str, length: int, beam_size: int = 1, dtype: str = "float32"
) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """A jitted `decode(variables, inputs [B, S]) -> tokens [B, L]` and fresh variables.

    Args:
      cfg: the model configuration (its `bos_id` / `eos_id` are used).
      mode: 'greedy' or 'beam'.
      length: L, the maximum output length.
      beam_size: K for 'beam'.
      dtype: the decoding dtype ('float32', or e.g. 'bfloat16' via `models.with_dtype`).
    """
    if mode not in ("greedy", "beam"):
        raise ValueError(f"unknown decoding mode {mode!r}; known: 'greedy', 'beam'")
    cfg = cfg.replace(deterministic=True)
    variables = init_variables(build_model(cfg), jax.random.PRNGKey(0))
    if dtype != "float32":
        cfg, params = with_dtype(cfg, variables["params"], dtype)
        variables = {"params": params}
    model = build_model(cfg)
    ids = dict(bos_id=cfg.bos_id, eos_id=cfg.eos_id, max_length=length)

    @jax.jit
    def decode(variables: Any, inputs: jax.Array) -> jax.Array:
        cache = init_decode_cache(model, variables, inputs, max_decode_length=length)
        step = make_tokens_to_logits(model, variables)
        if mode == "greedy":
            return greedy_search(step, cache, **ids).tokens
        return beam_search(step, cache, beam_size=beam_size, **ids).tokens

    return decode, variables


def measure_decoding(
    cfg: ModelConfig, settings: BenchSettings, mode: str, dtype: str = "float32"
) -> list[float]:
    """Seconds per decoded batch of `settings.batch` sentences (compile excluded)."""
    decode, variables = make_decoder(cfg, mode, settings.target_length, settings.beam_size, dtype)
    inputs = jnp.asarray(reference_batch(settings)["inputs"])  # [B, S]
    repeats = settings.decode_repeats if mode == "greedy" else max(1, settings.decode_repeats // 2)
    return time_calls(functools.partial(decode, variables, inputs), repeats=repeats)


def run(
    settings: BenchSettings,
    *,
    families: tuple[str, ...] = ("rnnsearch",),
    peers: dict[str, dict[str, dict[str, Any]]] | None = None,
    **overrides: Any,
) -> list[Figure]:
    """Greedy and beam figures per family; `peers[family][mode]` is the peer's record."""
    figures = []
    for family in families:
        cfg = model_config(family, settings, **overrides)
        for dtype, mode in itertools.product(DTYPES, ("greedy", "beam")):
            seconds = median(measure_decoding(cfg, settings, mode, dtype))
            peer = ((peers or {}).get(family) or {}).get(mode)
            name = f"decode/{family}/{mode}" + (f"{settings.beam_size}" if mode == "beam" else "")
            name += "" if dtype == "float32" else f"_{DTYPE_SUFFIX[dtype]}"
            figures.append(
                figure(
                    f"{name}/sentences_per_s",
                    settings.batch / seconds,
                    "sentences/s",
                    peer_value=peer.get("sentences_per_s") if peer else None,
                    batch=settings.batch,
                    max_length=settings.target_length,
                    beam=settings.beam_size if mode == "beam" else 1,
                    dtype=dtype,
                    peer_dtype="float32",
                )
            )
    return figures
