"""Inference: batched translation with a model (shared by training's eval and the decode CLI),
restoring a model from a workdir, the decode CLI's work, and the exported translator.

Dependency levels: `batching` and `ensemble` import decoding only; `exported` (the translator
`python -m seq2seq_jax.export` writes) imports batching and the tokenizers, never Flax or
`seq2seq_jax.models`; `translate` imports models, decoding (below training, which uses it);
`workdir` and `run` read the workdir through `seq2seq_jax.workdir`, never `training`. See
docs/ARCHITECTURE.md, "Decode CLI".

The re-exports are resolved on first use (PEP 562), so `load_exported` does not import the
model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seq2seq_jax._lazy import lazy_exports

_EXPORTS = {
    "BatchTranslator": "seq2seq_jax.inference.translate",
    "ExportedTranslator": "seq2seq_jax.inference.exported",
    "Hypothesis": "seq2seq_jax.inference.translate",
    "SearchConfig": "seq2seq_jax.decoding.options",
    "TranslateStats": "seq2seq_jax.inference.batching",
    "Translation": "seq2seq_jax.inference.translate",
    "bucket_widths": "seq2seq_jax.inference.batching",
    "ensemble_step": "seq2seq_jax.inference.ensemble",
    "encode_sources": "seq2seq_jax.inference.batching",
    "load_exported": "seq2seq_jax.inference.exported",
    "make_search_fn": "seq2seq_jax.inference.translate",
    "plan_batches": "seq2seq_jax.inference.batching",
    "same_vocabulary": "seq2seq_jax.inference.ensemble",
}

__all__ = [
    "BatchTranslator",
    "ExportedTranslator",
    "Hypothesis",
    "SearchConfig",
    "TranslateStats",
    "Translation",
    "bucket_widths",
    "encode_sources",
    "ensemble_step",
    "load_exported",
    "make_search_fn",
    "plan_batches",
    "same_vocabulary",
]

if TYPE_CHECKING:
    from seq2seq_jax.decoding.options import SearchConfig
    from seq2seq_jax.inference.batching import (
        TranslateStats,
        bucket_widths,
        encode_sources,
        plan_batches,
    )
    from seq2seq_jax.inference.ensemble import ensemble_step, same_vocabulary
    from seq2seq_jax.inference.exported import ExportedTranslator, load_exported
    from seq2seq_jax.inference.translate import (
        BatchTranslator,
        Hypothesis,
        Translation,
        make_search_fn,
    )


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
