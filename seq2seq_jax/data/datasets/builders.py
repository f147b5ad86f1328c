"""TFDS builders of the package: generated tasks and the user's parallel text.

Both prepare `array_record` files (read back with `as_data_source`, no TensorFlow) under
`<tfds_data_dir>/<builder name>/<config name>/<version>/`. The config name is derived from every
option that changes the data (sizes, seed, languages; file paths, sizes and modification times),
so a changed option prepares a new directory instead of silently reusing stale data.

Features of both builders: `source` and `target` (text). Shuffling at preparation is disabled:
examples keep generation/file order (the pipeline shuffles when reading).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from seq2seq_jax.data.datasets import generated, parallel_text

GENERATED_TASKS = ("dates", "addition", "reverse")


@dataclasses.dataclass(eq=False)
class GeneratedConfig(tfds.core.BuilderConfig):
    """Options of a generated task (they all enter the config name, i.e. the cache key)."""

    task: str = "dates"
    sizes: tuple[tuple[str, int], ...] = ()
    seed: int = 0
    languages: tuple[str, ...] = ()
    max_digits: int = 5
    max_length: int = 20


def generated_config(
    task: str,
    sizes: dict[str, int],
    seed: int,
    languages: tuple[str, ...] = (),
    max_digits: int = 5,
    max_length: int = 20,
) -> GeneratedConfig:
    """Builds the `GeneratedConfig` whose name encodes every option of `task`.

    Args:
      task: One of `GENERATED_TASKS`.
      sizes: Examples per split name.
      seed: Generator seed.
      languages: Date languages ('dates' only).
      max_digits: Operand digits ('addition' only).
      max_length: String length ('reverse' only).

    Returns:
      The config, named e.g. `dates-n20000.1000.1000-s0-en.fr`.
    """
    if task not in GENERATED_TASKS:
        raise ValueError(f"Unknown generated task {task!r}; known: {list(GENERATED_TASKS)}")
    for split, n in sizes.items():
        if n <= 0:
            raise ValueError(f"Generated split {split!r} must have > 0 examples, got {n}")
    sizes_key = ".".join(str(sizes[s]) for s in sorted(sizes))
    option = {
        "dates": "-" + ".".join(languages),
        "addition": f"-d{max_digits}",
        "reverse": f"-l{max_length}",
    }[task]
    return GeneratedConfig(
        name=f"{task}-n{sizes_key}-s{seed}{option}",
        task=task,
        sizes=tuple(sorted(sizes.items())),
        seed=seed,
        languages=tuple(languages),
        max_digits=max_digits,
        max_length=max_length,
    )


def _text_info(builder: tfds.core.DatasetBuilder, description: str) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=builder,
        description=description,
        features=tfds.features.FeaturesDict(
            {"source": tfds.features.Text(), "target": tfds.features.Text()}
        ),
        supervised_keys=("source", "target"),
        disable_shuffling=True,
    )


def _as_examples(pairs: list[tuple[str, str]]) -> Iterator[tuple[int, dict[str, str]]]:
    for key, (source, target) in enumerate(pairs):
        yield key, {"source": source, "target": target}


class Seq2seqJaxGenerated(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Generated tasks: date normalisation, multi-digit addition, string reversal."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return _text_info(self, f"seq2seq_jax generated task {self.builder_config.task!r}")

    def _split_generators(self, dl_manager):  # noqa: ARG002 (TFDS signature)
        config: GeneratedConfig = self.builder_config
        draw = {
            "dates": functools.partial(generated.date_example, languages=config.languages),
            "addition": functools.partial(generated.addition_example, max_digits=config.max_digits),
            "reverse": functools.partial(generated.reverse_example, max_length=config.max_length),
        }[config.task]
        splits = generated.generate_splits(draw, dict(config.sizes), config.seed)
        return {name: self._generate_examples(pairs) for name, pairs in splits.items()}

    def _generate_examples(self, pairs: list[tuple[str, str]]):
        return _as_examples(pairs)


@dataclasses.dataclass(eq=False)
class ParallelTextConfig(tfds.core.BuilderConfig):
    """Per split: ("files", source path, target path) or ("tsv", path, "")."""

    files: tuple[tuple[str, str, str, str], ...] = ()  # (split, kind, path_a, path_b)


def _file_fingerprint(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Parallel text file not found: {path}")
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def parallel_text_config(split_files: dict[str, tuple[str, str, str]]) -> ParallelTextConfig:
    """Builds the config of the user's files; its name hashes paths, sizes and mtimes.

    Args:
      split_files: Split name -> ("files", source, target) or ("tsv", path, "").

    Returns:
      A `ParallelTextConfig` named `files-<hash>`.

    Raises:
      FileNotFoundError: a file does not exist.
      ValueError: no split is given.
    """
    if not split_files:
        raise ValueError(
            "parallel_text has no split: set config.data.train_source/train_target "
            "(or train_tsv), and likewise for validation/test"
        )
    files, fingerprint = [], []
    for split in sorted(split_files):
        kind, a, b = split_files[split]
        paths = [a, b] if kind == "files" else [a]
        fingerprint.append([split, kind, *[_file_fingerprint(p) for p in paths]])
        files.append((split, kind, os.path.abspath(a), os.path.abspath(b) if b else ""))
    digest = hashlib.sha1(json.dumps(fingerprint).encode()).hexdigest()[:16]
    return ParallelTextConfig(name=f"files-{digest}", files=tuple(files))


class Seq2seqJaxParallelText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The user's parallel text files (two aligned files or a TSV per split)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return _text_info(self, "seq2seq_jax parallel text from the user's files")

    def _split_generators(self, dl_manager):  # noqa: ARG002 (TFDS signature)
        config: ParallelTextConfig = self.builder_config
        splits = {}
        for split, kind, a, b in config.files:
            if kind == "files":
                pairs = parallel_text.read_parallel_files(a, b)
            else:
                pairs = parallel_text.read_tsv(a)
            splits[split] = self._generate_examples(pairs)
        return splits

    def _generate_examples(self, pairs: list[tuple[str, str]]):
        return _as_examples(pairs)


def prepare(factory: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
    """The builder `factory()` makes, prepared as array_record unless already prepared there.

    Preparation holds an exclusive lock (`<version dir>.lock`, `flock`: released by the OS when
    the process dies), so two runs that start together on a fresh cache do not both write the
    same directory (TFDS then fails renaming its `incomplete.*` folder). The builder is made
    again after the lock is taken: one made before another process finished preparing would
    hold an empty `info`. TFDS's progress messages go to stderr, so that stdout stays the
    caller's (e.g. JSON lines).
    """
    builder = factory()
    if builder.is_prepared():
        return builder
    version_dir = Path(builder.data_dir)
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(version_dir.parent / f"{version_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Waits while another process prepares.
        builder = factory()
        if not builder.is_prepared():
            with contextlib.redirect_stdout(sys.stderr):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
    return builder
