"""Inference: batched translation with a model (shared by training's eval and the decode CLI),
restoring a model from a workdir, and the decode CLI's work.

Dependency levels: `ensemble` imports decoding only; `translate` imports models, decoding
(below training, which uses it);
`workdir` and `run` import training.checkpoint (entry-point level). See docs/ARCHITECTURE.md,
"Decode CLI".
"""

from seq2seq_jax.inference.ensemble import ensemble_step, same_vocabulary
from seq2seq_jax.inference.translate import (
    BatchTranslator,
    Hypothesis,
    SearchConfig,
    TranslateStats,
    Translation,
    bucket_widths,
    encode_sources,
    make_search_fn,
    plan_batches,
)

__all__ = [
    "BatchTranslator",
    "Hypothesis",
    "SearchConfig",
    "TranslateStats",
    "Translation",
    "bucket_widths",
    "ensemble_step",
    "encode_sources",
    "make_search_fn",
    "plan_batches",
    "same_vocabulary",
]
