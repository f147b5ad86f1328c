"""RNNsearch (DESIGN.md section 4 reference sizes) on Multi30k task 1, German -> English.

Commands (Multi30k from the public repository multi30k/dataset, data/task1/raw, as
`{train,val}.{de,en}.gz` in DIR; DIR defaults to ../shared/data/multi30k next to this
repository, or $MULTI30K_DIR):

    python -m seq2seq_jax.train --config=configs/multi30k_rnnsearch.py[:DIR] --workdir=W
    python -m seq2seq_jax.train --config=configs/multi30k_rnnsearch.py:fast[:DIR] --workdir=W

Model: joint SentencePiece vocabulary of 8000, embedding 256, bidirectional GRU 2x256, decoder
GRU 512, additive attention 512 (the PyTorch peer shared/bench/torch_multi30k.py), with
PyTorch's initialisation (`model.init_scheme='torch'`).
Batches: token budgets of 2048 tokens (`data.tokens_per_batch`, length classes 8 per octave),
Adam 1e-3, clipping 1.0, label smoothing 0.1; the final evaluation decodes all 1,014
validation sentences (there is no test split here) and scores the mean of the last
checkpoints (`checkpoint.average_last`).

- `:fast`: 30 minutes of training (`max_train_minutes=30`), the peer's budget: no dropout,
  constant learning rate, a checkpoint every 150 steps, the last 5 averaged.
- full: dropout 0.3, warmup + cosine decay over 6,000 steps (~2.2 hours here), evaluation every
  1,000 steps, early stopping after 4 evaluations without a new best validation BLEU.

Expected (measured 2026-12-02 on a quiet 2-core CPU): `:fast` trains 30 minutes (1,323 steps,
5.3 epochs, 22 compiled batch shapes) and ends with the final evaluation (about 1 more minute):
`averaged_validation_bleu` 35.5 (greedy); then

    python -m seq2seq_jax.decode --workdir=W --checkpoint=averaged --input=val.de \
        --reference=val.en --beam_size=5

gives validation BLEU 38.72 / chrF 57.67 (the PyTorch peer of the same sizes, 30 minutes in
the same sitting: 35.91). The full recipe is not measured yet.
"""

import ml_collections

from seq2seq_jax.data.config import multi30k_data_config
from seq2seq_jax.models.config import default_model_config
from seq2seq_jax.training.experiment import base_config, split_config_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment; `arg` is '[fast][:DIR]' (the variant, then the data directory)."""
    variant, data_dir = split_config_arg(arg, ("fast",))
    c = base_config("rnnsearch_reference")
    c.model = default_model_config("rnnsearch_reference")
    c.model.init_scheme = "torch"
    c.data = multi30k_data_config(data_dir, "de", "en", tokens_per_batch=2048)
    c.batch_size = 256  # The most rows a token-budget batch may have (windows of 16,384).
    c.label_smoothing = 0.1
    c.log_every_steps = 50
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.grad_clip_norm = 1.0
    c.eval.batch_size = 128
    c.eval.task_metric = "bleu"
    c.eval.decode_examples = 256
    c.eval.decode_batch_size = 128
    c.eval.max_decode_length = 80
    # Tuned on the validation set (beam 5, the averaged :fast model of 2026-12-02): alpha 0.6
    # -> BLEU 38.25, 1.0 -> 38.62, 1.4 -> 38.52.
    c.eval.alpha = 1.0
    c.eval.final_split = "validation"
    c.checkpoint.best_metric = "eval_bleu"
    c.checkpoint.max_to_keep = 5
    c.checkpoint.average_last = 5
    if variant == "fast":
        c.max_train_minutes = 30.0
        c.num_train_steps = 100_000  # The time budget ends training.
        c.model.dropout_rate = 0.0
        c.optimizer.schedule = "constant"
        c.eval_every_steps = 0
        c.checkpoint_every_steps = 150
    else:
        c.num_train_steps = 6_000  # About 2.2 hours here at ~1.3 s a step (~24 epochs).
        c.model.dropout_rate = 0.3
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 200
        c.optimizer.end_learning_rate_fraction = 0.1
        c.eval_every_steps = 1000
        c.checkpoint_every_steps = 500
        c.eval.early_stopping_patience = 4
    return c
