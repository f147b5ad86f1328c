"""Transformer with additive (Bahdanau) cross-attention on Multi30k task 1, German -> English.

Command (Multi30k `{train,val}.{de,en}.gz` in DIR, see configs/multi30k_rnnsearch.py):

    python -m seq2seq_jax.train --config=configs/multi30k_transformer.py[:DIR] \
        --workdir=/tmp/m30k_tf

Sizes of shared/bench/torch_transformer.py (3+3 pre-LN layers, width 256, 4 heads, MLP 1024,
learned positions), except that the decoder reads the encoder through additive attention.
Adam (0.9, 0.98), warmup 800 + inverse square root, label smoothing 0.1, batch 64.
Expected: not yet measured on this project's machines (hours on the 2-core CPU; on one GPU,
minutes); the PyTorch peer (shared/bench/torch_multi30k.py --arch transformer) is the reference
point for time-to-BLEU.
"""

import os
from pathlib import Path

import ml_collections

from seq2seq_jax.data.config import multi30k_data_config
from seq2seq_jax.models.config import default_model_config
from seq2seq_jax.training.experiment import base_config


def default_multi30k_dir() -> str:
    """$MULTI30K_DIR, else ../shared/data/multi30k next to the repository."""
    return os.environ.get("MULTI30K_DIR") or str(
        (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k").resolve())


def get_config(data_dir: str | None = None) -> ml_collections.ConfigDict:
    """The Multi30k de->en Transformer experiment reading Multi30k from `data_dir`."""
    c = base_config("transformer_multi30k")
    c.model = default_model_config("transformer_multi30k")
    c.data = multi30k_data_config(data_dir or default_multi30k_dir(), "de", "en")
    c.data.batching = "bucket"
    c.data.bucket_boundaries = (32,)  # Lengths 32 or 64: at most 4 shapes to compile per step fn.
    c.num_train_steps = 8000
    c.batch_size = 64
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.optimizer.name = "adam"
    c.optimizer.b2 = 0.98
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "warmup_rsqrt"
    c.optimizer.warmup_steps = 800
    c.optimizer.grad_clip_norm = 1.0
    c.eval.task_metric = "bleu"
    c.eval.decode_examples = 256
    c.eval.decode_batch_size = 64
    c.eval.max_decode_length = 80
    c.eval.final_split = "validation"
    c.checkpoint.best_metric = "eval_bleu"
    return c
