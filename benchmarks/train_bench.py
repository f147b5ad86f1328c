"""Train-step speed of the RNNsearch reference and the additive-attention Transformer.

The step is the project's own (`seq2seq_jax.training.trainer.make_step_fns`: one jitted,
state-donating `train_step`), with Adam (lr 1e-3) and global-norm clipping at 1.0 like the
PyTorch peer. The batch has the peer's shape and length distribution: source lengths uniform in
[S/2, S] (padded), full-length targets. Tokens/s counts target tokens, as the peer does.

Shape glossary: B batch, S source length, T target length, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from benchmarks import flops as flops_lib
from benchmarks.settings import BenchSettings
from benchmarks.timing import Figure, figure, median
from seq2seq_jax.models import ModelConfig, build_model, default_model_config
from seq2seq_jax.training import optim, trainer

# Benchmarked model -> (preset of seq2seq_jax.models.config with the peer's sizes, overrides).
# `transformer_dot` has the PyTorch Transformer peer's dot-product cross-attention: the
# like-for-like comparison; `transformer` is the project's additive cross-attention.
PRESETS = {
    "rnnsearch": ("rnnsearch_reference", {}),
    "transformer": ("transformer_multi30k", {}),
    "transformer_dot": ("transformer_multi30k", {"attention_type": "dot"}),
}
BOS_ID, EOS_ID = 1, 2  # the peer's ids (shared/bench/torch_rnnsearch.py)


def model_config(family: str, settings: BenchSettings, **overrides: Any) -> ModelConfig:
    """The benchmarked `ModelConfig` of `family` (a key of `PRESETS`)."""
    if family not in PRESETS:
        raise ValueError(f"unknown benchmark model {family!r}; known: {sorted(PRESETS)}")
    preset, preset_overrides = PRESETS[family]
    section = default_model_config(preset)
    for key, value in (*preset_overrides.items(), *settings.model_overrides, *overrides.items()):
        section[key] = value
    return ModelConfig.from_config(
        section,
        source_vocab_size=settings.vocab,
        target_vocab_size=settings.vocab,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
    )


def reference_batch(settings: BenchSettings, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch dict like the peer's: int32 [B, S] padded sources, [B, T] full targets."""
    rng = np.random.default_rng(seed)
    b, s, t = settings.batch, settings.source_length, settings.target_length
    lengths = rng.integers(max(1, s // 2), s + 1, size=b)  # [B]
    valid = np.arange(s)[None, :] < lengths[:, None]  # [B, S]
    inputs = np.where(valid, rng.integers(3, settings.vocab, size=(b, s)), 0).astype(np.int32)
    targets = rng.integers(3, settings.vocab, size=(b, t)).astype(np.int32)
    positions = np.broadcast_to(np.arange(max(s, t), dtype=np.int32), (b, max(s, t)))
    return {
        "inputs": inputs,
        "targets": targets,
        "inputs_segmentation": valid.astype(np.int32),
        "targets_segmentation": np.ones_like(targets),
        "inputs_position": np.where(valid, positions[:, :s], 0).astype(np.int32),
        "targets_position": np.ascontiguousarray(positions[:, :t]),
    }


@dataclasses.dataclass
class TrainMeasurement:
    """One model's train-step measurement.

    Attributes:
      compile_s: seconds to trace, lower and compile the train step.
      step_s: seconds of each timed step.
      xla_flops: XLA's FLOP count of the compiled step (loop bodies counted once).
      temp_bytes: XLA's temporary buffer size of the compiled step.
    """

    compile_s: float
    step_s: list[float]
    xla_flops: float
    temp_bytes: int


def _peer_optimizer():
    """Adam (1e-3) after global-norm clipping at 1.0, like the peer."""
    config = optim.default_optimizer_config()
    tx, _ = optim.make_optimizer(config, num_train_steps=1000)
    return tx


def measure_train(cfg: ModelConfig, batch: dict[str, np.ndarray], steps: int) -> TrainMeasurement:
    """Compiles the project's train step for `cfg` and times `steps` steps after two warm-ups."""
    state, placement = trainer.init_train_state(build_model(cfg), _peer_optimizer(), seed=0)
    train_step, _ = trainer.make_step_fns(placement)
    device_batch = trainer.put_batch(batch, placement)
    start = time.perf_counter()
    compiled = train_step.lower(state, device_batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    memory = compiled.memory_analysis()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        state, metrics = compiled(state, device_batch)
        jax.block_until_ready((state, metrics))
        if i >= 2:
            times.append(time.perf_counter() - start)
    return TrainMeasurement(
        compile_s,
        times,
        float((cost or {}).get("flops", 0.0)),
        int(getattr(memory, "temp_size_in_bytes", 0)),
    )


def train_figures(
    family: str,
    cfg: ModelConfig,
    settings: BenchSettings,
    measured: TrainMeasurement,
    peak_flops: float | None,
    peer: dict[str, Any] | None,
) -> list[Figure]:
    """The figures of one model: tokens/s, step time, FLOPs, FLOP/s, fraction of peak, compile."""
    b, s, t = settings.batch, settings.source_length, settings.target_length
    step = median(measured.step_s)
    model_flops = flops_lib.train_flops(cfg, b, s, t)
    sizes = {
        "batch": b,
        "source_length": s,
        "target_length": t,
        "vocab": settings.vocab,
        "steps": len(measured.step_s),
    }
    peer_tps = peer.get("tokens_per_s") if peer else None
    peer_ms = peer.get("step_ms") if peer else None
    prefix = f"train/{family}"
    figures = [
        figure(f"{prefix}/tokens_per_s", b * t / step, "tokens/s", peer_value=peer_tps, **sizes),
        figure(
            f"{prefix}/step_time",
            step * 1e3,
            "ms",
            peer_value=peer_ms,
            lower_is_better=True,
            **sizes,
        ),
        figure(
            f"{prefix}/model_flops_per_step",
            model_flops / 1e9,
            "GFLOP",
            xla_count_gflop=round(measured.xla_flops / 1e9, 2),
        ),
        figure(f"{prefix}/achieved_flops", model_flops / step / 1e9, "GFLOP/s"),
    ]
    if peak_flops:
        figures.append(
            figure(
                f"{prefix}/fraction_of_matmul_peak",
                model_flops / step / peak_flops,
                "fraction",
                peak_gflops=round(peak_flops / 1e9, 1),
            )
        )
    figures.append(
        figure(
            f"{prefix}/compile_time",
            measured.compile_s,
            "s",
            temp_memory_mb=round(measured.temp_bytes / 2**20, 1),
        )
    )
    return figures


def run(
    settings: BenchSettings,
    *,
    families: tuple[str, ...] = tuple(PRESETS),
    peak_flops: float | None = None,
    peers: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> list[Figure]:
    """Measures every family; `peers[family]` is the peer's train record (or absent)."""
    batch = reference_batch(settings)
    figures = []
    for family in families:
        cfg = model_config(family, settings, **overrides)
        measured = measure_train(cfg, batch, settings.train_steps)
        figures += train_figures(
            family, cfg, settings, measured, peak_flops, (peers or {}).get(family)
        )
    return figures
