"""Exported vs in-process decoding speed on the same inputs, in one process.

`python -m benchmarks.exported_speed WORKDIR EXPORT_DIR INPUT [--repeats=3]` loads the export
(`seq2seq_jax.inference.load_exported`) and the workdir's model with the export's settings (its
checkpoint step, search, batch size, source limit and dtype) in a `BatchTranslator`, compiles
both, then translates INPUT with each in turn, `--repeats` times (alternating, so load on a
shared machine hits both alike). Prints each run's sentences/s (compilation excluded), the
medians and their ratio, and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from seq2seq_jax.inference import run
from seq2seq_jax.inference.exported import load_exported
from seq2seq_jax.inference.translate import BatchTranslator
from seq2seq_jax.inference.workdir import restore_from_workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("export_dir")
    parser.add_argument("input")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = run.read_lines(args.input)
    exported = load_exported(args.export_dir)
    manifest = exported.manifest
    (model,) = manifest["models"]
    restored = restore_from_workdir(
        args.workdir, step=model["checkpoint_step"], dtype=manifest["dtype"]
    )
    translator = BatchTranslator(
        restored.model,
        exported.search,
        source_tokenizer=restored.source_tokenizer,
        target_tokenizer=restored.target_tokenizer,
        max_source_length=exported.max_source_length,
        batch_size=exported.batch_size,
    )
    in_process = lambda: [t.text for t in translator.translate(restored.params, texts)]
    rates: dict[str, list[float]] = {"in-process": [], "exported": []}
    outputs = {"in-process": in_process(), "exported": exported(texts)}  # Compiles both.
    for repeat in range(args.repeats):
        for name, translate, stats in (
            ("in-process", in_process, lambda: translator.stats),
            ("exported", exported, lambda: exported.stats),
        ):
            outputs[name] = translate() if name == "in-process" else translate(texts)
            rates[name].append(stats().sentences_per_second)
            print(
                f"run {repeat + 1} {name:>10}: {stats().sentences} sentences in "
                f"{stats().decode_seconds:.2f} s = {rates[name][-1]:,.0f} sentences/s"
            )
    medians = {name: statistics.median(r) for name, r in rates.items()}
    print(
        f"{Path(args.export_dir).name} ({exported.search.mode}, batch {exported.batch_size}, "
        f"{manifest['dtype']}): median in-process {medians['in-process']:,.0f} sentences/s, "
        f"exported {medians['exported']:,.0f} sentences/s "
        f"(exported / in-process = {medians['exported'] / medians['in-process']:.2f}); "
        f"outputs identical: {outputs['in-process'] == outputs['exported']}"
    )


if __name__ == "__main__":
    main()
