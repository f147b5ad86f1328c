"""Dataset names -> prepared TFDS builders -> random-access sources of (source, target) text.

Every dataset, embedded or not, is read the same way: a TFDS builder prepared as array_record,
opened with `as_data_source` (no TensorFlow). Registry datasets ('tfds') must have been prepared
beforehand (`tfds build <name> --file_format=array_record --data_dir=<tfds_data_dir>`, the only
step that may need TensorFlow); they are opened from their directory, without their builder code.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds
from absl import logging as absl_logging

from seq2seq_jax.data import config as config_lib
from seq2seq_jax.data.datasets import builders

TextPair = tuple[str, str]


class _QuietCustomConfig(logging.Filter):
    """Drops TFDS's warning that our builders use config objects (they always do, by design)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


absl_logging.get_absl_logger().addFilter(_QuietCustomConfig())
_BUILDER_CACHE: dict[tuple, tuple[tfds.core.DatasetBuilder, str, str]] = {}


def _data_dir(data_config: config_lib.DataConfig) -> str:
    return os.path.expanduser(data_config.tfds_data_dir)


_BuilderSpec = tuple[tuple, Callable[[], tfds.core.DatasetBuilder]]  # (cache key, factory)


def _generated_builder(data_config: config_lib.DataConfig) -> _BuilderSpec:
    sizes = {
        "train": data_config.num_train_examples,
        "validation": data_config.num_validation_examples,
        "test": data_config.num_test_examples,
    }
    builder_config = builders.generated_config(
        data_config.name,
        sizes,
        data_config.generator_seed,
        languages=data_config.date_languages if data_config.name == "dates" else (),
        max_digits=data_config.addition_max_digits if data_config.name == "addition" else 0,
        max_length=data_config.reverse_max_length if data_config.name == "reverse" else 0,
    )
    factory = lambda: builders.Seq2seqJaxGenerated(
        config=builder_config, data_dir=_data_dir(data_config), file_format="array_record"
    )
    return ("generated", _data_dir(data_config), builder_config.name), factory


def _parallel_text_builder(data_config: config_lib.DataConfig) -> _BuilderSpec:
    split_files = {}
    for split in config_lib.SPLIT_NAMES:
        src, tgt, tsv = data_config.split_files(split)  # Checked by DataConfig.from_config.
        if tsv:
            split_files[split] = ("tsv", tsv, "")
        elif src:
            split_files[split] = ("files", src, tgt)
    builder_config = builders.parallel_text_config(split_files)
    factory = lambda: builders.Seq2seqJaxParallelText(
        config=builder_config, data_dir=_data_dir(data_config), file_format="array_record"
    )
    return ("parallel_text", _data_dir(data_config), builder_config.name), factory


def _registry_builder(data_config: config_lib.DataConfig) -> _BuilderSpec:
    path = _prepared_dir(_data_dir(data_config), data_config.tfds_name or "")
    return ("tfds", path), lambda: _open_registry_builder(data_config, path)


def _open_registry_builder(
    data_config: config_lib.DataConfig, path: str
) -> tfds.core.DatasetBuilder:
    name = data_config.tfds_name
    builder = tfds.builder_from_directory(path)
    if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"TFDS dataset {name!r} in {path} is stored as {builder.info.file_format}; random "
            f"access needs array_record: `tfds build {name} --file_format=array_record "
            f"--data_dir={_data_dir(data_config)}`"
        )
    for key in (data_config.inputs_key, data_config.targets_key):
        if key not in builder.info.features:
            raise ValueError(
                f"TFDS dataset {name!r} has no feature {key!r}; features: "
                f"{sorted(builder.info.features.keys())}"
            )
    return builder


def _prepared_dir(data_dir: str, name: str) -> str:
    """Finds `<data_dir>/<name>[/<config>]/<version>` (latest version unless `name:version`)."""
    if not name:
        raise ValueError(
            "config.data.name='tfds' needs config.data.tfds_name (e.g. 'wmt14_translate/de-en'), "
            "inputs_key (e.g. 'de') and targets_key (e.g. 'en')"
        )
    base, _, version = name.partition(":")
    root = os.path.join(data_dir, *base.split("/"))
    hint = (
        f"Prepare it first (TensorFlow may be needed for that step only): `pip install "
        f"'seq2seq_jax[tf]'` then `tfds build {base} --file_format=array_record "
        f"--data_dir={data_dir}`"
    )
    if not os.path.isdir(root):
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {data_dir}. {hint}")
    versions = [v for v in os.listdir(root) if re.fullmatch(r"\d+\.\d+\.\d+", v)]
    if version:
        versions = [v for v in versions if v == version]
    if not versions:
        raise FileNotFoundError(f"TFDS dataset {name!r}: no prepared version in {root}. {hint}")
    latest = max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    return os.path.join(root, latest)


