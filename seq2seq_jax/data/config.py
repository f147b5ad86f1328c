"""The data part of an experiment config (`config.data`) and its validation.

Every key the input pipeline reads is defined in `default_data_config()` with its default and a
comment; experiment configs set `config.data = default_data_config()` and override fields.
`DataConfig.from_config(config.data)` (also `validate_data_config`) checks it once and returns
the frozen, typed `DataConfig` the pipeline reads: unknown keys and names get one-line messages
listing the known ones, bad values one naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

DATASET_NAMES = ("dates", "addition", "reverse", "parallel_text", "tfds")
TOKENIZER_NAMES = ("char", "sentencepiece")
SPM_MODEL_TYPES = ("unigram", "bpe")
OVERLENGTH_POLICIES = ("filter", "truncate")
BATCHING_MODES = ("pad", "bucket", "pack")
SPLIT_NAMES = ("train", "validation", "test")
DATE_LANGUAGES = ("en", "fr", "de", "es", "it")

DEFAULT_TFDS_DATA_DIR = "~/.cache/seq2seq_jax/tensorflow_datasets"
MULTI30K_LANGUAGES = ("en", "de", "fr")


def default_data_config() -> ml_collections.ConfigDict:
    """Returns the data config with every key the pipeline reads, at its default value.

    Returns:
      A `ConfigDict`; optional values are typed placeholders (None until set) so that they can
      be overridden on the command line (`--config.data.train_source=...`).
    """
    str_or_none = lambda: config_dict.placeholder(str)
    c = ml_collections.ConfigDict()
    # Which dataset: 'dates', 'addition', 'reverse' (generated, embedded, no network),
    # 'parallel_text' (the user's files, below) or 'tfds' (a prepared TFDS registry dataset).
    c.name = "dates"
    # Where TFDS builders prepare their array_record files (and where 'tfds' datasets are read).
    c.tfds_data_dir = DEFAULT_TFDS_DATA_DIR

    # --- Generated datasets (dates, addition, reverse). Changing any of these rebuilds the data.
    c.num_train_examples = 20_000  # Examples in the train split.
    c.num_validation_examples = 1_000  # Examples in the validation split.
    c.num_test_examples = 1_000  # Examples in the test split.
    c.generator_seed = 0  # Seed of the generator (the data are a pure function of it).
    # Comma-separated languages of month/weekday names for 'dates' (numeric formats always on).
    c.date_languages = "en,fr,de,es"
    c.addition_max_digits = 5  # 'addition': operands have 1..this many digits.
    c.reverse_max_length = 20  # 'reverse': strings of 1..this many letters a-z.

    # --- Parallel text ('parallel_text'): per split, two files (one sentence a line, `.gz` ok)
    # or one TSV (`source<TAB>target` a line). Splits without paths do not exist.
    for split in SPLIT_NAMES:
        c[f"{split}_source"] = str_or_none()  # Source-side file of this split.
        c[f"{split}_target"] = str_or_none()  # Target-side file, line-aligned with the source.
        c[f"{split}_tsv"] = str_or_none()  # Or: a TSV file holding both sides.

    # --- TFDS registry dataset ('tfds'), prepared beforehand as array_record, e.g.
    # `tfds build wmt14_translate/de-en --file_format=array_record --data_dir=<tfds_data_dir>`.
    c.tfds_name = str_or_none()  # e.g. 'wmt14_translate/de-en'.
    c.inputs_key = str_or_none()  # Feature holding the source text, e.g. 'de'.
    c.targets_key = str_or_none()  # Feature holding the target text, e.g. 'en'.

    # --- Splits (TFDS split strings, slicing allowed: 'train[:90%]').
    c.train_split = "train"  # Split read by the train iterator and used to train the tokenizer.

    # --- Tokenizer (trained on the train split on first use, stored in WORKDIR/tokenizer/).
    c.tokenizer = "char"  # 'char' or 'sentencepiece'.
    c.vocab_size = 8000  # SentencePiece vocabulary size (a soft limit on tiny corpora).
    c.spm_model_type = "unigram"  # 'unigram' or 'bpe'.
    c.joint_vocab = True  # One vocabulary for source and target (else one each).
    # With joint_vocab: the target side keeps only the joint pieces that occur in the training
    # targets, renumbered (same segmentation; a smaller, faster output layer).
    c.restrict_target_vocab = False
    c.spm_character_coverage = 1.0  # Fraction of characters covered by the vocabulary.
    c.spm_max_sentences = 1_000_000  # Sentences sampled to train SentencePiece.
    c.spm_normalization = "nmt_nfkc"  # SentencePiece normalisation rule ('identity' = none).
    c.tokenizer_dir = str_or_none()  # Reuse the tokenizer saved here (e.g. for fine-tuning).

    # --- Lengths (in tokens, EOS included) and what happens to longer examples.
    c.max_source_length = 64
    c.max_target_length = 64
    c.overlength = "filter"  # 'filter' (drop, counted) or 'truncate' (cut, keep EOS; counted).

    # --- Batching. Every batch has exactly `batch_size` rows (token budgets: see below).
    # 'pad': every batch padded to exactly max_source_length x max_target_length (one shape);
    # 'bucket': examples of similar length batched together (sorted within a window of
    #   `bucket_window_batches` batches), lengths padded up to the next bucket boundary;
    # 'pack': several examples per row (segment ids, positions), rows of the max lengths.
    c.batching = "bucket"
    # Ascending bucket boundaries in tokens (applied to source and target lengths alike, each
    # capped at its max length); () = automatic: 8, 16, 32, ... up to the max lengths.
    c.bucket_boundaries = ()
    c.bucket_window_batches = 32  # Bucketing sorts windows of this many batches by length.
    # Token budgets ('bucket' only; 0 = off): a batch holds as many examples of one length class
    # L (the bucket of max(source, target length)) as fit in rows x L <= tokens_per_batch, each
    # side padded to its own bucket (<= L); rows are a multiple of the device count and at most
    # `batch_size`, and come from a fixed table (one rows value per class), so the step
    # functions compile a bounded number of times (once per shape, logged). Global (all hosts
    # and devices together). Automatic boundaries are then finer:
    # 4 per octave (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...).
    c.tokens_per_batch = 0
    # Token budgets: 'side' pads each side of a batch to its own smallest class (little padding
    # also when one side is much shorter, e.g. summaries or dates, but up to one shape per pair
    # of classes: each new shape costs a compilation of the step); 'class' pads both sides to
    # the batch's length class L (one shape per class: the fewest compilations; for
    # translation, where both sides have similar lengths).
    c.token_budget_padding = "side"

    # --- Order.
    c.shuffle = True  # A fresh global permutation of the train split every epoch.
    c.shuffle_seed = config_dict.placeholder(int)  # None: use the experiment seed.
    c.prefetch = 2  # Batches prepared ahead in a background thread (0: none).
    # Keep every tokenized train example in memory (later epochs skip reading and tokenizing)
    # when the train split has at most this many examples (0: never; ~200 B an example).
    c.cache_max_examples = 1_000_000
    return c


# Length classes of Multi30k's token-budget batches: 8 per octave up to 64 (about 11% target
# padding with SentencePiece 8k, against 49% for 64 rows padded to 32 or 64).
MULTI30K_BOUNDARIES = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    18,
    20,
    22,
    24,
    26,
    28,
    30,
    32,
    36,
    40,
    44,
    48,
    56,
)


def default_multi30k_dir() -> str:
    """$MULTI30K_DIR, else ../shared/data/multi30k next to the repository of this package."""
    return os.environ.get("MULTI30K_DIR") or os.path.normpath(
        os.path.join(
            os.path.dirname(os.path.abspath(__file__)),
            "..",
            "..",
            "..",
            "shared",
            "data",
            "multi30k",
        )
    )


def multi30k_data_config(
    data_dir: str | None = None,
    source_lang: str = "de",
    target_lang: str = "en",
    tokens_per_batch: int = 2048,
) -> ml_collections.ConfigDict:
    """Returns a data config reading Multi30k task 1 through 'parallel_text' with SentencePiece.

    Args:
      data_dir: Folder holding `{train,val}.{en,de,fr}.gz` (the public repository
          multi30k/dataset, data/task1/raw); None: `default_multi30k_dir()`.
      source_lang: One of 'en', 'de', 'fr'.
      target_lang: One of 'en', 'de', 'fr', different from `source_lang`.
      tokens_per_batch: Global token budget of a batch (0: fixed rows).

    Returns:
      `default_data_config()` with the Multi30k train and validation files set (there is no
      test split), a joint 8000-piece SentencePiece vocabulary, lengths 64, and length-bucketed
      token-budget batches (`MULTI30K_BOUNDARIES`, windows of 64 batches).
    """
    for lang in (source_lang, target_lang):
        if lang not in MULTI30K_LANGUAGES:
            raise ValueError(f"Multi30k language {lang!r} unknown; known: {MULTI30K_LANGUAGES}")
    if source_lang == target_lang:
        raise ValueError(f"source_lang and target_lang are both {source_lang!r}")
    data_dir = data_dir or default_multi30k_dir()
    c = default_data_config()
    c.name = "parallel_text"
    c.train_source = os.path.join(data_dir, f"train.{source_lang}.gz")
    c.train_target = os.path.join(data_dir, f"train.{target_lang}.gz")
    c.validation_source = os.path.join(data_dir, f"val.{source_lang}.gz")
    c.validation_target = os.path.join(data_dir, f"val.{target_lang}.gz")
    c.tokenizer = "sentencepiece"
    c.vocab_size = 8000
    c.max_source_length = 64
    c.max_target_length = 64
    c.batching = "bucket"
    c.bucket_boundaries = MULTI30K_BOUNDARIES
    c.tokens_per_batch = tokens_per_batch
    c.token_budget_padding = "class"  # 23 shapes at most; 'side' compiled 41 in 30 minutes.
    c.bucket_window_batches = 64
    return c


def _parallel_text_error(split: str, src, tgt, tsv) -> str | None:
    if tsv and (src or tgt):
        return f"config.data.{split}_tsv and {split}_source/target are both set"
    if bool(src) != bool(tgt):
        return (
            f"config.data.{split}_source and {split}_target must be set together "
            f"(got {split}_source={src!r}, {split}_target={tgt!r})"
        )
    return None


def _int(key: str, value, minimum: int | None = None, what: str = "an int") -> int:
    """`value` as an int (bool refused) of at least `minimum`, else a one-line error naming key."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or (minimum is not None and value < minimum)
    ):
        raise ValueError(f"config.data.{key} must be {what}, got {value!r}")
    return int(value)


