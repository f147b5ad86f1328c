"""Input pipeline throughput: examples/s and tokens/s of the train iterator.

    python -m benchmarks.pipeline_bench [--quick]

Prints one JSON line per figure `{"name", "value", "unit", ...}`. Measured on one thread with no
prefetch (the training loop gets the same batches from a background thread), batch 64:

- `pipeline/<dataset>/<mode>/first_epoch_examples_per_s`: the first epoch (reads array_record,
  tokenizes);
- `pipeline/<dataset>/<mode>/examples_per_s` and `.../target_tokens_per_s` (real, non-pad
  target tokens, the unit of the train step's throughput): later epochs (tokenized examples
  are memoised, `config.data.cache_max_examples`).

Datasets: `dates` (character tokenizer, the embedded default) and `multi30k` (de->en,
SentencePiece 8000, joint; skipped when /work/shared/data/multi30k is absent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from seq2seq_jax import data

MULTI30K = "/work/shared/data/multi30k"
BATCH = 64


def _figure(name: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "value": float(f"{value:.4g}"), "unit": unit, **extra}


def _measure(config, src_tok, tgt_tok, warm_batches: int) -> tuple[float, float, float]:
    """Returns (first-epoch examples/s, later examples/s, later target tokens/s)."""
    it = data.make_train_iterator(config, src_tok, tgt_tok, batch_size=BATCH, seed=0)
    split_size = len(data.open_split(config, config.train_split))
    start = time.perf_counter()
    while it.get_state()["examples_read"] < split_size:
        next(it)
    first = it.get_state()["examples_read"] / (time.perf_counter() - start)
    read_before = it.get_state()["examples_read"]
    start, target_tokens = time.perf_counter(), 0
    for _ in range(warm_batches):
        target_tokens += int((next(it)["targets_segmentation"] > 0).sum())
    seconds = time.perf_counter() - start
    # Examples whose batches were returned: the read count is exact at window ends, so time
    # whole windows (warm_batches is a multiple of the bucket window).
    examples = it.get_state()["examples_read"] - read_before
    return first, examples / seconds, target_tokens / seconds


def _bench_dataset(name: str, config, workdir: str, quick: bool) -> list[dict[str, Any]]:
    src_tok, tgt_tok = data.get_tokenizers(config, workdir)
    figures = []
    for mode in ("bucket",) if quick else ("pad", "bucket", "pack"):
        config.batching = mode
        first, warm, tokens = _measure(config, src_tok, tgt_tok, 64 if quick else 320)
        context = {"batch": BATCH, "tokenizer": config.tokenizer, "vocab": src_tok.vocab_size}
        prefix = f"pipeline/{name}/{mode}"
        figures += [
            _figure(f"{prefix}/first_epoch_examples_per_s", first, "examples/s", **context),
            _figure(f"{prefix}/examples_per_s", warm, "examples/s", **context),
            _figure(f"{prefix}/target_tokens_per_s", tokens, "tokens/s", **context),
        ]
    return figures


def run(quick: bool) -> list[dict[str, Any]]:
    """Measures the train iterator on dates and (if present) Multi30k; returns the figures."""
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        dates = data.default_data_config()
        dates.tfds_data_dir = os.path.join(tmp, "tfds")
        dates.prefetch = 0
        dates.max_source_length, dates.max_target_length = 40, 12
        figures += _bench_dataset("dates", dates, os.path.join(tmp, "dates"), quick)
        if os.path.isdir(MULTI30K):
            multi30k = data.multi30k_data_config(MULTI30K, "de", "en")
            multi30k.tfds_data_dir = os.path.join(tmp, "tfds")
            multi30k.prefetch = 0
            if quick:
                multi30k.spm_model_type = "bpe"  # Trains in about a second.
            figures += _bench_dataset("multi30k", multi30k, os.path.join(tmp, "m30k"), quick)
        else:
            print(f"Multi30k not found at {MULTI30K}: skipped", file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bucket mode only, fewer batches")
    args = parser.parse_args()
    for record in run(args.quick):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
