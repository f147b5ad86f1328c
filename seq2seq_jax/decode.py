"""Translate with a trained model: `python -m seq2seq_jax.decode --workdir=DIR [--input=FILE]`,
or with an exported translator: `--exported=EXPORT_DIR` (`python -m seq2seq_jax.export`).

Reads one sentence per line (stdin by default), writes one output per line in input order
(stdout by default). See docs/ARCHITECTURE.md, "Decode CLI", and `seq2seq_jax.inference.run`.
"""

if __name__ == "__main__":  # Before JAX loads (seq2seq_jax.hugepages).
    from seq2seq_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages("seq2seq_jax.decode")

import dataclasses
import logging as pylogging
import sys

from absl import app, flags, logging

from seq2seq_jax.inference import run
from seq2seq_jax.inference.workdir import CHECKPOINT_CHOICES

F = flags
D = run.DecodeOptions  # Flag defaults = its field defaults (search ones: SearchConfig).
F.DEFINE_string(
    "workdir",
    None,
    "Training workdir (config.json, tokenizer/, checkpoints/); "
    "DIR1,DIR2,... decodes with the ensemble of their models (log-probabilities "
    "averaged at every step; they must share the vocabularies).",
)
F.DEFINE_enum(
    "checkpoint",
    "latest",
    list(CHECKPOINT_CHOICES),
    "Latest step, best by "
    "the run's config.checkpoint.best_metric, the average saved by training with "
    "config.checkpoint.average_last, or the moving average saved with "
    "config.optimizer.ema_decay.",
)
F.DEFINE_integer("checkpoint_step", None, "Restore this step instead of the latest.")
F.DEFINE_integer(
    "average_checkpoints",
    0,
    "Decode with the mean of the parameters of the last N kept checkpoints (0 = off).",
)
F.DEFINE_string("input", None, "Input file, one sentence a line (default: stdin).")
F.DEFINE_string("output", None, "Output file (default: stdout).")
F.DEFINE_string("reference", None, "Reference file: report sacreBLEU BLEU/chrF to stderr.")
F.DEFINE_string("metrics_file", None, "Write settings, speed and scores here as JSON.")
F.DEFINE_integer("beam_size", None, "Beam size, 1 = greedy (default: config eval.beam_size).")
F.DEFINE_float("alpha", None, "GNMT length penalty alpha (default: config eval.alpha).")
F.DEFINE_integer(
    "max_length",
    None,
    "Absolute maximum output length, EOS included "
    "(default: config eval.max_decode_length or data.max_target_length).",
)
F.DEFINE_float(
    "length_ratio", D.length_ratio, "Per-sentence limit ceil(ratio * source_length + offset)."
)
F.DEFINE_float("length_offset", D.length_offset, "See --length_ratio.")
F.DEFINE_integer(
    "max_source_length",
    None,
    "Longer inputs are truncated with a warning "
    "(default: config data.max_source_length; EOS included).",
)
F.DEFINE_bool("sample", D.sample, "Sample instead of searching (beam size 1).")
F.DEFINE_float("temperature", D.temperature, "Sampling temperature (0 = greedy).")
F.DEFINE_integer("top_k", D.top_k, "Sample among the k most probable tokens (0 = all).")
F.DEFINE_float("top_p", D.top_p, "Nucleus sampling mass (1 = all).")
F.DEFINE_integer("seed", D.seed, "Sampling seed (sentence i uses fold_in(seed, i)).")
F.DEFINE_integer("batch_size", D.batch_size, "Sentences per decoding batch.")
F.DEFINE_string("plot_attention", None, "Directory for alignment heatmaps (PNG).")
F.DEFINE_integer("num_plots", D.num_plots, "Plot the first N non-empty sentences.")
F.DEFINE_string("alignments", None, "Write every sentence's attention as JSON lines here.")
F.DEFINE_enum(
    "alignment_format",
    D.alignment_format,
    list(run.ALIGNMENT_FORMATS),
    "--alignments as JSON-lines weights, or 'pharaoh': one line of 'i-j' pairs per "
    "input line (source piece i is output piece j's attention maximum; 0-based, EOS "
    "excluded).",
)
F.DEFINE_integer(
    "nbest",
    D.nbest,
    "Write the K best hypotheses of each input (K <= beam size) to --nbest_output.",
)
F.DEFINE_string("nbest_output", None, "n-best list file (one hypothesis a line).")
F.DEFINE_enum(
    "nbest_format",
    D.nbest_format,
    list(run.NBEST_FORMATS),
    "jsonl: {index, rank, text, score, log_prob, length}; moses: 'index ||| text ||| score'.",
)
F.DEFINE_string(
    "score_targets",
    None,
    "Score these translations of --input (one a line) "
    "with the model instead of searching (forced decoding): writes one score per "
    "line to --output.",
)
F.DEFINE_enum(
    "score_format",
    D.score_format,
    list(run.SCORE_FORMATS),
    "jsonl: {index, score, tokens, mean} (score: log-probability summed over the "
    "tokens, EOS included); plain: the score alone.",
)
F.DEFINE_bool(
    "stream",
    D.stream,
    "Translate stdin line by line, writing (and flushing) each "
    "output as soon as it is ready; lines already waiting are batched together.",
)
F.DEFINE_bool("progress", True, "Progress bar on stderr for inputs of several batches.")
F.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "Decode in this dtype (weights cast once; matmuls accumulate in float32, logits "
    "stay float32). Default: the run's model.dtype. bfloat16 halves the weights' memory "
    "and is faster on CPUs with AVX512-BF16 and on GPUs/TPUs.",
)
F.DEFINE_string(
    "exported",
    None,
    "Translate with this export directory (python -m "
    "seq2seq_jax.export) instead of a workdir's model: takes --input, --output, "
    "--reference and --metrics_file; the search was fixed at export.",
)


def main(argv: list[str]) -> int:
    """Runs `seq2seq_jax.inference.run.run_decode`; one-line errors with exit code 1."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if logging.get_verbosity() <= logging.INFO:  # Keep INFO for our logs; quiet the libraries'.
        for name in ("absl", "jax", "orbax"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)
    names = [f.name for f in dataclasses.fields(run.DecodeOptions)]
    options = run.DecodeOptions(**{name: F.FLAGS[name].value for name in names})
    try:
        run.run_decode(options)
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"seq2seq_jax.decode: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