def _choice(key: str, value, known: Sequence[str]) -> str:
    if value not in known:
        raise ValueError(f"config.data.{key}={value!r} is unknown; known: {list(known)}")
    return value


def _optional_str(key: str, value) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"config.data.{key} must be a string or None, got {value!r}")
    return value or None


def _parse_boundaries(given) -> tuple[int, ...]:
    if isinstance(given, str):
        try:
            given = [int(x) for x in given.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"config.data.bucket_boundaries must be strictly increasing "
                f"positive ints, got {given!r}"
            ) from None
    given = list(given)
    if any(isinstance(b, bool) or not isinstance(b, int) or b <= 0 for b in given) or (
        given != sorted(set(given))
    ):
        raise ValueError(
            f"config.data.bucket_boundaries must be strictly increasing positive ints, got {given}"
        )
    return tuple(int(b) for b in given)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data` parsed and validated once: typed, frozen, every key of
    `default_data_config()` (which documents them) with the same name.

    Built by `DataConfig.from_config(config.data)` (or `validate_data_config`); every function of
    `seq2seq_jax.data` taking a data config accepts it (and parses a `ConfigDict` itself).
    Normalised on the way: `date_languages` is a tuple of codes, `bucket_boundaries` a tuple of
    ints (a comma-separated string is accepted), unset paths are None.
    """

    name: str
    tfds_data_dir: str
    num_train_examples: int
    num_validation_examples: int
    num_test_examples: int
    generator_seed: int
    date_languages: tuple[str, ...]
    addition_max_digits: int
    reverse_max_length: int
    train_source: str | None
    train_target: str | None
    train_tsv: str | None
    validation_source: str | None
    validation_target: str | None
    validation_tsv: str | None
    test_source: str | None
    test_target: str | None
    test_tsv: str | None
    tfds_name: str | None
    inputs_key: str | None
    targets_key: str | None
    train_split: str
    tokenizer: str
    vocab_size: int
    spm_model_type: str
    joint_vocab: bool
    restrict_target_vocab: bool
    spm_character_coverage: float
    spm_max_sentences: int
    spm_normalization: str
    tokenizer_dir: str | None
    max_source_length: int
    max_target_length: int
    overlength: str
    batching: str
    bucket_boundaries: tuple[int, ...]
    bucket_window_batches: int
    tokens_per_batch: int
    token_budget_padding: str
    shuffle: bool
    shuffle_seed: int | None
    prefetch: int
    cache_max_examples: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> DataConfig:
        """Parses and checks `config.data` (missing keys take their defaults).

        Raises:
          ValueError: one line naming the unknown key (listing the known ones), the unknown
              name (listing the known names) or the key with an invalid value.
        """
        defaults = default_data_config()
        known_keys = set(defaults.keys())
        unknown = sorted(set(config.keys()) - known_keys)
        if unknown:
            raise ValueError(
                f"Unknown config.data keys {unknown}; known keys: {sorted(known_keys)}"
            )
        c = {k: config[k] if k in config else defaults[k] for k in defaults.keys()}
        for key in ("name", "tokenizer", "spm_model_type", "overlength", "batching"):
            _choice(key, c[key], _CHOICES[key])
        for key in (
            "max_source_length",
            "max_target_length",
            "vocab_size",
            "bucket_window_batches",
        ):
            if not isinstance(c[key], int) or c[key] <= 0:
                raise ValueError(f"config.data.{key} must be a positive int, got {c[key]!r}")
        if c["max_source_length"] < 2 or c["max_target_length"] < 2:
            raise ValueError("config.data.max_source_length/max_target_length must be >= 2 (EOS).")
        languages = tuple(x.strip() for x in str(c["date_languages"]).split(",") if x.strip())
        for lang in languages:
            if lang not in DATE_LANGUAGES:
                raise ValueError(
                    f"config.data.date_languages has unknown language {lang!r}; "
                    f"known: {list(DATE_LANGUAGES)}"
                )
        tokens = _int("tokens_per_batch", c["tokens_per_batch"], 0, "an int >= 0")
        if c["token_budget_padding"] not in ("class", "side"):
            raise ValueError(
                f"config.data.token_budget_padding must be 'class' or 'side', got "
                f"{c['token_budget_padding']!r}"
            )
        if tokens and c["batching"] != "bucket":
            raise ValueError(
                f"config.data.tokens_per_batch={tokens} needs batching='bucket', got "
                f"{c['batching']!r} (set tokens_per_batch=0 for fixed rows)"
            )
        for key in (
            "num_train_examples",
            "num_validation_examples",
            "num_test_examples",
            "prefetch",
            "cache_max_examples",
        ):
            c[key] = _int(key, c[key], 0, "an int >= 0")
        for key in ("addition_max_digits", "reverse_max_length", "spm_max_sentences"):
            c[key] = _int(key, c[key], 1, "a positive int")
        c["generator_seed"] = _int("generator_seed", c["generator_seed"])
        if c["shuffle_seed"] is not None:
            c["shuffle_seed"] = _int("shuffle_seed", c["shuffle_seed"], what="an int or None")
        coverage = c["spm_character_coverage"]
        if (
            isinstance(coverage, bool)
            or not isinstance(coverage, int | float)
            or not (0 < coverage <= 1)
        ):
            raise ValueError(
                f"config.data.spm_character_coverage must be in (0, 1], got {coverage!r}"
            )
        paths = [f"{split}_{k}" for split in SPLIT_NAMES for k in ("source", "target", "tsv")]
        for key in [*paths, "tfds_name", "inputs_key", "targets_key", "tokenizer_dir"]:
            c[key] = _optional_str(key, c[key])
        if c["name"] == "parallel_text":
            for split in SPLIT_NAMES:
                error = _parallel_text_error(
                    split, *(c[f"{split}_{k}"] for k in ("source", "target", "tsv"))
                )
                if error:
                    raise ValueError(error)
        if c["restrict_target_vocab"] and not c["joint_vocab"]:
            raise ValueError(
                "config.data.restrict_target_vocab restricts the target side of a joint "
                "vocabulary; it needs config.data.joint_vocab=True (a separate target "
                "vocabulary is trained on the targets already)"
            )
        if c["name"] == "tfds" and not c["tfds_name"]:
            raise ValueError(
                "config.data.name='tfds' needs config.data.tfds_name (e.g. "
                "'wmt14_translate/de-en'), inputs_key (e.g. 'de') and targets_key (e.g. 'en')"
            )
        if c["name"] == "tfds" and not (c["inputs_key"] and c["targets_key"]):
            raise ValueError(
                "config.data.name='tfds' needs config.data.inputs_key (e.g. 'de') and "
                "targets_key (e.g. 'en'), the features holding the source and target texts"
            )
        c.update(
            date_languages=languages,
            bucket_boundaries=_parse_boundaries(c["bucket_boundaries"]),
            joint_vocab=bool(c["joint_vocab"]),
            restrict_target_vocab=bool(c["restrict_target_vocab"]),
            shuffle=bool(c["shuffle"]),
            spm_character_coverage=float(coverage),
        )
        return cls(**c)

    @property
    def max_lengths(self) -> tuple[int, int]:
        """(max_source_length, max_target_length), EOS included."""
        return (self.max_source_length, self.max_target_length)

    def boundaries(self, max_length: int) -> tuple[int, ...]:
        """Returns the ascending padded lengths allowed on a side whose maximum is `max_length`.

        Args:
          max_length: The side's maximum length; it is always the last boundary.

        Returns:
          Strictly increasing lengths, all <= `max_length`, the last one equal to it: the
          given `bucket_boundaries` below it, or automatic ones (8, 16, 32, ...; with
          `tokens_per_batch` four per octave: 8, 10, 12, 14, 16, 20, ...).
        """
        given = list(self.bucket_boundaries)
        if not given:
            per_octave = 4 if self.tokens_per_batch else 1
            b = 8
            while b < max_length:
                given.append(b)
                b += max(1, (1 << (b.bit_length() - 1)) // per_octave)  # 2^floor(log2 b) / n
        return tuple([b for b in given if b < max_length] + [max_length])

    @property
    def side_boundaries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(source boundaries, target boundaries): `boundaries` of each side's max length."""
        return (self.boundaries(self.max_source_length), self.boundaries(self.max_target_length))

    @property
    def length_classes(self) -> tuple[int, ...]:
        """The length classes L of token-budget batches: the boundaries up to the longer max
        length."""
        return self.boundaries(max(self.max_lengths))

    def split_files(self, split: str) -> tuple[str | None, str | None, str | None]:
        """(`<split>_source`, `<split>_target`, `<split>_tsv`) of 'parallel_text'."""
        return tuple(getattr(self, f"{split}_{k}") for k in ("source", "target", "tsv"))


_CHOICES = {
    "name": DATASET_NAMES,
    "tokenizer": TOKENIZER_NAMES,
    "spm_model_type": SPM_MODEL_TYPES,
    "overlength": OVERLENGTH_POLICIES,
    "batching": BATCHING_MODES,
}

AnyDataConfig = DataConfig | ml_collections.ConfigDict | Mapping[str, Any]


def parse(config: AnyDataConfig) -> DataConfig:
    """`config` itself if it is a `DataConfig` (already checked), else `DataConfig.from_config`."""
    return config if isinstance(config, DataConfig) else DataConfig.from_config(config)


def validate_data_config(config: AnyDataConfig) -> DataConfig:
    """Checks keys, names and values of a data config, once, and returns it parsed.

    Args:
      config: A data config (normally `config.data`).

    Returns:
      The `DataConfig` to pass to the pipeline, so that nothing checks it again.

    Raises:
      ValueError: naming the unknown key (and listing the known ones), the unknown name
          (listing the known names) or the invalid value.
    """
    return parse(config)


def length_classes(config: AnyDataConfig) -> tuple[int, ...]:
    """The length classes L of token-budget batches: the boundaries up to the longer max length."""
    return parse(config).length_classes


def date_languages(config: AnyDataConfig) -> tuple[str, ...]:
    """Returns the languages of `config.date_languages` (a comma-separated string)."""
    return parse(config).date_languages


def bucket_boundaries(config: AnyDataConfig, max_length: int) -> tuple[int, ...]:
    """Returns the ascending padded lengths allowed on a side whose maximum is `max_length`
    (`DataConfig.boundaries`)."""
    return parse(config).boundaries(max_length)
