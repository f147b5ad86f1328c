"""Export a trained model's whole translation function:
`python -m seq2seq_jax.export --workdir=DIR --output=EXPORT_DIR [--beam_size=K --batch_size=B
--dtype=bfloat16]`.

Writes, with `jax.export`, one program per source bucket width (`inference.batching.
bucket_widths` of the max source length): the encoder and the search, for `--batch_size` rows or
(`--symbolic_batch`) any row count; plus the weights, the tokenizer files and a manifest (shapes,
search settings, platform, jax version, the config's hash). `seq2seq_jax.inference.load_exported`
reads it back without the model code; `python -m seq2seq_jax.decode --exported=EXPORT_DIR` uses
it. Search defaults are the decode CLI's (flags, then the run's `config.eval`). The format is
`seq2seq_jax.inference.exported`'s; see docs/ARCHITECTURE.md, "Decode CLI".
"""

if __name__ == "__main__":  # Before JAX loads (seq2seq_jax.hugepages).
    from seq2seq_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages("seq2seq_jax.export")

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seq2seq_jax import workdir as workdir_lib
from seq2seq_jax.inference import exported as fmt
from seq2seq_jax.inference import run
from seq2seq_jax.inference.batching import bucket_widths
from seq2seq_jax.inference.translate import make_search_fn
from seq2seq_jax.inference.workdir import CHECKPOINT_CHOICES, restore_ensemble, split_workdirs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The export's options (field names = flag names; None = the decode CLI's default)."""

    workdir: str  # One workdir, or DIR1,DIR2,...: an ensemble.
    output: str
    checkpoint: str = "latest"
    checkpoint_step: int | None = None
    average_checkpoints: int = 0
    beam_size: int | None = None
    alpha: float | None = None
    max_length: int | None = None
    length_ratio: float = run.DecodeOptions.length_ratio
    length_offset: float = run.DecodeOptions.length_offset
    max_source_length: int | None = None
    batch_size: int = run.DecodeOptions.batch_size
    dtype: str | None = None
    symbolic_batch: bool = False

    def decode_options(self) -> run.DecodeOptions:
        """The decode CLI's options resolving the same search (`run.search_config`)."""
        names = {f.name for f in dataclasses.fields(run.DecodeOptions)}
        return run.DecodeOptions(
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name in names and f.name != "output"
            }
        )


