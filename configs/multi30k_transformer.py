"""Transformer with additive (Bahdanau) cross-attention on Multi30k task 1, German -> English.

Commands (Multi30k `{train,val}.{de,en}.gz` in DIR, see configs/multi30k_rnnsearch.py):

    python -m seq2seq_jax.train --config=configs/multi30k_transformer.py[:DIR] --workdir=W
    python -m seq2seq_jax.train --config=configs/multi30k_transformer.py:fast[:DIR] --workdir=W

Sizes of shared/bench/torch_transformer.py (3+3 pre-LN layers, width 256, 4 heads, MLP 1024,
learned positions), except that the decoder reads the encoder through additive attention.
Token-budget batches of 4096 tokens (Transformers train better on larger batches and their
step is parallel over time), Adam (0.9, 0.98) with warmup + inverse square root, label
smoothing 0.1, the mean of the last 5 checkpoints scored at the end.

- `:fast`: 30 minutes of training (`max_train_minutes=30`), dropout 0.1, warmup 400 steps.
- full: dropout 0.2, warmup 800, evaluation every 1,000 steps, early stopping after 4
  evaluations without a new best validation BLEU.

Expected: not measured yet, neither variant (the README's Multi30k table lists what is).
"""

import ml_collections

from seq2seq_jax.data.config import multi30k_data_config
from seq2seq_jax.models.config import default_model_config
from seq2seq_jax.training.experiment import base_config, split_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment; `arg` is '[fast][:DIR]' (the variant, then the data directory)."""
    variant, data_dir = split_config_arg(arg, ("fast",))
    c = base_config("transformer_multi30k")
    c.model = default_model_config("transformer_multi30k")
    c.data = multi30k_data_config(data_dir, "de", "en", tokens_per_batch=4096)
    c.batch_size = 512  # The most rows a token-budget batch may have.
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.optimizer.name = "adam"
    c.optimizer.b2 = 0.98
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "warmup_rsqrt"
    c.optimizer.grad_clip_norm = 1.0
    c.eval.batch_size = 128
    c.eval.task_metric = "bleu"
    c.eval.decode_examples = 256
    c.eval.decode_batch_size = 128
    c.eval.max_decode_length = 80
    c.eval.alpha = 1.0  # As tuned for configs/multi30k_rnnsearch.py.
    c.eval.final_split = "validation"
    c.checkpoint.best_metric = "eval_bleu"
    c.checkpoint.max_to_keep = 5
    c.checkpoint.average_last = 5
    if variant == "fast":
        c.max_train_minutes = 30.0
        c.num_train_steps = 100_000  # The time budget ends training.
        c.model.dropout_rate = 0.1
        c.optimizer.warmup_steps = 400
        c.eval_every_steps = 0
        c.checkpoint_every_steps = 100
    else:
        c.num_train_steps = 20_000
        c.model.dropout_rate = 0.2
        c.optimizer.warmup_steps = 800
        c.eval_every_steps = 1000
        c.checkpoint_every_steps = 500
        c.eval.early_stopping_patience = 4
    return c
