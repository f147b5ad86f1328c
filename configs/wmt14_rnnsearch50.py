"""RNNsearch-50 (Bahdanau, Cho and Bengio, 2015) on WMT'14 English -> French, for accelerators.

The paper's sizes: embeddings 620, bidirectional GRU encoder 2x1000, GRU decoder 1000, additive
attention 1000, maxout output 500, vocabularies of 30,000 (here one joint SentencePiece model),
training sentences up to 50 words (here 80 subword tokens), minibatches of 80, beam search of
size 12 at test time. Adadelta in the paper; Adam 5e-4 with clipping at 1.0 here.

Prepare the data once (needs the optional TensorFlow extra, `pip install seq2seq_jax[tf]`):

    tfds build wmt14_translate/fr-en --file_format=array_record \
        --data_dir=~/.cache/seq2seq_jax/tensorflow_datasets

Command (one host with 8 accelerators; multi-host: see launch/):

    python -m seq2seq_jax.train --config=configs/wmt14_rnnsearch50.py --workdir=/shared/rnnsearch50

Expected: not run on this project's machines (it cannot run on the 2-core CPU); the paper reports
BLEU 26.75 on newstest2014 (28.45 on sentences without unknown words) after about 5 days on one
2015 GPU. Scored here with sacreBLEU on newstest2013 (the TFDS validation split).

Variant `configs/wmt14_rnnsearch50.py:tiny`: the same structure (maxout output, beam search eval,
bucketing) at toy sizes on the embedded dates data; runs in under a minute on the CPU.
"""

import ml_collections

from configs import common
from seq2seq_jax.models.config import default_model_config
from seq2seq_jax.training.experiment import base_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The RNNsearch-50 experiment; `variant="tiny"` for a CPU smoke run on generated data."""
    common.check_variant("wmt14_rnnsearch50.py", variant, ("tiny",))
    c = base_config("rnnsearch50")
    c.model = default_model_config("rnnsearch50")
    c.model.max_len = 80
    c.data.name = "tfds"
    c.data.tfds_name = "wmt14_translate/fr-en"
    c.data.inputs_key = "en"
    c.data.targets_key = "fr"
    c.data.train_split = "train"
    c.data.tokenizer = "sentencepiece"
    c.data.vocab_size = 30000
    c.data.spm_max_sentences = 2_000_000
    c.data.max_source_length = 80
    c.data.max_target_length = 80
    c.data.batching = "bucket"
    c.num_train_steps = 300_000
    c.batch_size = 80
    c.label_smoothing = 0.0
    c.log_every_steps = 200
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5_000
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.schedule = "warmup_linear"
    c.optimizer.warmup_steps = 2000
    c.optimizer.end_learning_rate_fraction = 0.1
    c.optimizer.grad_clip_norm = 1.0
    c.eval.task_metric = "bleu"
    c.eval.decode_examples = 1000
    c.eval.decode_batch_size = 80
    c.eval.beam_size = 12
    c.eval.alpha = 0.6
    c.eval.max_decode_length = 100
    c.eval.final_split = "test"
    c.checkpoint.best_metric = "eval_bleu"
    if variant == "tiny":
        _tiny(c)
    return c


def _tiny(c: ml_collections.ConfigDict) -> None:
    """The same structure at toy sizes on the embedded dates data."""
    common.dates_data(c)
    c.data.tfds_name = None
    c.data.inputs_key = None
    c.data.targets_key = None
    common.tiny(c, steps=10, eval_examples=32, decode_examples=16, max_batches=1)
    c.model.attention_dim = 16
    c.model.maxout_size = 8
    c.eval.task_metric = "exact_match"
    c.eval.beam_size = 2
    c.eval.max_decode_length = 12