def config_sha256(workdir: str) -> str:
    """sha256 of the run's `config.json` bytes."""
    path = Path(workdir) / workdir_lib.CONFIG_FILENAME
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_translator(options: ExportOptions) -> dict[str, Any]:
    """Writes the export directory `options.output` (must not exist or be empty); returns its
    manifest.

    Raises:
      FileNotFoundError: as the decode CLI's restore. ValueError: a bad option, or a non-empty
      output directory.
    """
    output = Path(options.output).expanduser().absolute()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output={options.output} exists and is not an empty directory")
    if options.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {options.batch_size}")
    decode_options = options.decode_options()
    workdirs = split_workdirs(options.workdir)
    restored = restore_ensemble(
        workdirs,
        checkpoint=options.checkpoint,
        step=options.checkpoint_step,
        dtype=options.dtype,
        average=options.average_checkpoints,
    )
    search = run.search_config(decode_options, restored)
    limit = run.max_source_length(decode_options, restored)
    first = restored[0]
    bos_id, eos_id = int(first.target_tokenizer.bos_id), int(first.target_tokenizer.eos_id)
    search_fn = make_search_fn([r.model for r in restored], search, bos_id=bos_id, eos_id=eos_id)
    params = tuple(r.params for r in restored)
    leaves, treedef = jax.tree.flatten(params)

    def translate(
        weights: list[jax.Array], inputs: jax.Array, limits: jax.Array, alpha: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        keys = jnp.zeros((inputs.shape[0], 2), jnp.uint32)  # Searches draw no random numbers.
        outputs = search_fn(jax.tree.unflatten(treedef, weights), inputs, limits, keys, alpha)
        return outputs[0], outputs[1], outputs[2]

    rows: Any = jax.export.symbolic_shape("b")[0] if options.symbolic_batch else options.batch_size
    weight_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
    widths = bucket_widths(limit)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        programs, start = [], time.perf_counter()
        for width in widths:
            exported = jax.export.export(jax.jit(translate))(
                weight_specs,
                jax.ShapeDtypeStruct((rows, width), jnp.int32),
                jax.ShapeDtypeStruct((rows,), jnp.int32),
                jax.ShapeDtypeStruct((), jnp.float32),
            )
            (tmp / fmt.program_filename(width)).write_bytes(exported.serialize())
            programs.append(
                {
                    "width": width,
                    "file": fmt.program_filename(width),
                    **fmt.program_signature(
                        "b" if options.symbolic_batch else options.batch_size,
                        width,
                        search.max_length,
                    ),
                }
            )
        stored, entries = zip(*(fmt.leaf_to_numpy(x) for x in leaves), strict=True)
        np.savez(tmp / fmt.WEIGHTS_FILENAME, **{f"leaf_{k:05d}": a for k, a in enumerate(stored)})
        shutil.copytree(
            Path(workdirs[0]) / workdir_lib.TOKENIZER_DIRNAME, tmp / fmt.TOKENIZER_DIRNAME
        )
        manifest = {
            "format": fmt.FORMAT,
            "version": fmt.FORMAT_VERSION,
            "platforms": list(exported.platforms),
            "jax_version": jax.__version__,
            "search": {**{k: getattr(search, k) for k in fmt.SEARCH_FIELDS}, "mode": search.mode},
            "dtype": first.model_config.dtype,
            "batch_size": options.batch_size,
            "symbolic_batch": options.symbolic_batch,
            "max_source_length": limit,
            "widths": list(widths),
            "bos_id": bos_id,
            "eos_id": eos_id,
            "programs": programs,
            "weights": list(entries),
            "models": [
                {
                    "workdir": str(Path(w).absolute()),
                    "config_sha256": config_sha256(w),
                    "checkpoint_step": r.step,
                    "family": type(r.model).__name__,
                }
                for w, r in zip(workdirs, restored, strict=True)
            ],
        }
        (tmp / fmt.MANIFEST_FILENAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if output.exists():
            output.rmdir()  # Empty (checked above).
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "exported %d program(s) (%s, %s rows, source widths %s) of step %d to %s in %.1f s",
        len(programs),
        search.mode,
        "any" if options.symbolic_batch else options.batch_size,
        list(widths),
        first.step,
        output,
        time.perf_counter() - start,
    )
    return manifest


def main(argv: list[str]) -> int:
    """Runs `export_translator`; one-line errors with exit code 1."""
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    names = [f.name for f in dataclasses.fields(ExportOptions)]
    options = ExportOptions(**{name: flags.FLAGS[name].value for name in names})
    try:
        export_translator(options)
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"seq2seq_jax.export: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    return 0


def _define_flags() -> None:
    from absl import flags

    F, D = flags, ExportOptions
    F.DEFINE_string("workdir", None, "Training workdir (DIR1,DIR2,...: an ensemble).")
    F.DEFINE_string("output", None, "Export directory to write (must not exist or be empty).")
    F.DEFINE_enum(
        "checkpoint",
        D.checkpoint,
        list(CHECKPOINT_CHOICES),
        "As the decode CLI's --checkpoint.",
    )
    F.DEFINE_integer("checkpoint_step", None, "Export this step instead of the latest.")
    F.DEFINE_integer(
        "average_checkpoints",
        D.average_checkpoints,
        "Export the mean of the last N kept checkpoints (0 = off).",
    )
    F.DEFINE_integer("beam_size", None, "Beam size, 1 = greedy (default: config eval.beam_size).")
    F.DEFINE_float("alpha", None, "GNMT length penalty alpha (default: config eval.alpha).")
    F.DEFINE_integer("max_length", None, "Absolute maximum output length, EOS included.")
    F.DEFINE_float(
        "length_ratio", D.length_ratio, "Per-sentence limit ceil(ratio * source length + offset)."
    )
    F.DEFINE_float("length_offset", D.length_offset, "See --length_ratio.")
    F.DEFINE_integer(
        "max_source_length",
        None,
        "Longer inputs are truncated (default: config "
        "data.max_source_length; EOS included); sets the bucket widths.",
    )
    F.DEFINE_integer("batch_size", D.batch_size, "Rows of every exported program.")
    F.DEFINE_enum(
        "dtype",
        None,
        ["float32", "bfloat16", "float16"],
        "Export in this dtype (default: the run's model.dtype).",
    )
    F.DEFINE_bool(
        "symbolic_batch",
        D.symbolic_batch,
        "Export the row count as a symbolic "
        "dimension (inputs smaller than --batch_size run on fewer rows).",
    )
    F.mark_flags_as_required(["workdir", "output"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
