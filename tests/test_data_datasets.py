"""Dataset tests: generated tasks, the user's parallel text, registry TFDS datasets, errors."""

from __future__ import annotations

import datetime
import gzip
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from seq2seq_jax import data
from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data.datasets import generated

MULTI30K = "/work/shared/data/multi30k"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def make_config(tfds_dir, **overrides):
    c = data.default_data_config()
    c.tfds_data_dir = tfds_dir
    c.num_train_examples, c.num_validation_examples, c.num_test_examples = 2000, 300, 300
    for k, v in overrides.items():
        c[k] = v
    return c


# --- Dates -------------------------------------------------------------------------------------

_EN_NUMERIC_FORMATS = (  # Independent parsers (datetime.strptime) for English/numeric formats.
    "%A %d %B %Y",
    "%a, %b %d, %Y",
    "%B %d, %Y",
    "%d %b %Y",
    "%A, %B %d, %Y",
    "%d.%m.%Y",
    "%Y/%m/%d",
    "%m-%d-%Y",
    "%Y%m%d",
)


def parse_reference(source: str) -> datetime.date | None:
    text = re.sub(r"(\d)(st|nd|rd|th),", r"\1,", source)  # "May 9th, 2018"
    if re.fullmatch(r"\d{1,2}/\d{1,2}/\d\d", text):  # d/m/yy, pivot 50
        d, m, yy = (int(x) for x in text.split("/"))
        return datetime.date(1900 + yy if yy >= 50 else 2000 + yy, m, d)
    for fmt in _EN_NUMERIC_FORMATS:
        try:
            return datetime.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def test_dates_are_correct_short_diverse_and_disjoint(tfds_dir):
    config = make_config(tfds_dir)
    splits = {s: data.load_texts(config, s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 2000, "validation": 300, "test": 300}
    sources = [set(s for s, _ in v) for v in splits.values()]
    assert sum(len(s) for s in sources) == len(set.union(*sources)), "unique, disjoint splits"
    parsed = 0
    for source, target in splits["train"]:
        assert len(source) < 40
        date = datetime.date.fromisoformat(target)
        assert generated.DATE_MIN <= date <= generated.DATE_MAX
        reference = parse_reference(source)
        if reference is not None:
            assert reference == date, source
            parsed += 1
        else:  # Other languages: the day and the year are written in the source.
            assert str(date.year) in source and re.search(rf"\b{date.day}(er|\.)?\b", source)
    assert parsed > 600
    shapes = {re.sub(r"\d+", "0", s) for s, _ in splits["train"]}
    patterns = {re.sub(r"[^\d\W]+", "w", s) for s in shapes}  # Words -> "w".
    assert len(patterns) >= 15, sorted(patterns)
    for word in ("mayo", "mai", "Mai", "May", "janvier", "Dezember", "sábado", "Samstag"):
        assert any(word in s for s, _ in splits["train"]), word


def test_generated_data_cached_and_keyed_by_config(tfds_dir):
    config = make_config(tfds_dir, num_train_examples=400, generator_seed=3)
    first = data.load_texts(config, "train")
    root = os.path.join(tfds_dir, "seq2seq_jax_generated")
    info = [
        os.path.join(dp, "dataset_info.json")
        for dp, _, fs in os.walk(root)
        if "dataset_info.json" in fs and "n300.400.300-s3" in dp
    ]
    assert len(info) == 1
    mtime = os.path.getmtime(info[0])
    data.sources._BUILDER_CACHE.clear()  # As in a new process.
    assert data.load_texts(config, "train") == first
    assert os.path.getmtime(info[0]) == mtime, "prepared once, then reused"
    assert (
        len(
            data.load_texts(
                make_config(tfds_dir, num_train_examples=450, generator_seed=3), "train"
            )
        )
        == 450
    )
    other_seed = data.load_texts(make_config(tfds_dir, num_train_examples=400), "train")
    assert other_seed != first
    # The evaluation splits do not depend on the train size.
    assert data.load_texts(config, "validation") == data.load_texts(
        make_config(tfds_dir, num_train_examples=450, generator_seed=3), "validation"
    )


def test_default_dates_prepare_fast(tmp_path):
    config = make_config(str(tmp_path))
    config.num_train_examples = data.default_data_config().num_train_examples
    start = time.perf_counter()
    texts = data.load_texts(config, "train")
    assert len(texts) == 20_000
    assert time.perf_counter() - start < 20, "preparation must take seconds"


def test_addition_and_reverse(tfds_dir):
    for source, target in data.load_texts(make_config(tfds_dir, name="addition"), "train"):
        a, b = source.split("+")
        assert int(a) + int(b) == int(target) and len(a) <= 5 and len(b) <= 5
    texts = data.load_texts(make_config(tfds_dir, name="reverse", reverse_max_length=12), "test")
    assert all(t == "".join(reversed(s)) and 1 <= len(s) <= 12 for s, t in texts)


def test_generator_too_small():
    draw = lambda rng: generated.reverse_example(rng, max_length=1)  # 26 strings exist.
    with pytest.raises(ValueError, match="Could only draw 26 distinct examples"):
        generated.generate_splits(draw, {"train": 30}, seed=0)


# --- Parallel text -----------------------------------------------------------------------------


def write(path, lines, gz=False, raw: bytes | None = None):
    payload = raw if raw is not None else "".join(f"{x}\n" for x in lines).encode()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return str(path)


def files_config(tfds_dir, **paths):
    return make_config(tfds_dir, name="parallel_text", **paths)


def test_parallel_text_files_gz_and_tsv(tfds_dir, tmp_path):
    src = [f"quelle {i} äöü" for i in range(30)]
    tgt = [f"target {i}" for i in range(30)]
    pairs = list(zip(src, tgt, strict=True))
    config = files_config(
        tfds_dir,
        train_source=write(tmp_path / "tr.de.gz", src, gz=True),
        train_target=write(tmp_path / "tr.en", tgt),
        validation_tsv=write(tmp_path / "va.tsv", [f"{s}\t{t}" for s, t in pairs[:7]]),
    )
    assert data.load_texts(config, "train") == pairs, "file order"
    assert data.load_texts(config, "validation") == pairs[:7]
    with pytest.raises(ValueError, match=r"no split 'test'; available: \['train', 'validation'\]"):
        data.load_texts(config, "test")
    # Editing a file prepares new data instead of reusing the old.
    write(tmp_path / "tr.en", [t.upper() for t in tgt])
    assert data.load_texts(config, "train")[0] == (src[0], "TARGET 0")


def test_parallel_text_errors(tfds_dir, tmp_path):
    good = write(tmp_path / "good.txt", ["a", "b", "c"])
    short = write(tmp_path / "short.txt", ["a", "b"])
    bad = write(tmp_path / "bad.txt", [], raw=b"ok\nfine\n\xff\xfe broken\n")
    empty = write(tmp_path / "empty.txt", [])
    tsv = write(tmp_path / "bad.tsv", ["a\tb", "no tab here"])
    cases = [
        (
            dict(train_source=str(tmp_path / "nope.txt"), train_target=good),
            FileNotFoundError,
            r"not found: .*nope\.txt",
        ),
        (
            dict(train_source=good, train_target=short),
            ValueError,
            r"good\.txt has 3 lines, .*short\.txt has 2 lines",
        ),
        (
            dict(train_source=bad, train_target=good),
            ValueError,
            r"bad\.txt, line 3: not valid UTF-8",
        ),
        (dict(train_source=empty, train_target=empty), ValueError, r"empty: .*empty\.txt"),
        (dict(train_tsv=tsv), ValueError, r"bad\.tsv, line 2: expected 2 tab-separated fields"),
        (dict(train_source=good), ValueError, "must be set together"),
        ({}, ValueError, "parallel_text has no split"),
    ]
    for paths, error, message in cases:
        with pytest.raises(error, match=message):
            data.load_texts(files_config(tfds_dir, **paths), "train")


@pytest.mark.skipif(not os.path.isdir(MULTI30K), reason=f"Multi30k not found at {MULTI30K}")
def test_multi30k_through_parallel_text(tfds_dir):
    config = data.multi30k_data_config(MULTI30K, "en", "fr")
    config.tfds_data_dir = tfds_dir
    train = data.load_texts(config, "train")
    validation = data.load_texts(config, "validation")
    assert (len(train), len(validation)) == (29_000, 1_014)
    with gzip.open(os.path.join(MULTI30K, "val.fr.gz"), "rt", encoding="utf-8") as f:
        french = f.read().splitlines()
    assert [t for _, t in validation] == french
    with pytest.raises(ValueError, match="unknown; known"):
        data.multi30k_data_config(MULTI30K, "en", "cs")


# --- Registry datasets (prepared as array_record beforehand) -----------------------------------


class TinyTranslate(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A registry-style dataset with a config, prepared here instead of by `tfds build`."""

    VERSION = tfds.core.Version("1.2.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="de-en")]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "de": tfds.features.Text(),
                    "en": tfds.features.Text(),
                    "id": tfds.features.Scalar(dtype=np.int32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40), "validation": self._generate_examples(6)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"de": f"Satz Nummer {i}", "en": f"sentence number {i}", "id": i}


def test_registry_dataset_by_name(tmp_path):
    builder = TinyTranslate(config="de-en", data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    config = make_config(
        str(tmp_path),
        name="tfds",
        tfds_name="tiny_translate/de-en",
        inputs_key="de",
        targets_key="en",
    )
    pairs = data.load_texts(config, "train")
    assert sorted(pairs) == sorted((f"Satz Nummer {i}", f"sentence number {i}") for i in range(40))
    tok = data.CharTokenizer.train(t for p in pairs for t in p)
    config.prefetch = 0
    it = data.make_train_iterator(config, tok, tok, batch_size=8, seed=0, num_epochs=1)
    assert sum(int((b["inputs_segmentation"].max(axis=1) > 0).sum()) for b in it) == 40
    config.tfds_name = "tiny_translate/de-en:1.2.0"
    assert len(data.load_texts(config, "validation")) == 6

    config.targets_key = "fr"
    with pytest.raises(ValueError, match=r"no feature 'fr'; features: \['de', 'en', 'id'\]"):
        data.load_texts(config, "train")
    config.targets_key, config.tfds_name = "en", "wmt14_translate/de-en"
    with pytest.raises(
        FileNotFoundError, match="tfds build wmt14_translate/de-en --file_format=array_record"
    ):
        data.load_texts(config, "train")


# --- Config validation -------------------------------------------------------------------------


def test_unknown_names_list_the_known_ones(tfds_dir):
    for key, value, known in [
        ("name", "wmt", "['dates', 'addition', 'reverse', 'parallel_text', 'tfds']"),
        ("tokenizer", "bytes", "['char', 'sentencepiece']"),
        ("batching", "sorted", "['pad', 'bucket', 'pack']"),
        ("overlength", "drop", "['filter', 'truncate']"),
        ("date_languages", "en,xx", "['en', 'fr', 'de', 'es', 'it']"),
    ]:
        with pytest.raises(ValueError, match=re.escape(known)):
            data.load_texts(make_config(tfds_dir, **{key: value}), "train")
    config = make_config(tfds_dir)
    config.max_sourse_length = 10  # A typo.
    with pytest.raises(ValueError, match=r"Unknown config.data keys \['max_sourse_length'\]"):
        data.validate_data_config(config)
    with pytest.raises(ValueError, match="strictly increasing"):
        data.validate_data_config(make_config(tfds_dir, bucket_boundaries=(16, 8)))
    assert config_lib.bucket_boundaries(make_config(tfds_dir), 40) == (8, 16, 32, 40)


# --- No TensorFlow on this path ----------------------------------------------------------------


def test_no_tensorflow_import(tmp_path):
    """Preparing and reading datasets never imports TensorFlow, even if it were installed."""
    script = textwrap.dedent(
        """
        import importlib.abc, importlib.machinery, json, sys

        imports = []

        class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    return importlib.machinery.ModuleSpec(name, self)
            def create_module(self, spec):
                return None
            def exec_module(self, module):
                imports.append(module.__name__)
                raise ImportError("blocked by the test")

        sys.meta_path.insert(0, Block())
        from seq2seq_jax import data

        c = data.default_data_config()
        c.tfds_data_dir = sys.argv[1]
        c.num_train_examples = 64
        open(sys.argv[2], "w").write("eins\\nzwei\\n")
        tok = data.CharTokenizer.train(t for p in data.load_texts(c, "train") for t in p)
        batch = next(data.make_train_iterator(c, tok, tok, batch_size=4, seed=0))
        c.name, c.train_source, c.train_target = "parallel_text", sys.argv[2], sys.argv[2]
        pairs = data.load_texts(c, "train")
        tf = [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]
        print(json.dumps({"imports": imports, "modules": tf, "rows": len(batch["inputs"]),
                          "pairs": len(pairs)}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "tfds"), str(tmp_path / "x.txt")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"imports": [], "modules": [], "rows": 4, "pairs": 2}


def test_two_processes_preparing_one_dataset_at_once_both_succeed(tmp_path):
    """Two runs starting together on a fresh TFDS cache: preparation is locked, the second
    process waits and reads what the first wrote (TFDS alone fails renaming its incomplete
    folder)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from seq2seq_jax.data import config, sources\n"
        "c = config.default_data_config()\n"
        "c.name = 'reverse'; c.num_train_examples = 3000\n"
        "c.num_validation_examples = 50; c.num_test_examples = 50\n"
        "c.tfds_data_dir = sys.argv[1]\n"
        "builder, _, _ = sources.get_builder(c)\n"
        "print(builder.info.splits['train'].num_examples)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.split() == ["3000"]
