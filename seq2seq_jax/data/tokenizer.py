"""Tokenizers: character-level and SentencePiece, with one interface; stored in the workdir.

Both kinds expose `pad_id` (always 0), `bos_id`, `eos_id`, `unk_id`, `vocab_size`,
`encode(text) -> list[int]` (no BOS/EOS added), `encode_batch(texts)`, `decode(ids) -> str`
(stops at the first EOS, drops pad and BOS), `id_to_piece(id) -> str` and `save(directory)`.
Special ids come from these objects and nowhere else.

On disk a tokenizer is a directory with `tokenizer.json` (kind and training options) plus, for
SentencePiece, `spm.model`. A workdir holds `WORKDIR/tokenizer/` (joint vocabulary: one
tokenizer) or `WORKDIR/tokenizer/{source,target}/` (separate vocabularies, or a joint one whose
target side is restricted: `target/` is then a `SubsetTokenizer` over a copy of the joint model).

`SubsetTokenizer` (`data.restrict_target_vocab`): the target side of a joint vocabulary keeps
only the pieces that occur in the training targets, renumbered compactly. Segmentation is the
joint model's, so sentences have the same pieces; only the output layer shrinks (Multi30k
de->en: 3,963 of 8,000 ids, the output layer being most of the RNNsearch's train step).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np
import sentencepiece as spm

from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data import sources
from seq2seq_jax.workdir.layout import TOKENIZER_DIRNAME

log = logging.getLogger(__name__)
_META_FILE = "tokenizer.json"
_SPM_FILE = "spm.model"
_SUBSET_BASE_DIR = "base"
PAD_ID = 0
UNK_PIECE = "\u2047"  # "⁇", what SentencePiece decodes an unknown id to.


class Tokenizer(Protocol):
    """What the pipeline, models and decoders need from a tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def id_to_piece(self, token_id: int) -> str: ...
    def save(self, directory: str) -> None: ...


def _until_eos(ids: Iterable[int], eos_id: int, drop: set[int]) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        if i not in drop:
            out.append(i)
    return out


def _write_meta(directory: str, meta: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, _META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)


