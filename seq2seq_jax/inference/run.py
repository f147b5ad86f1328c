"""The work of `python -m seq2seq_jax.decode`: read lines, translate, write, score, plot.

`run_decode(DecodeOptions(...))` restores a workdir's model, translates the input lines with
`BatchTranslator` and writes one output line per input line, in input order. With a reference it
prints sacreBLEU BLEU / chrF (with signatures) and exact match to stderr; it can also write
alignment heatmaps (PNG) and JSON-lines alignments. Problems with the inputs raise
`FileNotFoundError` / `ValueError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax import evaluation
from seq2seq_jax.inference.translate import BatchTranslator, SearchConfig, Translation
from seq2seq_jax.inference.workdir import RestoredModel, restore_from_workdir

log = logging.getLogger(__name__)
DEFAULT_BEAM_SIZE = 4  # When the run's config has no eval.beam_size.
DEFAULT_ALPHA = 0.6
_MAX_LISTED = 20  # Line numbers named in the over-length warning.
_VISIBLE = {" ": "␣", "\t": "⇥", "\n": "↵"}  # Plot labels of whitespace tokens.


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """The CLI's options (field names = flag names; None = take it from the run's config)."""

    workdir: str
    checkpoint: str = "latest"
    checkpoint_step: int | None = None
    average_checkpoints: int = 0
    input: str | None = None  # None or "-": stdin.
    output: str | None = None  # None or "-": stdout.
    reference: str | None = None
    metrics_file: str | None = None
    beam_size: int | None = None
    alpha: float | None = None
    max_length: int | None = None
    length_ratio: float = 1.5
    length_offset: float = 10.0
    max_source_length: int | None = None
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    plot_attention: str | None = None
    num_plots: int = 10
    alignments: str | None = None
    progress: bool = True
    dtype: str | None = None  # None: the run's model.dtype.


def read_lines(path: str | None) -> list[str]:
    """UTF-8 lines of `path` (stdin for None or '-'), without line ends; a final newline ends
    the last line rather than starting an empty one.

    Raises:
      FileNotFoundError: missing file. ValueError: undecodable bytes (naming file and line).
    """
    name = "<stdin>" if path in (None, "-") else path
    if path in (None, "-"):
        raw = sys.stdin.buffer.read()
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input file not found: {path}")
        raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{name}, line {line}: not valid UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def write_lines(path: str | None, lines: Sequence[str]) -> None:
    """Writes one line per item (UTF-8) to `path` or stdout (None or '-')."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    if path in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def search_config(options: DecodeOptions, restored: RestoredModel) -> SearchConfig:
    """Resolves the search options: flags first, then the run's `config.eval`, then defaults."""
    config = restored.config
    eval_cfg = config.get("eval", {})
    beam = options.beam_size
    if beam is None:
        beam = 1 if options.sample else int(eval_cfg.get("beam_size", DEFAULT_BEAM_SIZE))
    alpha = options.alpha if options.alpha is not None else float(
        eval_cfg.get("alpha", DEFAULT_ALPHA))
    if options.max_length is not None and options.max_length < 1:
        raise ValueError(f"--max_length must be >= 1 (tokens, EOS included), got "
                         f"{options.max_length}")
    cap = model_length_cap(restored)
    max_length = options.max_length or int(eval_cfg.get("max_decode_length", 0)
                                           or config.data.max_target_length)
    if cap is not None and max_length > cap:
        if options.max_length:
            raise ValueError(f"--max_length={max_length} exceeds the model's max_len {cap}")
        max_length = cap
    return SearchConfig(
        beam_size=beam, alpha=alpha, max_length=max_length, length_ratio=options.length_ratio,
        length_offset=options.length_offset, sample=options.sample,
        temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
        seed=options.seed).validate()


def model_length_cap(restored: RestoredModel) -> int | None:
    """The longest sequence the model can embed (Transformer positions), None if unbounded."""
    return restored.model_config.max_len if restored.model_config.name == "transformer" else None


def max_source_length(options: DecodeOptions, restored: RestoredModel) -> int:
    """`--max_source_length`, else the run's `data.max_source_length` (EOS included)."""
    length = options.max_source_length or int(restored.config.data.max_source_length)
    cap = model_length_cap(restored)
    if cap is not None and length > cap:
        raise ValueError(f"--max_source_length={length} exceeds the model's max_len {cap}")
    return length


