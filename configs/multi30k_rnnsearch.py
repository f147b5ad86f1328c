"""RNNsearch (DESIGN.md section 4 reference sizes) on Multi30k task 1, German -> English.

Command (CPU or accelerator; Multi30k from the public repository multi30k/dataset,
data/task1/raw, as `{train,val}.{de,en}.gz` in DIR):

    python -m seq2seq_jax.train --config=configs/multi30k_rnnsearch.py[:DIR] --workdir=/tmp/m30k_rnn

DIR defaults to ../shared/data/multi30k next to this repository, or $MULTI30K_DIR.
Sizes: joint SentencePiece vocabulary of 8000, embedding 256, bidirectional GRU 2x256, decoder
GRU 512, additive attention 512, batch 64, Adam 1e-3, clipping 1.0 (the PyTorch peer's setup in
shared/bench/torch_rnnsearch.py). There is no test split here: the validation split is scored
(sacreBLEU and chrF of greedy decoding of 256 sentences every eval, all 1,014 at the end).
Expected: the full 6000 steps take about 2 hours on this project's 2-core CPU (unmeasured to the
end; minutes on one GPU). Measured (2026-11-29, quiet 2-core CPU): with
`--config.num_train_steps=900 --config.eval_every_steps=0`, 19 min wall, validation sacreBLEU
16.2 and chrF 34.9 on all 1,014 sentences (greedy), train loss 2.48. The PyTorch peer's budget
(shared/bench/torch_multi30k.py) is the reference point.
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
    """The Multi30k de->en RNNsearch experiment reading Multi30k from `data_dir`."""
    c = base_config("rnnsearch")
    c.model = default_model_config("rnnsearch_reference")
    c.model.dropout_rate = 0.2
    c.data = multi30k_data_config(data_dir or default_multi30k_dir(), "de", "en")
    c.data.batching = "bucket"
    c.data.bucket_boundaries = (32,)  # Lengths 32 or 64: at most 4 shapes to compile per step fn.
    c.num_train_steps = 6000
    c.batch_size = 64
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup_steps = 200
    c.optimizer.end_learning_rate_fraction = 0.1
    c.optimizer.grad_clip_norm = 1.0
    c.eval.task_metric = "bleu"
    c.eval.decode_examples = 256
    c.eval.decode_batch_size = 64
    c.eval.max_decode_length = 80
    c.eval.final_split = "validation"
    c.checkpoint.best_metric = "eval_bleu"
    return c
