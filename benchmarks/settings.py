"""Sizes and repeat counts of one benchmark run: the issue's sizes, a quicker run, a tiny one.

`full` is the issue's setting (vocabulary 8000, batch 64, source and target length 32, float32,
beam 5, attention memory at B=32, T=S=256, D=512). `quick` keeps every size (the figures stay
comparable) with fewer timed repeats. `tiny` shrinks every size so that the harness itself can
be tested in seconds; its figures mean nothing.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """What one `python -m benchmarks.run` measures.

    Attributes:
      vocab: source and target vocabulary size.
      batch: B of the train and decoding figures.
      source_length: S.
      target_length: T (also the decoding length).
      train_steps: timed train steps (after two warm-up steps).
      decode_repeats: timed greedy batches; beam search runs half as many (at least one).
      beam_size: K of the beam figures.
      matmul_size: side of the square matmul that measures the peak.
      matmul_repeats: timed matmuls.
      attention_batch: B of the attention-memory figures.
      attention_length: T = S of the attention-memory figures.
      attention_dim: D = A of the attention-memory figures.
      attention_speed_batch: B of the naive-vs-chunked speed comparison (it must fit in memory
        with the naive form).
      attention_speed_length: T = S of the speed comparison.
      attention_repeats: timed forward + backward passes.
      model_overrides: `ModelConfig` fields replaced in both models (for `tiny`).
      peer_hidden: the PyTorch peer's `--hidden` (its decoder units = attention dim; encoder
        units are half of it) and `peer_emb` its `--emb`; they must match `model_overrides`.
      peer_emb: see `peer_hidden`.
    """

    vocab: int = 8000
    batch: int = 64
    source_length: int = 32
    target_length: int = 32
    train_steps: int = 10
    decode_repeats: int = 5
    beam_size: int = 5
    matmul_size: int = 2048
    matmul_repeats: int = 10
    attention_batch: int = 32
    attention_length: int = 256
    attention_dim: int = 512
    attention_speed_batch: int = 8
    attention_speed_length: int = 128
    attention_repeats: int = 5
    model_overrides: tuple[tuple[str, object], ...] = ()
    peer_hidden: int = 512
    peer_emb: int = 256


FULL = BenchSettings()
QUICK = dataclasses.replace(
    FULL, train_steps=3, decode_repeats=2, matmul_repeats=4, attention_repeats=2
)
# Every size tiny: RNNsearch with E=16, 16 encoder units per direction, 32 decoder units.
TINY = BenchSettings(
    vocab=64,
    batch=4,
    source_length=6,
    target_length=5,
    train_steps=1,
    decode_repeats=1,
    beam_size=2,
    matmul_size=64,
    matmul_repeats=1,
    attention_batch=2,
    attention_length=8,
    attention_dim=16,
    attention_speed_batch=2,
    attention_speed_length=8,
    attention_repeats=1,
    model_overrides=(
        ("emb_dim", 16),
        ("encoder_hidden_size", 16),
        ("decoder_hidden_size", 32),
        ("attention_dim", 32),
        ("mlp_dim", 32),
        ("num_heads", 2),
        ("encoder_layers", 1),
        ("decoder_layers", 1),
    ),
    peer_hidden=32,
    peer_emb=16,
)

PRESETS = {"full": FULL, "quick": QUICK, "tiny": TINY}