def _warn_truncated(translations: Sequence[Translation], limit: int) -> None:
    lines = [i + 1 for i, t in enumerate(translations) if t.truncated]
    if not lines:
        return
    listed = ", ".join(map(str, lines[:_MAX_LISTED])) + (", ..." if len(lines) > _MAX_LISTED
                                                         else "")
    log.warning("%d input line(s) longer than %d tokens (EOS included) were truncated to it: "
                "line %s", len(lines), limit, listed)


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU BLEU and chrF with their signatures, and exact match (percent)."""
    bleu = evaluation.corpus_bleu(hypotheses, references)
    chrf = evaluation.corpus_chrf(hypotheses, references)
    return {"bleu": bleu.score, "bleu_signature": bleu.signature, "chrf": chrf.score,
            "chrf_signature": chrf.signature,
            "exact_match": evaluation.exact_match(hypotheses, references)}


def _label(piece: str) -> str:
    """A readable tick label: whitespace made visible, '$' escaped from mathtext."""
    piece = "".join(_VISIBLE.get(c, c) for c in piece) if not piece.strip() else piece
    return piece.replace("$", r"\$")


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.id_to_piece(int(i)) for i in ids]


def plot_alignments(translations: Sequence[Translation], restored: RestoredModel,
                    directory: str, indices: Sequence[int], sources: Sequence[str]) -> list[str]:
    """Writes `DIRECTORY/alignment_<index>.png` (0-based input index) for each index."""
    paths = []
    for i in indices:
        t = translations[i]
        title = sources[i] if len(sources[i]) <= 60 else sources[i][:57] + "..."
        paths.append(evaluation.plot_attention(
            t.attention, [_label(p) for p in _pieces(restored.source_tokenizer, t.source_ids)],
            [_label(p) for p in _pieces(restored.target_tokenizer, t.output_ids)],
            Path(directory) / f"alignment_{i:05d}.png",
            title=f"line {i + 1}: {_label(title)}"))
    return paths


def alignment_records(translations: Sequence[Translation],
                      restored: RestoredModel) -> Iterator[evaluation.AlignmentRecord]:
    """One `AlignmentRecord` per input line (empty lines: no tokens, weights [0, 0])."""
    for i, t in enumerate(translations):
        weights = t.attention if t.attention is not None else np.zeros((0, 0), np.float32)
        yield evaluation.AlignmentRecord(
            i, _pieces(restored.source_tokenizer, t.source_ids),
            _pieces(restored.target_tokenizer, t.output_ids), weights)


def _attention_indices(options: DecodeOptions, sources: Sequence[str]) -> tuple[range | list[int],
                                                                              list[int]]:
    """(indices whose attention is kept, indices plotted: the first N non-empty lines)."""
    plotted = []
    if options.plot_attention:
        plotted = [i for i, s in enumerate(sources) if s.strip()][:max(options.num_plots, 0)]
    keep = range(len(sources)) if options.alignments else plotted
    return keep, plotted


def _report(stats, search: SearchConfig, restored: RestoredModel) -> dict[str, Any]:
    summary = {"checkpoint_step": restored.step, "mode": search.mode, "beam_size":
               search.beam_size, "alpha": search.alpha, "max_length": search.max_length,
               "dtype": restored.model_config.dtype, "sentences": stats.sentences,
               "programs_compiled": stats.programs_compiled,
               "compile_seconds": stats.compile_seconds,
               "decode_seconds": stats.decode_seconds,
               "sentences_per_second": stats.sentences_per_second}
    log.info("decoded %d sentences (%s) with step %d in %.2f s: %.1f sentences/s "
             "(+%.1f s compiling %d programs)", stats.sentences, search.mode, restored.step,
             stats.decode_seconds, stats.sentences_per_second, stats.compile_seconds,
             stats.programs_compiled)
    return summary


def _print_scores(metrics: dict[str, Any]) -> None:
    print(f"BLEU = {metrics['bleu']:.2f} ({metrics['bleu_signature']})", file=sys.stderr)
    print(f"chrF = {metrics['chrf']:.2f} ({metrics['chrf_signature']})", file=sys.stderr)
    print(f"exact match = {metrics['exact_match']:.2f}%", file=sys.stderr)


def run_decode(options: DecodeOptions) -> dict[str, Any]:
    """Translates `options.input` with the workdir's model; see the module docstring.

    Returns:
      The run's summary: checkpoint step, search settings, timing and (with a reference) the
      scores, as also written to `options.metrics_file`.

    Raises:
      FileNotFoundError: a missing workdir, checkpoint, input or reference file.
      ValueError: a bad option, a corrupt checkpoint, or a reference whose line count differs.
    """
    sources = read_lines(options.input)
    references = read_lines(options.reference) if options.reference else None
    if references is not None and len(references) != len(sources):
        raise ValueError(f"--reference {options.reference} has {len(references)} lines but the "
                         f"input has {len(sources)}")
    restored = restore_from_workdir(options.workdir, checkpoint=options.checkpoint,
                                    step=options.checkpoint_step, dtype=options.dtype,
                                    average=options.average_checkpoints)
    search = search_config(options, restored)
    limit = max_source_length(options, restored)
    translator = BatchTranslator(
        restored.model, search, source_tokenizer=restored.source_tokenizer,
        target_tokenizer=restored.target_tokenizer, max_source_length=limit,
        batch_size=options.batch_size)
    keep, plotted = _attention_indices(options, sources)
    translations = translator.translate(restored.params, sources, attention_for=keep,
                                        progress=options.progress)
    _warn_truncated(translations, limit)
    hypotheses = [t.text for t in translations]
    write_lines(options.output, hypotheses)
    summary = _report(translator.stats, search, restored)
    summary.update(checkpoint=options.checkpoint, average_checkpoints=options.average_checkpoints)
    if references is not None and sources:
        summary.update(score(hypotheses, references))
        _print_scores(summary)
    elif references is not None:
        log.warning("the input is empty: no BLEU/chrF to report")
    if plotted:
        plot_alignments(translations, restored, options.plot_attention, plotted, sources)
    if options.alignments:
        evaluation.write_alignments_jsonl(options.alignments,
                                          alignment_records(translations, restored))
    if options.metrics_file:
        Path(options.metrics_file).parent.mkdir(parents=True, exist_ok=True)
        Path(options.metrics_file).write_text(json.dumps(summary, indent=2) + "\n")
    return summary
