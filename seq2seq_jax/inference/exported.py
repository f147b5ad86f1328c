"""The exported translator: `load_exported(EXPORT_DIR)` -> a callable `list[str] -> list[str]`.

`python -m seq2seq_jax.export` (`seq2seq_jax/export.py`) writes EXPORT_DIR:

  manifest.json         format, platforms, jax version, search settings, shapes, the models'
                        config hashes (MANIFEST_FILENAME)
  search_s<S>.jaxexport one `jax.export` program per source bucket width S: the encoder and the
                        search, `fn(weights, inputs int32 [B, S], limits int32 [B], alpha f32) ->
                        (tokens int32 [B, L], lengths int32 [B], scores f32 [B])`; B is the
                        batch size, or symbolic (`symbolic_batch`)
  weights.npz           the parameters' leaves `leaf_00000`, ... (bfloat16/float16 stored as
                        uint16 bit patterns; dtypes in the manifest)
  tokenizer/            the run's tokenizer files (`seq2seq_jax.data.load_tokenizers` layout)

Loading reads no model code: this module imports neither Flax nor `seq2seq_jax.models` (tested
in a subprocess); batching is `inference.batching`, shared with `BatchTranslator`, so an
exported translation equals the in-process one (tested, greedy and beam).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax.data.tokenizer import load_tokenizers
from seq2seq_jax.decoding.options import SearchConfig
from seq2seq_jax.inference.batching import (
    Batch,
    TranslateStats,
    batch_rows,
    batch_sources,
    encode_sources,
    one_line,
    plan_batches,
    row_index,
    source_limits,
)

FORMAT = "seq2seq_jax.exported"
FORMAT_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
WEIGHTS_FILENAME = "weights.npz"
TOKENIZER_DIRNAME = "tokenizer"
SEARCH_FIELDS = ("beam_size", "alpha", "max_length", "length_ratio", "length_offset")
_BITS = {"bfloat16": np.uint16, "float16": np.uint16}  # Stored as their bit patterns.


class ExportError(ValueError):
    """An export directory that cannot be loaded here (one-line message naming the directory)."""


def program_filename(width: int) -> str:
    """The file of the program for source width `width`."""
    return f"search_s{int(width)}.jaxexport"


def leaf_to_numpy(leaf: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """A parameter leaf as a storable numpy array, and its manifest entry {shape, dtype}."""
    array = np.asarray(jax.device_get(leaf))
    name = str(array.dtype)
    stored = array.view(_BITS[name]) if name in _BITS else array
    return stored, {"shape": list(array.shape), "dtype": name}


def _spec(shape: Sequence[Any], dtype: Any) -> str:
    """`int32[4,8]`: a dtype and shape as the manifest writes them (a symbolic dim by name)."""
    return f"{np.dtype(dtype)}[{','.join(str(d) for d in shape)}]"


def program_signature(rows: int | str, width: int, max_length: int) -> dict[str, Any]:
    """The shapes of one program's data inputs and outputs, as the manifest records them."""
    return {
        "inputs": _spec((rows, width), np.int32),
        "limits": _spec((rows,), np.int32),
        "alpha": _spec((), np.float32),
        "tokens": _spec((rows, max_length), np.int32),
        "lengths": _spec((rows,), np.int32),
        "scores": _spec((rows,), np.float32),
    }


