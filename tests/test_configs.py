"""Every configs/*.py file loads, validates, documents its command, and builds its model; the
configs are a package (`configs.common`) loadable by path from any working directory, and each
resolves to the values recorded in tests/configs_snapshot.json."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from seq2seq_jax import models
from seq2seq_jax.data.config import default_multi30k_dir
from seq2seq_jax.training import experiment, trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SNAPSHOT = Path(__file__).with_name("configs_snapshot.json")
# (file, variant); the tiny variants must be runnable on 8 devices (global batch % 8 == 0).
CASES = [
    ("default.py", None),
    ("default.py", "tiny"),
    ("multi30k_rnnsearch.py", None),
    ("multi30k_rnnsearch.py", "fast"),
    ("multi30k_transformer.py", None),
    ("multi30k_transformer.py", "fast"),
    ("wmt14_rnnsearch50.py", None),
    ("wmt14_rnnsearch50.py", "tiny"),
]


def load(name):
    """The config module `configs/<name>` (the repository root is on sys.path: pyproject's
    pytest `pythonpath`)."""
    return importlib.import_module(f"configs.{name[:-3]}")


def test_every_config_file_is_covered():
    assert sorted({name for name, _ in CASES}) == sorted(
        p.name
        for p in CONFIGS.glob("*.py")
        if p.name not in ("finetune.py", "common.py", "__init__.py")
    )


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
        config.model, source_vocab_size=vocab, target_vocab_size=vocab, bos_id=1, eos_id=2
    )
    model = models.build_model(model_config)
    batch = trainer.dummy_batch(4, 4)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), batch["inputs"], batch["targets"], train=False)
    )
    assert models.count_params(shapes["params"]) > 0


def test_rnnsearch50_has_the_papers_sizes():
    config = load("wmt14_rnnsearch50.py").get_config()
    m = config.model
    assert (m.emb_dim, m.encoder_hidden_size, m.decoder_hidden_size, m.maxout_size) == (
        620,
        1000,
        1000,
        500,
    )
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


def flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def snapshot():
    """{'file.py:ARG': {dotted key: value}}; each case stores its differences from a parent."""
    recorded = json.loads(SNAPSHOT.read_text())
    resolved = {}
    for case in recorded:  # Parents come first (the file is written in that order).
        entry = recorded[case]
        resolved[case] = {
            **(resolved[entry["parent"]] if entry["parent"] else {}),
            **entry["values"],
        }
    return resolved


def resolve(case):
    name, _, arg = case.partition(":")
    module = load(name)
    return flatten((module.get_config(arg) if arg else module.get_config()).to_dict())


@pytest.mark.parametrize("case", list(json.loads(SNAPSHOT.read_text())))
def test_configs_resolve_to_the_recorded_values(case):
    """The values of every config and variant as they were before configs/ became a package
    (captured from the old files; `data.eval_split` removed since: it was never read). Keys
    added to or removed from the library's sections later do not count; a changed value does."""
    expected, got = snapshot()[case], resolve(case)
    shared = sorted(set(expected) & set(got))
    assert len(shared) >= 0.9 * len(expected), sorted(set(expected) - set(got))
    changed = {
        k: (expected[k], got[k])
        for k in shared
        if json.dumps(expected[k], default=str) != json.dumps(got[k], default=str)
    }
    assert not changed, f"{case}: key: (recorded, now) {changed}"


def test_default_multi30k_dir_and_finetune_reference():
    for name in ("multi30k_rnnsearch.py", "multi30k_transformer.py"):
        for variant in ("", "fast:"):
            default = load(name).get_config(variant.rstrip(":") or None)
            explicit = load(name).get_config(f"{variant}{default_multi30k_dir()}")
            assert default.to_dict() == explicit.to_dict()
    config = load("finetune.py").get_config("tiny")
    config.init_checkpoint = "/elsewhere"  # data.tokenizer_dir follows it (a FieldReference).
    assert config.data.tokenizer_dir == "/elsewhere/tokenizer"
    assert "eval_split" not in config.data


def test_a_workdir_saved_with_the_removed_eval_split_still_resumes():
    config = load("default.py").get_config("tiny")
    saved = config.to_dict()
    saved["data"]["eval_split"] = "validation"  # config.json of a run trained before.
    assert experiment.resume_conflicts(saved, config) == []


def test_packing_is_rejected_for_rnnsearch_at_config_time():
    config = load("default.py").get_config("tiny")
    config.data.batching = "pack"
    with pytest.raises(
        ValueError,
        match=r"config\.data\.batching='pack' is not supported by "
        r"config\.model\.name='rnnsearch'",
    ):
        experiment.validate_config(config)
    config = load("multi30k_transformer.py").get_config("fast")
    config.data.tokens_per_batch = 0
    config.data.batching = "pack"
    experiment.validate_config(config)  # The Transformer packs.


def test_config_files_load_by_path_from_another_working_directory(tmp_path):
    """`--config=/abs/path/configs/finetune.py:tiny` (it imports configs.common and
    configs.default) from a directory with no configs/ and no PYTHONPATH: the file loads, and
    its bad override is the one error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seq2seq_jax.train",
            f"--config={CONFIGS}/finetune.py:tiny",
            f"--workdir={tmp_path / 'w'}",
            "--config.num_train_steps=0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert lines[-1] == ("seq2seq_jax.train: error: config.num_train_steps must be >= 1, got 0"), (
        proc.stderr[-2000:]
    )
    assert not (tmp_path / "w").exists()
