"""Every configs/*.py file loads, validates, documents its command, and builds its model."""

import importlib.util
from pathlib import Path

import jax
import pytest

from seq2seq_jax import models
from seq2seq_jax.training import experiment, trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (file, variant); the tiny variants must be runnable on 8 devices (global batch % 8 == 0).
CASES = [("default.py", None), ("default.py", "tiny"), ("multi30k_rnnsearch.py", None),
         ("multi30k_rnnsearch.py", "fast"), ("multi30k_transformer.py", None),
         ("multi30k_transformer.py", "fast"), ("wmt14_rnnsearch50.py", None),
         ("wmt14_rnnsearch50.py", "tiny")]


def load(name):
    spec = importlib.util.spec_from_file_location(f"config_{name[:-3]}", CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_file_is_covered():
    assert sorted({name for name, _ in CASES}) == sorted(p.name for p in CONFIGS.glob("*.py")
                                                         if p.name != "finetune.py")


@pytest.mark.parametrize("name, variant", CASES)
def test_config_validates_and_builds_its_model(name, variant):
    module = load(name)
    doc = module.__doc__
    assert "python -m seq2seq_jax.train" in doc and f"configs/{name}" in doc
    assert "Expected" in doc
    config = module.get_config(variant) if variant else module.get_config()
    experiment.validate_config(config)
    assert config.batch_size % 8 == 0, "global batch must split over 8 devices"
    vocab = config.data.vocab_size if config.data.tokenizer == "sentencepiece" else 64
    model_config = models.ModelConfig.from_config(
        config.model, source_vocab_size=vocab, target_vocab_size=vocab, bos_id=1, eos_id=2)
    model = models.build_model(model_config)
    batch = trainer.dummy_batch(4, 4)
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), batch["inputs"], batch["targets"], train=False))
    assert models.count_params(shapes["params"]) > 0


def test_rnnsearch50_has_the_papers_sizes():
    config = load("wmt14_rnnsearch50.py").get_config()
    m = config.model
    assert (m.emb_dim, m.encoder_hidden_size, m.decoder_hidden_size, m.maxout_size) == (
        620, 1000, 1000, 500)
    assert config.data.vocab_size == 30000 and config.eval.beam_size == 12


def test_unknown_variant_and_unknown_key_are_rejected():
    with pytest.raises(ValueError, match="unknown variant 'huge'"):
        load("default.py").get_config("huge")
    config = load("default.py").get_config("tiny")
    config.optimizer.unlock()
    config.optimizer.bogus = 1
    with pytest.raises(ValueError, match=r"config\.optimizer\.bogus"):
        experiment.validate_config(config)


def test_multi30k_config_points_at_existing_files_when_the_data_is_here():
    config = load("multi30k_rnnsearch.py").get_config()
    path = Path(config.data.train_source)
    if not path.parent.is_dir():
        pytest.skip(f"Multi30k not present at {path.parent} (set $MULTI30K_DIR)")
    for key in ("train_source", "train_target", "validation_source", "validation_target"):
        assert Path(config.data[key]).is_file(), key


def test_multi30k_fast_variants_and_data_dir_argument(tmp_path):
    for name in ("multi30k_rnnsearch.py", "multi30k_transformer.py"):
        fast = load(name).get_config(f"fast:{tmp_path}")
        assert fast.max_train_minutes == 30.0 and fast.data.tokens_per_batch > 0
        assert fast.data.train_source == str(tmp_path / "train.de.gz")
        assert load(name).get_config(str(tmp_path)).max_train_minutes == 0.0