def _check(condition: bool, directory: Path, message: str) -> None:
    if not condition:
        raise ExportError(f"export {directory}: {message}")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of an export directory, checked for format and platform.

    Raises:
      FileNotFoundError: no such directory or no manifest in it.
      ExportError: another format or version, or exported for platforms JAX does not run on here.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no exported translator in {directory} ({MANIFEST_FILENAME} "
            "missing; write one with python -m seq2seq_jax.export)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"export {directory}: {MANIFEST_FILENAME} is not JSON ({e})") from None
    _check(
        manifest.get("format") == FORMAT and manifest.get("version") == FORMAT_VERSION,
        directory,
        f"{MANIFEST_FILENAME} is not a {FORMAT} version {FORMAT_VERSION} manifest",
    )
    platform = jax.default_backend()
    platforms = list(manifest.get("platforms", []))
    _check(
        platform in platforms,
        directory,
        f"exported for platform {','.join(platforms) or '?'} but JAX runs on {platform} "
        f"here (jax {jax.__version__}); export again on this platform",
    )
    return manifest


def _specs(avals: Sequence[Any]) -> list[str]:
    return [_spec(a.shape, a.dtype) for a in avals]


class ExportedTranslator:
    """Translates texts with the programs of an export directory; see `load_exported`.

    Attributes:
      manifest: the export's manifest (dict).
      search: its `SearchConfig` (beam size, alpha, length limits).
      stats: `TranslateStats` of the last call (compilation excluded from decoding).
      truncated: indices of the last call's inputs cut to `max_source_length`.
    """

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.directory = directory
        self.manifest = manifest = read_manifest(directory)
        self.search = SearchConfig(**{k: manifest["search"][k] for k in SEARCH_FIELDS}).validate()
        self.max_source_length = int(manifest["max_source_length"])
        self.widths = tuple(int(w) for w in manifest["widths"])
        self.batch_size = int(manifest["batch_size"])
        self.symbolic_batch = bool(manifest["symbolic_batch"])
        self.source_tokenizer, self.target_tokenizer = load_tokenizers(
            str(directory / TOKENIZER_DIRNAME)
        )
        self._weights = self._load_weights()
        self._programs: dict[int, Callable[..., Any]] = {}
        for width in self.widths:
            self._programs[width] = self._load_program(width)
        self._compiled: set[tuple[int, int]] = set()
        self.stats = TranslateStats()
        self.truncated: list[int] = []

    def _load_weights(self) -> list[jax.Array]:
        path = self.directory / WEIGHTS_FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"export {self.directory}: {WEIGHTS_FILENAME} missing")
        leaves = self.manifest["weights"]
        with np.load(path) as stored:
            _check(
                len(stored.files) == len(leaves),
                self.directory,
                f"{WEIGHTS_FILENAME} holds {len(stored.files)} arrays, the manifest {len(leaves)}",
            )
            arrays = []
            for k, entry in enumerate(leaves):
                array = stored[f"leaf_{k:05d}"]
                if entry["dtype"] in _BITS:
                    array = array.view(jnp.dtype(entry["dtype"]))
                _check(
                    list(array.shape) == entry["shape"] and str(array.dtype) == entry["dtype"],
                    self.directory,
                    f"weight {k} is {array.dtype}{list(array.shape)}, the "
                    f"manifest says {entry['dtype']}{entry['shape']}",
                )
                arrays.append(array)
        return [jax.device_put(a) for a in arrays]

    def _load_program(self, width: int) -> Callable[..., Any]:
        path = self.directory / program_filename(width)
        if not path.is_file():
            raise FileNotFoundError(f"export {self.directory}: {path.name} missing")
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
        _check(
            jax.default_backend() in exported.platforms,
            self.directory,
            f"{path.name} was lowered for {','.join(exported.platforms)}, not "
            f"{jax.default_backend()}",
        )
        rows = "b" if self.symbolic_batch else self.batch_size
        expected = program_signature(rows, width, self.search.max_length)
        weights = [_spec(e["shape"], jnp.dtype(e["dtype"])) for e in self.manifest["weights"]]
        inputs = [*weights, expected["inputs"], expected["limits"], expected["alpha"]]
        outputs = [expected["tokens"], expected["lengths"], expected["scores"]]
        got_in, got_out = _specs(exported.in_avals), _specs(exported.out_avals)
        if got_in != inputs or got_out != outputs:
            n = len(weights)
            raise ExportError(
                f"export {self.directory}: {path.name} has the shapes "
                f"({', '.join(got_in[n:])}) -> ({', '.join(got_out)}) with "
                f"{len(got_in) - 3} weights, but the manifest says ({', '.join(inputs[n:])}) -> "
                f"({', '.join(outputs)}) with {n}: the files do not belong together; export "
                "again"
            )
        return jax.jit(exported.call)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        """One output per text, in order; a blank text gives "" without being decoded."""
        return [text for text, _ in self.translate(texts)]

    def translate(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(text, search score) of each text; a blank text gives ("", 0.0)."""
        texts = list(texts)
        source_ids, self.truncated = encode_sources(
            texts, self.source_tokenizer, self.max_source_length
        )
        batches = plan_batches(
            [len(s) for s in source_ids], batch_size=self.batch_size, widths=self.widths
        )
        sentences = sum(len(b.indices) for b in batches)
        rows = batch_rows(sentences, self.batch_size) if self.symbolic_batch else self.batch_size
        self.stats = TranslateStats(sentences=sentences, batches=len(batches))
        self._compile(rows, sorted({b.width for b in batches}))
        alpha = np.float32(self.search.alpha)
        results: list[tuple[str, float]] = [("", 0.0)] * len(texts)

        def dispatch(batch: Batch) -> Any:
            index = row_index(batch, rows)
            limits = source_limits(np.asarray([len(source_ids[i]) for i in index]), self.search)
            return self._programs[batch.width](
                self._weights, batch_sources(batch, source_ids, rows), limits, alpha
            )

        start, pending = time.perf_counter(), None
        for batch in [*batches, None]:  # Dispatch batch k+1 before reading batch k's results.
            outputs = None if batch is None else dispatch(batch)
            if pending is not None:
                done, (tokens, lengths, scores) = pending[0], jax.device_get(pending[1])
                for row, i in enumerate(done.indices):
                    ids = tokens[row, : int(lengths[row])].tolist()
                    results[int(i)] = (
                        one_line(self.target_tokenizer.decode(ids)),
                        float(scores[row]),
                    )
            pending = None if batch is None else (batch, outputs)
        self.stats.decode_seconds = time.perf_counter() - start
        return results

    def _compile(self, rows: int, widths: Sequence[int]) -> None:
        """Compiles (and runs once on a one-token input) the programs not compiled yet."""
        start = time.perf_counter()
        for width in widths:
            if (rows, width) in self._compiled:
                continue
            inputs = np.zeros((rows, width), np.int32)
            inputs[:, 0] = self.source_tokenizer.eos_id
            jax.block_until_ready(
                self._programs[width](
                    self._weights, inputs, np.ones((rows,), np.int32), np.float32(0.0)
                )
            )
            self._compiled.add((rows, width))
            self.stats.programs_compiled += 1
        self.stats.compile_seconds = time.perf_counter() - start


def load_exported(directory: str | Path) -> ExportedTranslator:
    """The translator of an export directory (`python -m seq2seq_jax.export`): a callable
    `list[str] -> list[str]` that runs the exported encoder + search programs, with the
    batching, truncation and length limits of `BatchTranslator`. Builds and imports no model.

    Raises:
      FileNotFoundError: a missing directory, manifest, weights, program or tokenizer file.
      ExportError (a ValueError): another platform than the export's, or programs / weights
        whose shapes are not the manifest's (one line, naming the directory).
    """
    return ExportedTranslator(directory)
