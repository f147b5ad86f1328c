"""Input pipeline: TFDS datasets, tokenizers, and Grain batches that resume exactly.

Public API (see docs/ARCHITECTURE.md, section "Data"):

- `default_data_config()`, `multi30k_data_config(...)`, `validate_data_config(config)` and
  `DataConfig.from_config(config)` (the frozen, typed `config.data`, checked once);
- `get_tokenizers(data_config, workdir)`, `load_tokenizers(directory)`;
- `make_train_iterator(...)`, `make_eval_batches(...)`, `load_texts(...)`.
"""

from seq2seq_jax.data.batching import BATCH_KEYS
from seq2seq_jax.data.config import (
    DataConfig,
    default_data_config,
    multi30k_data_config,
    validate_data_config,
)
from seq2seq_jax.data.pipeline import (
    EvalBatches,
    make_eval_batches,
    make_train_dataset,
    make_train_iterator,
)
from seq2seq_jax.data.sources import load_texts, open_split
from seq2seq_jax.data.tokenizer import (
    CharTokenizer,
    SentencePieceTokenizer,
    SubsetTokenizer,
    Tokenizer,
    get_tokenizers,
    load_tokenizer,
    load_tokenizers,
    save_tokenizers,
)

__all__ = [
    "BATCH_KEYS",
    "CharTokenizer",
    "DataConfig",
    "EvalBatches",
    "SentencePieceTokenizer",
    "SubsetTokenizer",
    "Tokenizer",
    "default_data_config",
    "get_tokenizers",
    "load_texts",
    "load_tokenizer",
    "load_tokenizers",
    "make_eval_batches",
    "make_train_dataset",
    "make_train_iterator",
    "multi30k_data_config",
    "open_split",
    "save_tokenizers",
    "validate_data_config",
]