_BUILDERS: dict[str, Callable[[config_lib.DataConfig], _BuilderSpec]] = {
    "dates": _generated_builder,
    "addition": _generated_builder,
    "reverse": _generated_builder,
    "parallel_text": _parallel_text_builder,
    "tfds": _registry_builder,
}


def get_builder(
    data_config: config_lib.AnyDataConfig,
) -> tuple[tfds.core.DatasetBuilder, str, str]:
    """Returns the prepared builder of `data_config.name` and its (source, target) feature keys.

    Builders are prepared on first use (generated data, the user's files) and cached per
    process; a changed option yields a new builder config, hence new data.

    Raises:
      ValueError: unknown dataset name (the message lists the known ones), bad options.
      FileNotFoundError: a parallel text file, or an unprepared registry dataset.
    """
    data_config = config_lib.parse(data_config)  # Names and options checked there.
    key, factory = _BUILDERS[data_config.name](data_config)
    if data_config.name == "tfds":
        key += (data_config.inputs_key, data_config.targets_key)
    if key not in _BUILDER_CACHE:
        keys = ("source", "target")
        if data_config.name == "tfds":
            builder = factory()
            keys = (data_config.inputs_key, data_config.targets_key)
        else:
            builder = builders.prepare(factory)
        _BUILDER_CACHE[key] = (builder, *keys)
    return _BUILDER_CACHE[key]


class TextPairSource:
    """Random access to the (source, target) strings of one split (a Grain data source)."""

    def __init__(self, data_source: Sequence, source_key: str, target_key: str, name: str):
        self._source = data_source
        self._keys = (source_key, target_key)
        self.name = name

    def __len__(self) -> int:
        return len(self._source)

    def _pair(self, example: dict) -> TextPair:
        return tuple(_as_str(example[k]) for k in self._keys)  # type: ignore[return-value]

    def __getitem__(self, index: int) -> TextPair:
        return self._pair(self._source[index])

    def read(self, indices: Sequence[int]) -> list[TextPair]:
        """Batched read of the pairs at `indices` (one array_record call)."""
        return [self._pair(e) for e in self._source.__getitems__(list(indices))]

    def _getitems(self, indices: Sequence[int]) -> list[TextPair]:
        """Batched read under the name Grain looks for."""
        return self.read(indices)

    def __repr__(self) -> str:
        return f"TextPairSource({self.name}, {len(self)} examples)"


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_split(data_config: config_lib.AnyDataConfig, split: str) -> TextPairSource:
    """Opens one split (a TFDS split string, e.g. 'train' or 'validation[:100]').

    Raises:
      ValueError: the split does not exist (the message lists the ones that do) or is empty.
    """
    data_config = config_lib.parse(data_config)
    builder, source_key, target_key = get_builder(data_config)
    base = re.split(r"[\[+]", split, maxsplit=1)[0]
    available = sorted(builder.info.splits.keys())
    if base not in available:
        raise ValueError(
            f"Dataset {data_config.name!r} has no split {base!r}; available: {available}"
        )
    source = TextPairSource(
        builder.as_data_source(split=split),
        source_key,
        target_key,
        f"{data_config.name}:{split}",
    )
    if len(source) == 0:
        raise ValueError(f"Split {split!r} of dataset {data_config.name!r} is empty")
    return source


def load_texts(
    data_config: config_lib.AnyDataConfig, split: str, max_examples: int | None = None
) -> list[TextPair]:
    """Returns the raw (source, target) texts of a split, in stored order (= eval batch order).

    Args:
      data_config: `config.data` (a `DataConfig`, or a `ConfigDict` parsed here).
      split: TFDS split string.
      max_examples: Keep only the first this many.

    Returns:
      List of (source, target) strings.
    """
    source = open_split(data_config, split)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    return source.read(range(n))