class CharTokenizer:
    """One id per character seen in training; ids 0..3 are pad, BOS, EOS, unknown."""

    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

    def __init__(self, chars: Sequence[str], options: dict[str, Any] | None = None):
        """Builds the tokenizer.

        Args:
          chars: The vocabulary characters, distinct, in id order (from id 4 on).
          options: Training options recorded in `tokenizer.json`.
        """
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer chars must be distinct single characters")
        self.chars = list(chars)
        self.options = dict(options or {})
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self._index = {c: i + len(self.SPECIALS) for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str], options: dict[str, Any] | None = None) -> CharTokenizer:
        """Returns a tokenizer whose vocabulary is every character of `texts`, sorted."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen), options)

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, self.unk_id) for c in text]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        kept = _until_eos(ids, self.eos_id, {self.pad_id, self.bos_id})
        return "".join(self.id_to_piece(i) if i >= 4 else UNK_PIECE for i in kept)

    def id_to_piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"Token id {token_id} outside the vocabulary [0, {self.vocab_size})")
        if token_id < len(self.SPECIALS):
            return self.SPECIALS[token_id]
        return self.chars[token_id - len(self.SPECIALS)]

    def save(self, directory: str) -> None:
        _write_meta(directory, {"kind": "char", "chars": self.chars, "options": self.options})


class SentencePieceTokenizer:
    """A SentencePiece model (unigram or BPE) with pad=0, unk=1, BOS=2, EOS=3."""

    def __init__(self, model_proto: bytes, options: dict[str, Any] | None = None):
        """Builds the tokenizer from a serialized SentencePiece model."""
        self._proto = bytes(model_proto)
        self.options = dict(options or {})
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self.pad_id = self._sp.pad_id()
        self.bos_id, self.eos_id, self.unk_id = (
            self._sp.bos_id(),
            self._sp.eos_id(),
            self._sp.unk_id(),
        )
        if self.pad_id != PAD_ID:
            raise ValueError(f"SentencePiece model has pad id {self.pad_id}; pad must be 0")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
        max_sentences: int = 1_000_000,
        normalization: str = "nmt_nfkc",
        seed: int = 0,
    ) -> SentencePieceTokenizer:
        """Trains a SentencePiece model on `texts` (a soft vocabulary limit on tiny corpora).

        Args:
          texts: Training sentences.
          vocab_size: Wanted vocabulary size (specials included).
          model_type: 'unigram' or 'bpe'.
          character_coverage: Fraction of characters the vocabulary covers.
          max_sentences: At most this many sentences are sampled.
          normalization: SentencePiece normalisation rule name.
          seed: Seed of SentencePiece's sampling.

        Returns:
          The trained tokenizer.
        """
        options = {"vocab_size": vocab_size, "model_type": model_type}
        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        spm.SentencePieceTrainer.train(
            sentence_iterator=(t for t in texts if t.strip()),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            normalization_rule_name=normalization,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            hard_vocab_limit=False,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        return cls(writer.getvalue(), options)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(_until_eos(ids, self.eos_id, {self.pad_id, self.bos_id}))

    def id_to_piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"Token id {token_id} outside the vocabulary [0, {self.vocab_size})")
        return self._sp.id_to_piece(token_id)

    def save(self, directory: str) -> None:
        _write_meta(
            directory, {"kind": "sentencepiece", "model_file": _SPM_FILE, "options": self.options}
        )
        with open(os.path.join(directory, _SPM_FILE), "wb") as f:
            f.write(self._proto)

    def __getstate__(self) -> dict[str, Any]:
        return {"proto": self._proto, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["proto"], state["options"])


def _special_ids(base: Tokenizer) -> list[int]:
    """The base's distinct special ids, ascending: a `SubsetTokenizer`'s first ids."""
    return sorted({base.pad_id, base.unk_id, base.bos_id, base.eos_id})


class SubsetTokenizer:
    """A tokenizer restricted to some of its base tokenizer's ids, renumbered 0, 1, ...

    `pieces[i]` is the base id of id i. The base's special ids come first in their own order,
    so pad (0), unk, BOS and EOS keep their values. A base id outside the subset encodes to
    `unk_id` (a piece never seen in the training targets: the model could not learn it).
    """

    def __init__(self, base: Tokenizer, pieces: Sequence[int]):
        pieces = [int(p) for p in pieces]
        specials = _special_ids(base)
        if pieces[: len(specials)] != specials:
            raise ValueError(
                f"SubsetTokenizer: the first ids must be the base's special ids {specials}, "
                f"got {pieces[: len(specials)]}"
            )
        if len(set(pieces)) != len(pieces) or not all(0 <= p < base.vocab_size for p in pieces):
            raise ValueError(
                f"SubsetTokenizer: pieces must be distinct base ids in [0, {base.vocab_size})"
            )
        self.base = base
        self.pieces = pieces
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (
            base.pad_id,
            base.unk_id,
            base.bos_id,
            base.eos_id,
        )
        self._to_base = np.asarray(pieces, np.int64)
        self._from_base = np.full((base.vocab_size,), self.unk_id, np.int64)
        self._from_base[self._to_base] = np.arange(len(pieces))

    @classmethod
    def from_texts(cls, base: Tokenizer, texts: Iterable[str]) -> SubsetTokenizer:
        """The subset of `base` that encoding `texts` uses (plus the special ids)."""
        seen = np.zeros((base.vocab_size,), bool)
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == 4096:
                seen[[i for ids in base.encode_batch(batch) for i in ids]] = True
                batch = []
        if batch:
            seen[[i for ids in base.encode_batch(batch) for i in ids]] = True
        specials = _special_ids(base)
        seen[specials] = False
        return cls(base, specials + np.flatnonzero(seen).tolist())

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        return self._from_base[self.base.encode(text)].tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._from_base[ids].tolist() for ids in self.base.encode_batch(texts)]

    def to_base(self, ids: Iterable[int]) -> list[int]:
        """Base ids of `ids` (ids outside [0, vocab_size) raise IndexError)."""
        ids = np.asarray(list(ids), np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise IndexError(f"Token ids outside the vocabulary [0, {self.vocab_size})")
        return self._to_base[ids].tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return self.base.decode(self.to_base(ids))

    def id_to_piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"Token id {token_id} outside the vocabulary [0, {self.vocab_size})")
        return self.base.id_to_piece(self.pieces[token_id])

    def save(self, directory: str) -> None:
        self.base.save(os.path.join(directory, _SUBSET_BASE_DIR))
        _write_meta(
            directory,
            {"kind": "subset", "base_dir": _SUBSET_BASE_DIR, "pieces": self.pieces},
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"base": self.base, "pieces": self.pieces}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["base"], state["pieces"])


def load_tokenizer(directory: str) -> CharTokenizer | SentencePieceTokenizer | SubsetTokenizer:
    """Loads a tokenizer saved with `save(directory)`.

    Raises:
      FileNotFoundError: `directory/tokenizer.json` does not exist.
      ValueError: unknown tokenizer kind.
    """
    meta_path = os.path.join(directory, _META_FILE)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"No tokenizer in {directory} ({_META_FILE} missing)")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("kind") == "char":
        return CharTokenizer(meta["chars"], meta.get("options"))
    if meta.get("kind") == "sentencepiece":
        with open(os.path.join(directory, meta["model_file"]), "rb") as f:
            return SentencePieceTokenizer(f.read(), meta.get("options"))
    if meta.get("kind") == "subset":
        try:
            return SubsetTokenizer(
                load_tokenizer(os.path.join(directory, meta["base_dir"])), meta["pieces"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{meta_path}: invalid subset tokenizer ({e})") from e
    raise ValueError(
        f"{meta_path}: unknown tokenizer kind {meta.get('kind')!r}; "
        f"known: {list(config_lib.TOKENIZER_NAMES)}"
    )


def load_tokenizers(directory: str) -> tuple[Tokenizer, Tokenizer]:
    """Loads the (source, target) tokenizers of a `WORKDIR/tokenizer` directory.

    A joint vocabulary (`directory/tokenizer.json`) returns the same object twice; separate ones
    live in `directory/source` and `directory/target`.

    Raises:
      FileNotFoundError: neither layout is present.
    """
    if os.path.isfile(os.path.join(directory, _META_FILE)):
        tok = load_tokenizer(directory)
        return tok, tok
    if os.path.isdir(os.path.join(directory, "source")):
        return (
            load_tokenizer(os.path.join(directory, "source")),
            load_tokenizer(os.path.join(directory, "target")),
        )
    raise FileNotFoundError(
        f"No tokenizer in {directory}: expected {_META_FILE} (joint) or source/ and target/"
    )


def save_tokenizers(source: Tokenizer, target: Tokenizer, directory: str) -> None:
    """Saves a tokenizer pair atomically (a concurrent writer's copy is kept if it won).

    Args:
      source: Source tokenizer.
      target: Target tokenizer; the same object as `source` for a joint vocabulary.
      directory: Destination, e.g. `WORKDIR/tokenizer`; must not exist yet.
    """
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
    if source is target:
        source.save(tmp)
    else:
        source.save(os.path.join(tmp, "source"))
        target.save(os.path.join(tmp, "target"))
    try:
        os.rename(tmp, directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(directory):
            raise


def _options(data_config: ml_collections.ConfigDict) -> dict[str, Any]:
    if data_config.tokenizer == "char":
        options = {"kind": "char", "joint": bool(data_config.joint_vocab)}
    else:
        options = {
            "kind": "sentencepiece",
            "joint": bool(data_config.joint_vocab),
            "vocab_size": int(data_config.vocab_size),
            "model_type": data_config.spm_model_type,
        }
    if data_config.restrict_target_vocab:
        options["restrict_target_vocab"] = True
    return options


def _train_one(data_config: ml_collections.ConfigDict, texts: list[str]) -> Tokenizer:
    if data_config.tokenizer == "char":
        return CharTokenizer.train(texts, {"kind": "char"})
    return SentencePieceTokenizer.train(
        texts,
        vocab_size=data_config.vocab_size,
        model_type=data_config.spm_model_type,
        character_coverage=data_config.spm_character_coverage,
        max_sentences=data_config.spm_max_sentences,
        normalization=data_config.spm_normalization,
    )


def train_tokenizers(
    data_config: ml_collections.ConfigDict, pairs: Sequence[tuple[str, str]]
) -> tuple[Tokenizer, Tokenizer]:
    """Trains the (source, target) tokenizers `data_config` asks for on text pairs.

    Args:
      data_config: `config.data` (tokenizer, vocab_size, spm_*, joint_vocab).
      pairs: Training (source, target) texts.

    Returns:
      (source, target); the same object twice when `joint_vocab`.
    """
    if data_config.joint_vocab:
        tok = _train_one(data_config, [t for pair in pairs for t in pair])
        if data_config.restrict_target_vocab:
            target = SubsetTokenizer.from_texts(tok, [t for _, t in pairs])
            log.info(
                "Target vocabulary: the %d of %d joint pieces seen in the training targets",
                target.vocab_size,
                tok.vocab_size,
            )
            return tok, target
        return tok, tok
    return (
        _train_one(data_config, [s for s, _ in pairs]),
        _train_one(data_config, [t for _, t in pairs]),
    )


def _saved_options(source: Tokenizer, target: Tokenizer) -> dict[str, Any]:
    kind = "char" if isinstance(source, CharTokenizer) else "sentencepiece"
    subset = isinstance(target, SubsetTokenizer)
    saved = {"kind": kind, "joint": source is target or subset}
    if kind == "sentencepiece":
        saved.update(
            vocab_size=source.options.get("vocab_size"), model_type=source.options.get("model_type")
        )
    if subset:
        saved["restrict_target_vocab"] = True
    return saved


def _training_pairs(data_config: ml_collections.ConfigDict) -> list[tuple[str, str]]:
    """The train split, or for SentencePiece a fixed random sample of `spm_max_sentences` pairs."""
    source = sources.open_split(data_config, data_config.train_split)
    n, limit = len(source), data_config.spm_max_sentences
    if data_config.tokenizer != "sentencepiece" or n <= limit:
        return source.read(range(n))
    indices = np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))
    return source.read(indices.tolist())


def get_tokenizers(
    data_config: config_lib.AnyDataConfig, workdir: str, staging_dir: str | None = None
) -> tuple[Tokenizer, Tokenizer]:
    """Returns (source, target) tokenizers: loaded from the workdir, or trained and saved there.

    Order of precedence: `WORKDIR/tokenizer/` if present (its options must match the config,
    unless `tokenizer_dir` is set);
    else `data_config.tokenizer_dir` if set (copied into the workdir, e.g. to fine-tune with
    the vocabulary of a pretrained run); else trained on `data_config.train_split` and saved.
    Multi-host: call it on process 0 first, then on the others after a barrier (saving is
    atomic, so concurrent first calls cannot corrupt the files, but would train twice).

    Args:
      data_config: `config.data` (a `DataConfig`, or a `ConfigDict` parsed here).
      workdir: The experiment directory.
      staging_dir: If given, a tokenizer that is not in the workdir yet is saved to
          `staging_dir/tokenizer` instead (the caller moves it into the workdir once the run
          is known to start: `save_tokenizers` or a copy of that directory).

    Returns:
      (source_tokenizer, target_tokenizer); the same object twice for a joint vocabulary.

    Raises:
      ValueError: the stored tokenizer was trained with other options than the config's.
    """
    data_config = config_lib.parse(data_config)
    directory = os.path.join(workdir, TOKENIZER_DIRNAME)
    if os.path.isdir(directory):
        pair = load_tokenizers(directory)
        saved, wanted = _saved_options(*pair), _options(data_config)
        if not data_config.tokenizer_dir and saved != wanted:
            raise ValueError(
                f"The tokenizer in {directory} was built with {saved}, but config.data asks for "
                f"{wanted}. Use a fresh workdir, delete {directory}, or make config.data match."
            )
        return pair
    if data_config.tokenizer_dir:
        pair = load_tokenizers(data_config.tokenizer_dir)
        log.info("Using the tokenizer of %s", data_config.tokenizer_dir)
    else:
        pairs = _training_pairs(data_config)
        log.info("Training %s tokenizer(s) on %d pairs", data_config.tokenizer, len(pairs))
        pair = train_tokenizers(data_config, pairs)
    if staging_dir is not None:
        directory = os.path.join(staging_dir, TOKENIZER_DIRNAME)
    save_tokenizers(*pair, directory)
    return load_tokenizers(directory)
