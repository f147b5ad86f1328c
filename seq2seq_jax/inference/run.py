"""The work of `python -m seq2seq_jax.decode`: read lines, translate, write, score, plot.

`run_decode(DecodeOptions(...))` restores a workdir's model (or, with `--workdir=DIR1,DIR2`, an
ensemble), translates the input lines with `BatchTranslator` and writes one output line per
input line, in input order. With a reference it prints sacreBLEU BLEU / chrF (with signatures)
and exact match to stderr; it can also write n-best lists (JSON lines or Moses), alignment
heatmaps (PNG) and alignments (JSON-lines weights or Pharaoh `i-j` pairs). With
`--score_targets` it scores given translations instead (forced decoding); with `--stream` it
translates stdin line by line, writing each output as soon as it is ready. Problems with the
inputs raise `FileNotFoundError` / `ValueError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_jax import evaluation
from seq2seq_jax.inference.translate import (
    BatchTranslator,
    Hypothesis,
    SearchConfig,
    TranslateStats,
    Translation,
)
from seq2seq_jax.inference.workdir import RestoredModel, restore_ensemble, split_workdirs

log = logging.getLogger(__name__)
DEFAULT_BEAM_SIZE = 4  # When the run's config has no eval.beam_size (runs older than it).
_MAX_LISTED = 20  # Line numbers named in the over-length warning.
_VISIBLE = {" ": "␣", "\t": "⇥", "\n": "↵"}  # Plot labels of whitespace tokens.
NBEST_FORMATS = ("jsonl", "moses")
SCORE_FORMATS = ("jsonl", "plain")
ALIGNMENT_FORMATS = ("jsonl", "pharaoh")


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """The CLI's options (field names = flag names; None = take it from the run's config)."""

    workdir: str | None = None  # One workdir, or several separated by commas: an ensemble.
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
    length_ratio: float = SearchConfig.length_ratio
    length_offset: float = SearchConfig.length_offset
    max_source_length: int | None = None
    sample: bool = SearchConfig.sample
    temperature: float = SearchConfig.temperature
    top_k: int = SearchConfig.top_k
    top_p: float = SearchConfig.top_p
    seed: int = SearchConfig.seed
    batch_size: int = 64
    plot_attention: str | None = None
    num_plots: int = 10
    alignments: str | None = None
    progress: bool = True
    dtype: str | None = None  # None: the run's model.dtype.
    nbest: int = SearchConfig.nbest
    nbest_output: str | None = None
    nbest_format: str = NBEST_FORMATS[0]
    score_targets: str | None = None
    score_format: str = SCORE_FORMATS[0]
    alignment_format: str = ALIGNMENT_FORMATS[0]
    stream: bool = False
    exported: str | None = None  # An export directory (python -m seq2seq_jax.export).


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
        line = raw[: e.start].count(b"\n") + 1
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


def _members(restored: RestoredModel | Sequence[RestoredModel]) -> list[RestoredModel]:
    return list(restored) if isinstance(restored, list | tuple) else [restored]


def search_config(
    options: DecodeOptions, restored: RestoredModel | Sequence[RestoredModel]
) -> SearchConfig:
    """Resolves the search options: flags first, then the run's `config.eval`, then defaults
    (an ensemble: the first workdir's config, the smallest length cap of its models)."""
    restored = _members(restored)
    first = restored[0]
    if options.max_length is not None and options.max_length < 1:
        raise ValueError(
            f"--max_length must be >= 1 (tokens, EOS included), got {options.max_length}"
        )
    given = {
        name: getattr(options, name)
        for name in ("beam_size", "alpha", "max_length")
        if getattr(options, name) is not None
    }
    if "beam_size" not in given and (
        options.sample or "beam_size" not in first.config.get("eval", {})
    ):
        given["beam_size"] = 1 if options.sample else DEFAULT_BEAM_SIZE
    search = SearchConfig.from_config(
        first.config,
        **given,
        length_ratio=options.length_ratio,
        length_offset=options.length_offset,
        sample=options.sample,
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        seed=options.seed,
        nbest=options.nbest,
    )
    if not 1 <= search.nbest <= search.beam_size:
        raise ValueError(
            f"--nbest={search.nbest} must be between 1 and the beam size "
            f"{search.beam_size} (--beam_size)"
        )
    cap = model_length_cap(restored)
    if cap is not None and search.max_length > cap:
        if options.max_length:
            raise ValueError(f"--max_length={search.max_length} exceeds the model's max_len {cap}")
        search = dataclasses.replace(search, max_length=cap)
    return search.validate()


def model_length_cap(restored: RestoredModel | Sequence[RestoredModel]) -> int | None:
    """The longest sequence the model (an ensemble: each of its models) can embed (Transformer
    positions), None if unbounded."""
    caps = [r.model.max_length(r.model_config) for r in _members(restored)]
    caps = [c for c in caps if c is not None]
    return min(caps) if caps else None


def max_source_length(
    options: DecodeOptions, restored: RestoredModel | Sequence[RestoredModel]
) -> int:
    """`--max_source_length`, else the run's `data.max_source_length` (EOS included)."""
    length = options.max_source_length or int(_members(restored)[0].config.data.max_source_length)
    cap = model_length_cap(restored)
    if cap is not None and length > cap:
        raise ValueError(f"--max_source_length={length} exceeds the model's max_len {cap}")
    return length


def _warn_truncated(
    translations: Sequence[Translation], limit: int, *, first_index: int = 0
) -> None:
    _warn_truncated_lines(
        [i + 1 for i, t in enumerate(translations, first_index) if t.truncated], limit
    )


def _warn_truncated_lines(lines: Sequence[int], limit: int) -> None:
    """One warning naming the (1-based) input lines truncated to `limit` tokens."""
    if not lines:
        return
    listed = ", ".join(map(str, lines[:_MAX_LISTED])) + (
        ", ..." if len(lines) > _MAX_LISTED else ""
    )
    log.warning(
        "%d input line(s) longer than %d tokens (EOS included) were truncated to it: line %s",
        len(lines),
        limit,
        listed,
    )


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU BLEU and chrF with their signatures, and exact match (percent)."""
    bleu = evaluation.corpus_bleu(hypotheses, references)
    chrf = evaluation.corpus_chrf(hypotheses, references)
    return {
        "bleu": bleu.score,
        "bleu_signature": bleu.signature,
        "chrf": chrf.score,
        "chrf_signature": chrf.signature,
        "exact_match": evaluation.exact_match(hypotheses, references),
    }


def _label(piece: str) -> str:
    """A readable tick label: whitespace made visible, '$' escaped from mathtext."""
    piece = "".join(_VISIBLE.get(c, c) for c in piece) if not piece.strip() else piece
    return piece.replace("$", r"\$")


def _pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.id_to_piece(int(i)) for i in ids]


def plot_alignments(
    translations: Sequence[Translation],
    restored: RestoredModel,
    directory: str,
    indices: Sequence[int],
    sources: Sequence[str],
) -> list[str]:
    """Writes `DIRECTORY/alignment_<index>.png` (0-based input index) for each index."""
    paths = []
    for i in indices:
        t = translations[i]
        title = sources[i] if len(sources[i]) <= 60 else sources[i][:57] + "..."
        paths.append(
            evaluation.plot_attention(
                t.attention,
                [_label(p) for p in _pieces(restored.source_tokenizer, t.source_ids)],
                [_label(p) for p in _pieces(restored.target_tokenizer, t.output_ids)],
                Path(directory) / f"alignment_{i:05d}.png",
                title=f"line {i + 1}: {_label(title)}",
            )
        )
    return paths


def alignment_records(
    translations: Sequence[Translation], restored: RestoredModel, *, first_index: int = 0
) -> Iterator[evaluation.AlignmentRecord]:
    """One `AlignmentRecord` per input line (empty lines: no tokens, weights [0, 0])."""
    for i, t in enumerate(translations, first_index):
        weights = t.attention if t.attention is not None else np.zeros((0, 0), np.float32)
        yield evaluation.AlignmentRecord(
            i,
            _pieces(restored.source_tokenizer, t.source_ids),
            _pieces(restored.target_tokenizer, t.output_ids),
            weights,
        )


def _attention_indices(
    options: DecodeOptions, sources: Sequence[str]
) -> tuple[range | list[int], list[int]]:
    """(indices whose attention is kept, indices plotted: the first N non-empty lines)."""
    plotted = []
    if options.plot_attention:
        plotted = [i for i, s in enumerate(sources) if s.strip()][: max(options.num_plots, 0)]
    keep = range(len(sources)) if options.alignments else plotted
    return keep, plotted


def hard_alignment(t: Translation, eos_id: int) -> list[tuple[int, int]]:
    """Pharaoh pairs `(i, j)` of a translation: output token j (0-based, EOS excluded) is aligned
    to the source token i (0-based, EOS excluded) it attends to most. Positions count the
    tokenizers' pieces (subwords or characters), not words."""
    if t.attention is None:
        return []
    source = len(t.source_ids) - int(bool(len(t.source_ids)) and t.source_ids[-1] == eos_id)
    output = len(t.output_ids) - int(bool(len(t.output_ids)) and t.output_ids[-1] == eos_id)
    if source < 1 or output < 1:
        return []
    best = np.argmax(np.asarray(t.attention)[:output, :source], axis=1)
    return [(int(i), j) for j, i in enumerate(best)]


def alignment_lines(
    translations: Sequence[Translation],
    restored: RestoredModel,
    alignment_format: str,
    *,
    first_index: int = 0,
) -> list[str]:
    """The `--alignments` file's lines: JSON-lines weights, or one Pharaoh line `i-j ...` per
    input line (an empty input gives an empty line)."""
    if alignment_format == "pharaoh":
        eos = restored.source_tokenizer.eos_id
        return [" ".join(f"{i}-{j}" for i, j in hard_alignment(t, eos)) for t in translations]
    return [r.to_json() for r in alignment_records(translations, restored, first_index=first_index)]


def hypotheses(t: Translation) -> list[Hypothesis]:
    """A translation's n-best list: `t.hypotheses`, or its one output."""
    if t.hypotheses is not None:
        return t.hypotheses
    return [Hypothesis(t.text, t.output_ids, t.score, t.log_prob)]


def nbest_lines(
    translations: Sequence[Translation], nbest_format: str, *, first_index: int = 0
) -> list[str]:
    """The `--nbest_output` lines: per input line (0-based `index`), its hypotheses best first,
    as JSON (`index, rank, text, score, log_prob, length`) or Moses `index ||| text ||| score`.
    An empty input line has one empty hypothesis of score 0."""
    lines = []
    for index, t in enumerate(translations, first_index):
        for rank, h in enumerate(hypotheses(t), 1):
            if nbest_format == "moses":
                lines.append(f"{index} ||| {h.text} ||| {h.score!r}")
            else:
                lines.append(
                    json.dumps(
                        {
                            "index": index,
                            "rank": rank,
                            "text": h.text,
                            "score": h.score,
                            "log_prob": h.log_prob,
                            "length": int(len(h.output_ids)),
                        },
                        ensure_ascii=False,
                    )
                )
    return lines


def score_lines(scored: Sequence[Translation], score_format: str) -> list[str]:
    """The `--score_targets` output: per line `{"index", "score", "tokens", "mean"}` (an empty
    source: score and mean null, tokens 0) or, plain, the score alone (empty source: "")."""
    lines = []
    for index, t in enumerate(scored):
        tokens = int(len(t.output_ids))
        if score_format == "plain":
            lines.append(repr(t.score) if tokens else "")
            continue
        score = t.score if tokens else None
        lines.append(
            json.dumps(
                {
                    "index": index,
                    "score": score,
                    "tokens": tokens,
                    "mean": t.score / tokens if tokens else None,
                }
            )
        )
    return lines


def _report(
    stats: TranslateStats, search: SearchConfig | None, restored: Sequence[RestoredModel]
) -> dict[str, Any]:
    first = restored[0]
    mode = search.mode if search is not None else "score"
    summary = {
        "checkpoint_step": first.step,
        "mode": mode,
        "beam_size": search.beam_size if search else None,
        "alpha": search.alpha if search else None,
        "max_length": search.max_length if search else None,
        "dtype": first.model_config.dtype,
        "sentences": stats.sentences,
        "programs_compiled": stats.programs_compiled,
        "compile_seconds": stats.compile_seconds,
        "decode_seconds": stats.decode_seconds,
        "sentences_per_second": stats.sentences_per_second,
    }
    if search is not None:
        summary["nbest"] = search.nbest
    if len(restored) > 1:
        summary.update(ensemble=len(restored), checkpoint_steps=[r.step for r in restored])
    log.info(
        "%s %d sentences (%s) with step %d%s in %.2f s: %.1f sentences/s "
        "(+%.1f s compiling %d programs)",
        "scored" if search is None else "decoded",
        stats.sentences,
        mode,
        first.step,
        f" (an ensemble of {len(restored)})" if len(restored) > 1 else "",
        stats.decode_seconds,
        stats.sentences_per_second,
        stats.compile_seconds,
        stats.programs_compiled,
    )
    return summary


def _print_scores(metrics: dict[str, Any]) -> None:
    print(f"BLEU = {metrics['bleu']:.2f} ({metrics['bleu_signature']})", file=sys.stderr)
    print(f"chrF = {metrics['chrf']:.2f} ({metrics['chrf_signature']})", file=sys.stderr)
    print(f"exact match = {metrics['exact_match']:.2f}%", file=sys.stderr)


# Options that --exported may take; the others need the model or change the compiled search.
EXPORTED_OPTIONS = ("exported", "input", "output", "reference", "metrics_file", "progress")


def check_options(options: DecodeOptions) -> None:
    """Rejects option combinations that mean nothing, naming the flags (ValueError)."""
    if options.exported is not None:
        if options.workdir is not None:
            raise ValueError("give either --workdir or --exported, not both")
        defaults = DecodeOptions()
        for field in dataclasses.fields(DecodeOptions):
            if field.name not in EXPORTED_OPTIONS and (
                getattr(options, field.name) != getattr(defaults, field.name)
            ):
                raise ValueError(
                    f"--{field.name} needs the model (--workdir): an exported "
                    "translator takes only --input, --output, --reference, "
                    "--metrics_file (its search is set by python -m "
                    "seq2seq_jax.export)"
                )
        return
    if options.workdir is None:
        raise ValueError("give --workdir=DIR (a training run) or --exported=EXPORT_DIR")
    formats = (
        ("nbest_format", NBEST_FORMATS),
        ("score_format", SCORE_FORMATS),
        ("alignment_format", ALIGNMENT_FORMATS),
    )
    for name, choices in formats:
        if getattr(options, name) not in choices:
            raise ValueError(
                f"--{name} must be one of {list(choices)}, got {getattr(options, name)!r}"
            )
    if options.nbest > 1 and not options.nbest_output:
        raise ValueError(
            f"--nbest={options.nbest} writes its lists to --nbest_output=FILE: give one"
        )
    if options.alignment_format != ALIGNMENT_FORMATS[0] and not options.alignments:
        raise ValueError(
            f"--alignment_format={options.alignment_format} formats the --alignments=FILE: give one"
        )
    if options.score_targets:
        if options.input in (None, "-"):
            raise ValueError("--score_targets needs the sources in --input=FILE")
        for name in ("reference", "nbest_output", "stream"):
            if getattr(options, name):
                raise ValueError(
                    f"--{name} does not go with --score_targets (scoring searches nothing)"
                )
    if options.stream:
        if options.input not in (None, "-"):
            raise ValueError("--stream reads stdin line by line: give it without --input")
        for name in ("reference", "plot_attention"):
            if getattr(options, name):
                raise ValueError(f"--{name} does not go with --stream")


def _restore(options: DecodeOptions) -> list[RestoredModel]:
    return restore_ensemble(
        split_workdirs(options.workdir),
        checkpoint=options.checkpoint,
        step=options.checkpoint_step,
        dtype=options.dtype,
        average=options.average_checkpoints,
    )


def _translator(
    options: DecodeOptions, restored: Sequence[RestoredModel], search: SearchConfig
) -> tuple[BatchTranslator, Any, int]:
    """(translator, params, source limit) of one model or an ensemble (several workdirs)."""
    limit = max_source_length(options, restored)
    first = restored[0]
    if len(restored) == 1:
        model, params = first.model, first.params
    else:
        model, params = [r.model for r in restored], [r.params for r in restored]
    translator = BatchTranslator(
        model,
        search,
        source_tokenizer=first.source_tokenizer,
        target_tokenizer=first.target_tokenizer,
        max_source_length=limit,
        batch_size=options.batch_size,
    )
    return translator, params, limit


def _run_fields(options: DecodeOptions) -> dict[str, Any]:
    """The summary's fields that record which checkpoints of which workdirs were used."""
    fields = {"checkpoint": options.checkpoint, "average_checkpoints": options.average_checkpoints}
    workdirs = split_workdirs(options.workdir)
    if len(workdirs) > 1:
        fields["workdirs"] = workdirs
    return fields


def _write_metrics(options: DecodeOptions, summary: dict[str, Any]) -> None:
    if options.metrics_file:
        Path(options.metrics_file).parent.mkdir(parents=True, exist_ok=True)
        Path(options.metrics_file).write_text(json.dumps(summary, indent=2) + "\n")


def run_decode(options: DecodeOptions) -> dict[str, Any]:
    """Translates `options.input` with the workdir's model; see the module docstring.

    Returns:
      The run's summary: checkpoint step, search settings, timing and (with a reference) the
      scores, as also written to `options.metrics_file`.

    Raises:
      FileNotFoundError: a missing workdir, checkpoint, input or reference file.
      ValueError: a bad option, a corrupt checkpoint, or a reference whose line count differs.
    """
    check_options(options)
    if options.exported is not None:
        return run_exported(options)
    if options.stream:
        return run_stream(options)
    if options.score_targets:
        return run_score(options)
    sources = read_lines(options.input)
    references = read_lines(options.reference) if options.reference else None
    if references is not None and len(references) != len(sources):
        raise ValueError(
            f"--reference {options.reference} has {len(references)} lines but the "
            f"input has {len(sources)}"
        )
    restored = _restore(options)
    search = search_config(options, restored)
    translator, params, limit = _translator(options, restored, search)
    keep, plotted = _attention_indices(options, sources)
    translations = translator.translate(
        params, sources, attention_for=keep, progress=options.progress
    )
    _warn_truncated(translations, limit)
    hypotheses_ = [t.text for t in translations]
    write_lines(options.output, hypotheses_)
    summary = _report(translator.stats, search, restored)
    summary.update(**_run_fields(options))
    if references is not None and sources:
        summary.update(score(hypotheses_, references))
        _print_scores(summary)
    elif references is not None:
        log.warning("the input is empty: no BLEU/chrF to report")
    if options.nbest_output:
        write_lines(options.nbest_output, nbest_lines(translations, options.nbest_format))
    _write_attention(options, translations, restored[0], plotted, sources)
    _write_metrics(options, summary)
    return summary


def run_exported(options: DecodeOptions) -> dict[str, Any]:
    """`--exported=EXPORT_DIR`: translates `options.input` with `load_exported`'s translator
    (no model code runs), writes one line per input line and, with a reference, the scores."""
    from seq2seq_jax.inference.exported import load_exported

    sources = read_lines(options.input)
    references = read_lines(options.reference) if options.reference else None
    if references is not None and len(references) != len(sources):
        raise ValueError(
            f"--reference {options.reference} has {len(references)} lines but the "
            f"input has {len(sources)}"
        )
    translator = load_exported(options.exported)
    outputs = translator(sources)
    _warn_truncated_lines([i + 1 for i in translator.truncated], translator.max_source_length)
    write_lines(options.output, outputs)
    stats, manifest, search = translator.stats, translator.manifest, translator.search
    summary = {
        "exported": options.exported,
        "mode": search.mode,
        "beam_size": search.beam_size,
        "alpha": search.alpha,
        "max_length": search.max_length,
        "dtype": manifest["dtype"],
        "checkpoint_steps": [m["checkpoint_step"] for m in manifest["models"]],
        "sentences": stats.sentences,
        "programs_compiled": stats.programs_compiled,
        "compile_seconds": stats.compile_seconds,
        "decode_seconds": stats.decode_seconds,
        "sentences_per_second": stats.sentences_per_second,
    }
    log.info(
        "decoded %d sentences (%s, exported) in %.2f s: %.1f sentences/s (+%.1f s "
        "compiling %d programs)",
        stats.sentences,
        search.mode,
        stats.decode_seconds,
        stats.sentences_per_second,
        stats.compile_seconds,
        stats.programs_compiled,
    )
    if references is not None and sources:
        summary.update(score(outputs, references))
        _print_scores(summary)
    elif references is not None:
        log.warning("the input is empty: no BLEU/chrF to report")
    _write_metrics(options, summary)
    return summary


def run_score(options: DecodeOptions) -> dict[str, Any]:
    """`--score_targets`: the log-probability of each given target line under the model(s),
    written as `score_lines` to `--output` (stdout by default); see `BatchTranslator.score`."""
    sources = read_lines(options.input)
    targets = read_lines(options.score_targets)
    if len(targets) != len(sources):
        raise ValueError(
            f"--score_targets {options.score_targets} has {len(targets)} lines but "
            f"the input {options.input} has {len(sources)}"
        )
    restored = _restore(options)
    search = search_config(dataclasses.replace(options, nbest=1), restored)  # Validates lengths.
    translator, params, limit = _translator(
        options, restored, dataclasses.replace(search, beam_size=1, sample=False)
    )
    keep, plotted = _attention_indices(options, sources)
    try:
        scored = translator.score(
            params, sources, targets, attention_for=keep, progress=options.progress
        )
    except ValueError as e:
        raise ValueError(f"--score_targets {options.score_targets}, {e}") from None
    _warn_truncated(scored, limit)
    write_lines(options.output, score_lines(scored, options.score_format))
    summary = _report(translator.stats, None, restored)
    summary.update(**_run_fields(options), tokens=int(sum(len(t.output_ids) for t in scored)))
    _write_attention(options, scored, restored[0], plotted, sources)
    _write_metrics(options, summary)
    return summary


def _write_attention(
    options: DecodeOptions,
    translations: Sequence[Translation],
    restored: RestoredModel,
    plotted: Sequence[int],
    sources: Sequence[str],
) -> None:
    """The heatmaps of `plotted` (`--plot_attention`) and every line's alignments
    (`--alignments`, JSON lines or `--alignment_format`), for decoding and scoring alike."""
    if plotted:
        plot_alignments(translations, restored, options.plot_attention, plotted, sources)
    if options.alignments and options.alignment_format == "jsonl":
        evaluation.write_alignments_jsonl(
            options.alignments, alignment_records(translations, restored)
        )
    elif options.alignments:
        write_lines(
            options.alignments, alignment_lines(translations, restored, options.alignment_format)
        )


class _Sink:
    """An output file (or stdout for None / '-') written line by line, flushed each time."""

    def __init__(self, path: str | None) -> None:
        if path in (None, "-"):
            self._file, self._close = sys.stdout.buffer, False
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file, self._close = open(path, "wb"), True  # noqa: SIM115

    def write(self, lines: Sequence[str]) -> None:
        self._file.write("".join(line + "\n" for line in lines).encode("utf-8"))
        self._file.flush()

    def close(self) -> None:
        if self._close:
            self._file.close()


_END = object()  # The reader's end-of-input mark.


def _read_stdin_lines(lines: queue.Queue) -> None:
    """Puts (arrival time, line) for each stdin line, then an error or `_END`."""
    number = 0
    try:
        for raw in iter(sys.stdin.buffer.readline, b""):
            number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                lines.put(ValueError(f"<stdin>, line {number}: not valid UTF-8 ({e.reason})"))
                return
            lines.put((time.perf_counter(), text.removesuffix("\n").removesuffix("\r")))
    except OSError as e:
        lines.put(e)
        return
    lines.put(_END)


def run_stream(options: DecodeOptions) -> dict[str, Any]:
    """`--stream`: reads stdin line by line and writes each output line (and its n-best and
    alignment lines) flushed as soon as it is ready. Lines that arrived while a batch was being
    translated are translated together in the next batch (at most `--batch_size`), so another
    program can talk to the decoder through a pipe. Returns the summary, with the latency of
    each line (arrival to written output) in `latency_seconds` (first, median, max)."""
    restored = _restore(options)
    search = search_config(options, restored)
    translator, params, limit = _translator(options, restored, search)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_stdin_lines, args=(lines,), daemon=True).start()
    output = _Sink(options.output)
    nbest = _Sink(options.nbest_output) if options.nbest_output else None
    alignments = _Sink(options.alignments) if options.alignments else None
    total, latencies, index, finished = TranslateStats(), [], 0, False
    try:
        while not finished:
            items = [lines.get()]
            while (
                len(items) < options.batch_size
                and not isinstance(items[-1], Exception)
                and items[-1] is not _END
            ):
                try:
                    items.append(lines.get_nowait())
                except queue.Empty:
                    break
            error = next((x for x in items if isinstance(x, Exception)), None)
            finished = error is not None or items[-1] is _END
            received = [x for x in items if isinstance(x, tuple)]
            if received:
                texts = [text for _, text in received]
                keep = range(len(texts)) if options.alignments else ()
                translations = translator.translate(
                    params, texts, attention_for=keep, first_index=index
                )
                _warn_truncated(translations, limit, first_index=index)
                output.write([t.text for t in translations])
                if nbest is not None:
                    nbest.write(nbest_lines(translations, options.nbest_format, first_index=index))
                if alignments is not None:
                    alignments.write(
                        alignment_lines(
                            translations, restored[0], options.alignment_format, first_index=index
                        )
                    )
                now = time.perf_counter()
                latencies.extend(now - arrival for arrival, _ in received)
                index += len(texts)
                stats = translator.stats
                total.sentences += stats.sentences
                total.batches += stats.batches
                total.programs_compiled += stats.programs_compiled
                total.compile_seconds += stats.compile_seconds
                total.decode_seconds += stats.decode_seconds
            if error is not None:
                raise error
    finally:
        for sink in (output, nbest, alignments):
            if sink is not None:
                sink.close()
    summary = _report(total, search, restored)
    summary.update(
        **_run_fields(options),
        lines=index,
        latency_seconds={
            "first": latencies[0] if latencies else None,
            "median": float(np.median(latencies)) if latencies else None,
            "max": max(latencies) if latencies else None,
        },
    )
    if latencies:
        log.info(
            "stream: %d lines, latency first %.3f s, median %.3f s, max %.3f s",
            index,
            latencies[0],
            np.median(latencies),
            max(latencies),
        )
    _write_metrics(options, summary)
    return summary
