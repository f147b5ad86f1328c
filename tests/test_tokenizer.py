"""Tokenizer tests: round trips on generated and Multi30k text, special ids, workdir storage."""

from __future__ import annotations

import os
import pickle
import unicodedata

import numpy as np
import pytest

from seq2seq_jax import data
from seq2seq_jax.data import tokenizer as tokenizer_lib

MULTI30K = "/work/shared/data/multi30k"
needs_multi30k = pytest.mark.skipif(
    not os.path.isdir(MULTI30K), reason=f"Multi30k not found at {MULTI30K} (not shipped)"
)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def dates_config(tfds_dir, **overrides):
    c = data.default_data_config()
    c.tfds_data_dir = tfds_dir
    c.num_train_examples, c.num_validation_examples, c.num_test_examples = 500, 100, 10
    for k, v in overrides.items():
        c[k] = v
    return c


def multi30k_config(tfds_dir, **overrides):
    c = data.multi30k_data_config(MULTI30K, "de", "en")
    c.tfds_data_dir = tfds_dir
    c.vocab_size, c.spm_model_type = 1000, "bpe"  # Small and fast to train.
    for k, v in overrides.items():
        c[k] = v
    return c


def spm_reference(text: str) -> str:
    """What SentencePiece's nmt_nfkc rule makes of a text: NFKC, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def test_char_round_trip_on_generated_text(tfds_dir, tmp_path):
    config = dates_config(tfds_dir)
    src, tgt = data.get_tokenizers(config, str(tmp_path))
    assert src is tgt, "joint vocabulary: one object"
    for split in ("train", "validation"):
        for source, target in data.load_texts(config, split):
            assert src.decode(src.encode(source)) == source
            assert tgt.decode(tgt.encode(target) + [tgt.eos_id]) == target


def test_char_specials_and_decode_rules():
    tok = data.CharTokenizer.train(["abc", "cab!"])
    assert (tok.pad_id, tok.vocab_size) == (0, 4 + 4)
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}) == 4
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<s>", "</s>", "<unk>"]
    ids = [tok.bos_id, *tok.encode("ab"), tok.pad_id, *tok.encode("c"), tok.eos_id]
    assert tok.decode(ids + tok.encode("zzz")) == "abc", "stops at EOS, drops pad and BOS"
    assert tok.encode("az") == [tok.encode("a")[0], tok.unk_id]
    assert tok.decode(tok.encode("az")) == "a\u2047"
    assert "".join(tok.id_to_piece(i) for i in tok.encode("cab")) == "cab"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.id_to_piece(tok.vocab_size)


@needs_multi30k
@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trip_on_multi30k(tfds_dir, tmp_path, model_type):
    config = multi30k_config(tfds_dir, spm_model_type=model_type, spm_max_sentences=4000)
    src, tgt = data.get_tokenizers(config, str(tmp_path))
    assert isinstance(src, data.SentencePieceTokenizer) and src is tgt
    assert src.pad_id == 0 and len({src.pad_id, src.bos_id, src.eos_id, src.unk_id}) == 4
    assert abs(src.vocab_size - 1000) <= 50
    texts = data.load_texts(config, "validation")
    texts += data.load_texts(config, "train", max_examples=1000)
    mismatches = 0
    for source, target in texts:
        for text in (source, target):
            ids = src.encode(text)
            assert src.pad_id not in ids and src.eos_id not in ids and src.bos_id not in ids
            mismatches += src.decode(ids + [src.eos_id, 7, 8]) != spm_reference(text)
    # Characters never seen in the sampled training sentences decode to "⁇": rare.
    assert mismatches <= 0.002 * 2 * len(texts)


@needs_multi30k
def test_separate_vocabularies_and_reload(tfds_dir, tmp_path):
    config = multi30k_config(tfds_dir, joint_vocab=False, vocab_size=500)
    src, tgt = data.get_tokenizers(config, str(tmp_path))
    assert src is not tgt
    assert os.path.isfile(tmp_path / "tokenizer" / "source" / "spm.model")
    assert os.path.isfile(tmp_path / "tokenizer" / "target" / "spm.model")
    german, english = data.load_texts(config, "validation", max_examples=1)[0]
    assert src.encode(german) != tgt.encode(german), "two different vocabularies"
    mtime = os.path.getmtime(tmp_path / "tokenizer" / "source" / "spm.model")
    src2, tgt2 = data.get_tokenizers(config, str(tmp_path))  # Loaded, not retrained.
    assert os.path.getmtime(tmp_path / "tokenizer" / "source" / "spm.model") == mtime
    assert src2.encode(german) == src.encode(german)
    assert tgt2.encode(english) == tgt.encode(english)
    assert [src2.id_to_piece(i) for i in range(src2.vocab_size)] == [
        src.id_to_piece(i) for i in range(src.vocab_size)
    ]


def test_workdir_tokenizer_must_match_config(tfds_dir, tmp_path):
    config = dates_config(tfds_dir, tokenizer="sentencepiece", vocab_size=60)
    data.get_tokenizers(config, str(tmp_path))
    config.vocab_size = 80
    with pytest.raises(ValueError, match=r"tokenizer in .* was built with .*'vocab_size': 60"):
        data.get_tokenizers(config, str(tmp_path))
    # An explicit tokenizer_dir is reused as is, whatever the config says.
    config2 = dates_config(tfds_dir, tokenizer_dir=str(tmp_path / "tokenizer"))
    other = tmp_path / "finetune"
    src, _ = data.get_tokenizers(config2, str(other))
    assert isinstance(src, data.SentencePieceTokenizer)
    assert os.path.isfile(other / "tokenizer" / "spm.model")


def test_sentencepiece_save_load_pickle(tfds_dir, tmp_path):
    texts = [t for pair in data.load_texts(dates_config(tfds_dir), "train") for t in pair]
    tok = data.SentencePieceTokenizer.train(texts, vocab_size=80, model_type="bpe")
    tok.save(str(tmp_path / "t"))
    loaded = data.load_tokenizer(str(tmp_path / "t"))
    copied = pickle.loads(pickle.dumps(tok))
    for other in (loaded, copied):
        assert other.vocab_size == tok.vocab_size
        assert (other.bos_id, other.eos_id, other.unk_id) == (tok.bos_id, tok.eos_id, tok.unk_id)
        assert other.encode_batch(texts[:50]) == tok.encode_batch(texts[:50])
    assert [tok.decode(tok.encode(t)) for t in texts[:200]] == texts[:200]


def test_restricted_target_vocabulary_keeps_the_joint_segmentation(tfds_dir, tmp_path):
    config = dates_config(tfds_dir, tokenizer="sentencepiece", vocab_size=90, prefetch=0)
    config.restrict_target_vocab = True
    src, tgt = data.get_tokenizers(config, str(tmp_path))
    assert isinstance(tgt, data.SubsetTokenizer) and tgt.base.vocab_size == src.vocab_size
    assert 4 < tgt.vocab_size < src.vocab_size  # ISO dates use few of the joint pieces
    assert (tgt.pad_id, tgt.unk_id, tgt.bos_id, tgt.eos_id) == (
        src.pad_id,
        src.unk_id,
        src.bos_id,
        src.eos_id,
    )
    pairs = data.load_texts(config, "train")
    for _, target in pairs[:300]:
        ids = tgt.encode(target)
        assert tgt.to_base(ids) == src.encode(target)  # the same pieces, renumbered
        assert max(ids) < tgt.vocab_size and tgt.unk_id not in ids
        assert tgt.decode(ids) == src.decode(src.encode(target))
        assert [tgt.id_to_piece(i) for i in ids] == [src.id_to_piece(i) for i in src.encode(target)]
    # Pieces never seen in a training target (month names) encode to unk; sources are unchanged.
    source_text = pairs[0][0]
    assert tgt.unk_id in tgt.encode(source_text) and src.unk_id not in src.encode(source_text)
    assert tgt.encode_batch([t for _, t in pairs[:20]]) == [tgt.encode(t) for _, t in pairs[:20]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tgt.id_to_piece(tgt.vocab_size)
    # Stored as source/ (the joint model) and target/ (the subset over its own copy); reloaded.
    stored = tmp_path / "tokenizer"
    assert (stored / "source" / "spm.model").is_file()
    assert (stored / "target" / "base" / "spm.model").is_file()
    src2, tgt2 = data.get_tokenizers(config, str(tmp_path))
    assert tgt2.pieces == tgt.pieces and src2.encode(source_text) == src.encode(source_text)
    copied = pickle.loads(pickle.dumps(tgt))
    assert copied.encode(pairs[1][1]) == tgt.encode(pairs[1][1])
    # A batch's target ids are the compact ones.
    batch = next(data.make_train_iterator(config, src2, tgt2, batch_size=8, seed=0))
    assert batch["targets"].max() < tgt.vocab_size
    # The stored tokenizer must match the config.
    config.restrict_target_vocab = False
    with pytest.raises(ValueError, match=r"was built with .*'restrict_target_vocab': True"):
        data.get_tokenizers(config, str(tmp_path))
    # A damaged subset file is named.
    meta = stored / "target" / "tokenizer.json"
    meta.write_text(meta.read_text().replace('"pieces": [', '"pieces": [7, '))
    with pytest.raises(ValueError, match=r"target/tokenizer.json: invalid subset tokenizer"):
        data.load_tokenizers(str(stored))


def test_restricted_target_vocabulary_needs_a_joint_vocabulary(tfds_dir):
    config = dates_config(tfds_dir, joint_vocab=False)
    config.restrict_target_vocab = True
    with pytest.raises(ValueError, match="restrict_target_vocab .* needs config.data.joint_vocab"):
        data.DataConfig.from_config(config)


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No tokenizer in"):
        data.load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="source/ and target/"):
        data.load_tokenizers(str(tmp_path))


@pytest.mark.parametrize("kind", ["char", "sentencepiece"])
def test_batches_use_the_tokenizer_special_ids(tfds_dir, tmp_path, kind):
    """Padding is pad_id, every example ends with eos_id, BOS never appears (models add it)."""
    config = dates_config(tfds_dir, tokenizer=kind, vocab_size=70, batching="pad", prefetch=0)
    src, tgt = data.get_tokenizers(config, str(tmp_path))
    batch = next(data.make_train_iterator(config, src, tgt, batch_size=8, seed=0))
    for side, tok in (("inputs", src), ("targets", tgt)):
        ids, seg = batch[side], batch[f"{side}_segmentation"]
        assert (ids[seg == 0] == tok.pad_id).all() and tok.pad_id == tokenizer_lib.PAD_ID
        lengths = (seg > 0).sum(axis=1)
        np.testing.assert_array_equal(ids[np.arange(8), lengths - 1], tok.eos_id)
        assert (ids != tok.bos_id).all()


def test_sentencepiece_trains_on_a_fixed_sample_of_big_splits(tfds_dir):
    config = dates_config(tfds_dir, tokenizer="sentencepiece", spm_max_sentences=100)
    sample = tokenizer_lib._training_pairs(config)
    assert len(set(sample)) == 100 and set(sample) <= set(data.load_texts(config, "train"))
    assert tokenizer_lib._training_pairs(config) == sample, "deterministic"
    config.tokenizer = "char"  # Characters: every pair, so no rare character is missed.
    assert len(tokenizer_lib._training_pairs(config)) == 500
