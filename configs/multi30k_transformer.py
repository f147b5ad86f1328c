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

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment; `arg` is '[fast][:DIR]' (the variant, then the data directory)."""
    # Token budgets of 4096 tokens; at most 512 rows a batch.
    c, variant = common.multi30k(arg, model="transformer_multi30k", tokens_per_batch=4096,
                                 batch_size=512)
    c.optimizer.b2 = 0.98
    c.optimizer.schedule = "warmup_rsqrt"
    if variant == "fast":
        common.time_budget(c, checkpoint_every_steps=100)
        c.model.dropout_rate = 0.1
        c.optimizer.warmup_steps = 400
    else:
        common.full_schedule(c, num_train_steps=20_000)
        c.model.dropout_rate = 0.2
        c.optimizer.warmup_steps = 800
    return c
