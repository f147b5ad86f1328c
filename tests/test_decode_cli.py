"""End-to-end `python -m seq2seq_jax.decode` on a tiny trained workdir, and its failure paths.

One workdir (configs/default.py:tiny, 4 steps, checkpoints 2 and 4 with their eval_loss) is
trained once for the module. Expected outputs come from independent code paths: the library
decoding each line alone, the tokenizer's pieces, sacreBLEU called directly on the written files.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from seq2seq_jax.evaluation import read_alignments_jsonl
from seq2seq_jax.inference import run as run_lib
from seq2seq_jax.inference.translate import BatchTranslator
from seq2seq_jax.inference.workdir import best_step, restore_from_workdir
from seq2seq_jax.training.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
LONG = "Saturday 9 May 2018 " * 4  # 80 characters: over the tiny config's 40 (EOS included).
LINES = [
    "Saturday 9 May 2018",
    "",
    "21/12/57",
    "24. Januar 2035",
    LONG.strip(),
    "2018/05/09",
    "Thursday 23 December 1976",
]
REFS = ["2018-05-09", "", "1957-12-21", "2035-01-24", "2018-05-09", "2018-05-09", "1976-12-23"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def run_module(module: str, *args: str, stdin: str | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "run"
    proc = run_module(
        "seq2seq_jax.train",
        "--config=configs/default.py:tiny",
        f"--workdir={path}",
        "--config.num_train_steps=4",
        "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=2",
        "--config.log_every_steps=2",
        "--config.eval.max_batches=1",
        "--config.eval.task_metric=none",
        "--config.eval.final_split=",
        "--config.checkpoint.best_metric=eval_loss",
        "--config.checkpoint.best_mode=min",
        "--config.progress_bar=False",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def cli_run(workdir, tmp_path_factory) -> dict:
    """One CLI run: stdin -> stdout, beam 3, batches of 2, reference, plots, alignments."""
    out = tmp_path_factory.mktemp("cli")
    (out / "ref.txt").write_text("\n".join(REFS) + "\n")
    proc = run_module(
        "seq2seq_jax.decode",
        f"--workdir={workdir}",
        "--beam_size=3",
        "--batch_size=2",
        f"--reference={out / 'ref.txt'}",
        f"--metrics_file={out / 'metrics.json'}",
        f"--plot_attention={out / 'png'}",
        "--num_plots=3",
        f"--alignments={out / 'align.jsonl'}",
        stdin="\n".join(LINES) + "\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "proc": proc,
        "dir": out,
        "outputs": proc.stdout.split("\n")[:-1],
        "metrics": json.loads((out / "metrics.json").read_text()),
    }


@pytest.mark.slow
def test_one_output_line_per_input_line_in_order(cli_run, workdir):
    outputs = cli_run["outputs"]
    assert cli_run["proc"].stdout.endswith("\n")
    assert len(outputs) == len(LINES)
    assert outputs[1] == ""  # The empty line stays an empty line.
    restored = restore_from_workdir(workdir)
    options = run_lib.DecodeOptions(workdir=str(workdir), beam_size=3)
    search = run_lib.search_config(options, restored)
    translator = BatchTranslator(
        restored.model,
        search,
        source_tokenizer=restored.source_tokenizer,
        target_tokenizer=restored.target_tokenizer,
        max_source_length=40,
        batch_size=1,
    )
    for line, output in zip(LINES, outputs, strict=True):  # Each line alone: a batch of one.
        (alone,) = translator.translate(restored.params, [line])
        assert alone.text == output, line


@pytest.mark.slow
def test_overlength_line_is_truncated_with_a_warning_naming_it(cli_run):
    stderr = cli_run["proc"].stderr
    assert "truncated" in stderr and "line 5" in stderr and "40 tokens" in stderr
    assert "Traceback" not in stderr
    record = read_alignments_jsonl(cli_run["dir"] / "align.jsonl")[4]
    assert len(record.source_tokens) == 40 and record.source_tokens[-1] == "</s>"
    assert "".join(record.source_tokens[:-1]) == LONG[:39]


@pytest.mark.slow
def test_reference_reports_sacrebleu_and_chrf_with_signatures(cli_run):
    outputs, metrics, stderr = cli_run["outputs"], cli_run["metrics"], cli_run["proc"].stderr
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(outputs, [REFS]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(outputs, [REFS]).score)
    exact = 100 * np.mean([o == r for o, r in zip(outputs, REFS, strict=True)])
    assert metrics["exact_match"] == pytest.approx(exact)
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert f"BLEU = {metrics['bleu']:.2f} ({metrics['bleu_signature']})" in stderr
    assert f"chrF = {metrics['chrf']:.2f} ({metrics['chrf_signature']})" in stderr
    assert metrics["checkpoint_step"] == 4 and metrics["beam_size"] == 3
    assert metrics["sentences"] == len(LINES) - 1 and metrics["sentences_per_second"] > 0


@pytest.mark.slow
def test_plots_and_alignments(cli_run):
    pngs = sorted(p.name for p in (cli_run["dir"] / "png").iterdir())
    assert pngs == ["alignment_00000.png", "alignment_00002.png", "alignment_00003.png"]
    for name in pngs:
        assert (cli_run["dir"] / "png" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = read_alignments_jsonl(cli_run["dir"] / "align.jsonl")
    assert [r.index for r in records] == list(range(len(LINES)))
    for line, output, record in zip(LINES, cli_run["outputs"], records, strict=True):
        if not line:
            assert record.source_tokens == [] and record.output_tokens == []
            continue
        source = line[:39]
        assert record.source_tokens == [*source, "</s>"]
        weights = np.asarray(record.weights)
        assert weights.shape == (len(record.output_tokens), len(source) + 1)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)
        # Detokenisation drops EOS: the text is the output pieces before it.
        pieces = record.output_tokens
        assert output == "".join(pieces[:-1] if pieces[-1] == "</s>" else pieces)
        assert "</s>" not in pieces[:-1]


def test_missing_workdir_is_a_one_line_error(tmp_path):
    proc = run_module("seq2seq_jax.decode", f"--workdir={tmp_path / 'absent'}", stdin="x\n")
    assert proc.returncode == 1
    assert (
        error_line(proc) == f"seq2seq_jax.decode: error: workdir does not exist: "
        f"{tmp_path / 'absent'}"
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_missing_and_corrupt_checkpoints_raise_naming_the_path(workdir, tmp_path):
    with pytest.raises(FileNotFoundError, match="step 7"):
        restore_from_workdir(workdir, step=7)
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    for f in (copy / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(str(copy / "checkpoints" / "4"))):
        restore_from_workdir(copy)
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        restore_from_workdir(copy)
    shutil.rmtree(copy / "tokenizer")
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        restore_from_workdir(copy)


@pytest.mark.slow
def test_best_checkpoint_is_chosen_by_the_runs_metric(workdir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    metrics = {
        s: json.loads((copy / "checkpoints" / s / "metrics" / "metrics").read_text())
        for s in ("2", "4")
    }
    assert (
        best_step(copy, "eval_loss", "min")
        == max((-m["eval_loss"], int(s)) for s, m in metrics.items())[1]
    )
    assert (
        best_step(copy, "eval_accuracy", "max")
        == max((m["eval_accuracy"], int(s)) for s, m in metrics.items())[1]
    )
    metrics["2"]["eval_loss"] = -1.0  # Make step 2 the best one.
    (copy / "checkpoints" / "2" / "metrics" / "metrics").write_text(json.dumps(metrics["2"]))
    assert restore_from_workdir(copy, checkpoint="best").step == 2
    with pytest.raises(ValueError, match="no checkpoint .* has a value of 'bleu'"):
        best_step(copy, "bleu", "max")
    with pytest.raises(ValueError, match="either"):
        restore_from_workdir(copy, checkpoint="best", step=2)


@pytest.mark.slow
def test_empty_input_gives_empty_output_and_no_scores(workdir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    summary = run_lib.run_decode(
        run_lib.DecodeOptions(
            workdir=str(workdir),
            input=str(empty),
            reference=str(empty),
            output=str(tmp_path / "out.txt"),
        )
    )
    assert (tmp_path / "out.txt").read_text() == ""
    assert summary["sentences"] == 0 and "bleu" not in summary
    with pytest.raises(ValueError, match="has 1 lines but the input has 0"):
        (tmp_path / "ref.txt").write_text("x\n")
        run_lib.run_decode(
            run_lib.DecodeOptions(
                workdir=str(workdir), input=str(empty), reference=str(tmp_path / "ref.txt")
            )
        )


@pytest.mark.slow
def test_bfloat16_decoding_casts_the_weights_once_and_reports_its_dtype(workdir, tmp_path):
    import jax
    import jax.numpy as jnp

    f32 = restore_from_workdir(workdir)
    bf16 = restore_from_workdir(workdir, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
    assert (bf16.model_config.dtype, bf16.model_config.param_dtype) == ("bfloat16", "bfloat16")
    ids = jnp.asarray([[5, 6, 7, 2, 0, 0], [8, 9, 2, 0, 0, 0]], jnp.int32)
    logits = [r.model.apply({"params": r.params}, ids, ids) for r in (f32, bf16)]
    assert logits[1].dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(logits[0])))
    np.testing.assert_allclose(np.asarray(logits[1]), np.asarray(logits[0]), atol=0.03 * scale)
    source = tmp_path / "in.txt"
    source.write_text("\n".join(LINES) + "\n")
    summary = run_lib.run_decode(
        run_lib.DecodeOptions(
            workdir=str(workdir),
            input=str(source),
            output=str(tmp_path / "out.txt"),
            dtype="bfloat16",
            progress=False,
        )
    )
    assert summary["dtype"] == "bfloat16"
    assert len((tmp_path / "out.txt").read_text().split("\n")[:-1]) == len(LINES)
    with pytest.raises(ValueError, match="floating-point dtype, got 'int32'"):
        restore_from_workdir(workdir, dtype="int32")


# --- n-best lists, scoring given translations, ensembles, streaming, Pharaoh alignments ------
# In-process `run_decode` calls share their compiled programs; references are independent:
# teacher-forced `model.apply` log-probabilities (tests/forced_reference.py), the GNMT penalty
# written out, the argmax of the JSON-lines weights of `cli_run`, the CLI's own outputs.


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def beam_nbest(workdir, cli_run, tmp_path_factory) -> dict:
    """Beam 3 with 3-best lists (JSON lines, then Moses) and Pharaoh alignments."""
    out = tmp_path_factory.mktemp("nbest")
    (out / "in.txt").write_text("\n".join(LINES) + "\n")
    common = dict(
        workdir=str(workdir),
        input=str(out / "in.txt"),
        beam_size=3,
        nbest=3,
        batch_size=8,
        progress=False,
    )
    run_lib.run_decode(
        run_lib.DecodeOptions(
            **common,
            output=str(out / "out.txt"),
            nbest_output=str(out / "nbest.jsonl"),
            alignments=str(out / "align.txt"),
            alignment_format="pharaoh",
        )
    )
    run_lib.run_decode(
        run_lib.DecodeOptions(
            **common,
            output=str(out / "out2.txt"),
            nbest_output=str(out / "nbest.moses"),
            nbest_format="moses",
        )
    )
    return {
        "dir": out,
        "outputs": run_lib.read_lines(str(out / "out.txt")),
        "nbest": _jsonl(out / "nbest.jsonl"),
    }


@pytest.mark.slow
def test_nbest_lists(beam_nbest, cli_run, workdir):
    from forced_reference import forced_scores

    outputs, records = beam_nbest["outputs"], beam_nbest["nbest"]
    assert outputs == cli_run["outputs"]  # The main output is unchanged by --nbest.
    by_index = {}
    for r in records:
        by_index.setdefault(r["index"], []).append(r)
    assert sorted(by_index) == list(range(len(LINES)))
    restored = restore_from_workdir(workdir)
    pairs = []
    for i, hyps in by_index.items():
        assert [h["rank"] for h in hyps] == list(range(1, len(hyps) + 1)) and len(hyps) <= 3
        assert hyps[0]["text"] == outputs[i]  # Rank 1 is the main output.
        assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)
        if not LINES[i]:
            assert hyps == [
                {"index": i, "rank": 1, "text": "", "score": 0.0, "log_prob": 0.0, "length": 0}
            ]
            continue
        source = np.asarray(
            [*restored.source_tokenizer.encode(LINES[i][:39]), restored.source_tokenizer.eos_id]
        )
        for h in hyps:
            assert h["log_prob"] == pytest.approx(
                h["score"] * ((5 + h["length"]) / 6) ** 0.6, rel=1e-6
            )
            ids = restored.target_tokenizer.encode(h["text"])
            ids += [restored.target_tokenizer.eos_id] if h["length"] > len(ids) else []
            assert len(ids) == h["length"]
            pairs.append((source, np.asarray(ids), h["log_prob"]))
    sources, targets, log_probs = zip(*pairs, strict=True)
    np.testing.assert_allclose(
        log_probs,
        forced_scores([(restored.model, restored.params)], sources, targets),
        rtol=1e-5,
        atol=1e-4,
    )
    moses = (beam_nbest["dir"] / "nbest.moses").read_text().splitlines()
    assert len(moses) == len(records)
    for line, r in zip(moses, records, strict=True):  # Parsed back: first and last separators.
        index, rest = line.split(" ||| ", 1)
        text, score = rest.rsplit(" ||| ", 1)
        assert (int(index), text, float(score)) == (r["index"], r["text"], r["score"])


@pytest.mark.slow
def test_pharaoh_alignments_are_the_attention_maxima(beam_nbest, cli_run):
    lines = (beam_nbest["dir"] / "align.txt").read_text().split("\n")[:-1]
    assert len(lines) == len(LINES) and lines[1] == ""
    for line, record in zip(
        lines, read_alignments_jsonl(cli_run["dir"] / "align.jsonl"), strict=True
    ):
        weights = np.asarray(record.weights)
        source = len(record.source_tokens) - 1  # Without EOS.
        output = len(record.output_tokens) - (record.output_tokens[-1:] == ["</s>"])
        expected = [f"{int(np.argmax(weights[j, :source]))}-{j}" for j in range(output)]
        assert line.split() == expected


@pytest.fixture(scope="module")
def greedy_scored(workdir, tmp_path_factory) -> dict:
    """Greedy with its 1-best list (greedy's own scores), then --score_targets of its output."""
    out = tmp_path_factory.mktemp("score")
    (out / "in.txt").write_text("\n".join(LINES) + "\n")
    common = dict(workdir=str(workdir), input=str(out / "in.txt"), beam_size=1, progress=False)
    run_lib.run_decode(
        run_lib.DecodeOptions(
            **common, output=str(out / "greedy.txt"), nbest_output=str(out / "greedy.jsonl")
        )
    )
    summary = run_lib.run_decode(
        run_lib.DecodeOptions(
            **common,
            score_targets=str(out / "greedy.txt"),
            output=str(out / "scores.jsonl"),
            metrics_file=str(out / "metrics.json"),
        )
    )
    run_lib.run_decode(
        run_lib.DecodeOptions(
            **common,
            score_targets=str(out / "greedy.txt"),
            output=str(out / "scores.txt"),
            score_format="plain",
        )
    )
    return {
        "dir": out,
        "greedy": _jsonl(out / "greedy.jsonl"),
        "summary": summary,
        "scores": _jsonl(out / "scores.jsonl"),
        "outputs": run_lib.read_lines(str(out / "greedy.txt")),
    }


@pytest.mark.slow
def test_score_targets_is_forced_decoding(greedy_scored, workdir):
    from forced_reference import forced_scores

    greedy, scores = greedy_scored["greedy"], greedy_scored["scores"]
    assert [s["index"] for s in scores] == list(range(len(LINES)))  # Order and count kept.
    assert scores[1] == {"index": 1, "score": None, "tokens": 0, "mean": None}  # Empty line.
    restored = restore_from_workdir(workdir)
    tok = restored.target_tokenizer
    pairs = []
    for line, g, s in zip(LINES, greedy, scores, strict=True):
        if not line:
            continue
        target = [*tok.encode(g["text"]), tok.eos_id]  # The text's tokens and EOS.
        assert s["tokens"] == len(target) and s["mean"] == pytest.approx(s["score"] / len(target))
        if g["length"] == len(target):  # Greedy ended with EOS: its own score.
            assert s["score"] == pytest.approx(g["score"], rel=1e-5, abs=1e-4)
        source = [*restored.source_tokenizer.encode(line[:39]), restored.source_tokenizer.eos_id]
        pairs.append((np.asarray(source), np.asarray(target), s["score"]))
        # Greedy's own tokens (EOS only if produced) against the same reference.
        pairs.append((np.asarray(source), np.asarray(target[: g["length"]]), g["score"]))
    sources, targets, got = zip(*pairs, strict=True)
    np.testing.assert_allclose(
        got,
        forced_scores([(restored.model, restored.params)], sources, targets),
        rtol=1e-5,
        atol=1e-4,
    )
    plain = (greedy_scored["dir"] / "scores.txt").read_text().split("\n")[:-1]
    assert plain == ["" if s["score"] is None else repr(s["score"]) for s in scores]
    assert greedy_scored["summary"]["mode"] == "score"
    assert greedy_scored["summary"]["sentences"] == len(LINES) - 1


@pytest.mark.slow
def test_score_targets_errors_name_the_file(greedy_scored, workdir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("x\n")
    with pytest.raises(ValueError, match=f"--score_targets {short} has 1 lines but the input"):
        run_lib.run_decode(
            run_lib.DecodeOptions(
                workdir=str(workdir),
                input=str(greedy_scored["dir"] / "in.txt"),
                score_targets=str(short),
            )
        )
    with pytest.raises(ValueError, match="--score_targets needs the sources in --input"):
        run_lib.run_decode(run_lib.DecodeOptions(workdir=str(workdir), score_targets=str(short)))
    with pytest.raises(ValueError, match="--nbest=4 must be between 1 and the beam size 3"):
        run_lib.run_decode(
            run_lib.DecodeOptions(
                workdir=str(workdir),
                input=str(short),
                beam_size=3,
                nbest=4,
                nbest_output=str(tmp_path / "n.jsonl"),
            )
        )


@pytest.mark.slow
def test_ensemble_of_a_model_with_itself_is_that_model(workdir, beam_nbest, tmp_path):
    pair = f"{workdir},{workdir}"
    common = dict(workdir=pair, input=str(beam_nbest["dir"] / "in.txt"), progress=False)
    summary = run_lib.run_decode(
        run_lib.DecodeOptions(
            **common,
            beam_size=3,
            nbest=3,
            batch_size=8,
            output=str(tmp_path / "out.txt"),
            nbest_output=str(tmp_path / "nbest.jsonl"),
        )
    )
    assert summary["ensemble"] == 2 and summary["workdirs"] == [str(workdir)] * 2
    assert run_lib.read_lines(str(tmp_path / "out.txt")) == beam_nbest["outputs"]
    nbest = _jsonl(tmp_path / "nbest.jsonl")
    assert [(r["index"], r["text"]) for r in nbest] == [
        (r["index"], r["text"]) for r in beam_nbest["nbest"]
    ]
    for key in ("score", "log_prob"):
        np.testing.assert_allclose(
            [r[key] for r in nbest], [r[key] for r in beam_nbest["nbest"]], rtol=1e-5, atol=1e-4
        )


@pytest.mark.slow
def test_ensemble_with_another_target_vocabulary_is_a_one_line_error(workdir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    meta_path = next((other / "tokenizer").rglob("tokenizer.json"))
    meta = json.loads(meta_path.read_text())
    meta["chars"] = meta["chars"][::-1]  # Same characters, other ids.
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as info:
        run_lib.run_decode(
            run_lib.DecodeOptions(workdir=f"{workdir},{other}", input=str(meta_path))
        )
    assert str(info.value) == (
        f"--workdir: {workdir} and {other} have different target "
        "vocabularies; an ensemble's models must share them"
    )


@pytest.mark.slow
def test_stream_answers_each_line_before_the_next_arrives(workdir, greedy_scored):
    """A client that waits for line 1's translation before it sends line 2."""
    import queue
    import threading

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seq2seq_jax.decode",
            f"--workdir={workdir}",
            "--stream",
            "--beam_size=1",
            "--batch_size=4",
        ],
        cwd=ROOT,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    received: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [received.put(x) for x in proc.stdout], daemon=True).start()
    try:
        for i in (0, 2, 1):  # Two lines of one bucket width, then an empty line.
            proc.stdin.write(LINES[i] + "\n")
            proc.stdin.flush()
            try:
                answer = received.get(timeout=240)
            except queue.Empty:
                pytest.fail(f"no answer to line {LINES[i]!r}: {proc.poll()=}")
            assert answer == greedy_scored["outputs"][i] + "\n"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert received.empty() and "Traceback" not in proc.stderr.read()


# Issue 15 #6: the exported translator (`python -m seq2seq_jax.export`, `load_exported`,
# `decode --exported`). Expected outputs: the decode CLI's own on the same lines (`cli_run`:
# beam 3, batches of 2; `greedy_scored`: greedy, batches of 64), so the exported programs, their
# batch size (4) and the symbolic batch dimension must all give the in-process outputs.


@pytest.fixture(scope="module")
def exports(workdir, tmp_path_factory) -> dict:
    from seq2seq_jax.export import ExportOptions, export_translator

    out = tmp_path_factory.mktemp("export")
    beam = export_translator(
        ExportOptions(workdir=str(workdir), output=str(out / "beam3"), beam_size=3, batch_size=4)
    )
    greedy = export_translator(
        ExportOptions(
            workdir=str(workdir),
            output=str(out / "greedy"),
            beam_size=1,
            batch_size=4,
            symbolic_batch=True,
        )
    )
    return {"dir": out, "beam3": beam, "greedy": greedy}


_LOAD_AND_TRANSLATE = """
import json, sys
from seq2seq_jax.inference import load_exported
lines = json.loads(sys.argv[1])
outputs = {name: load_exported(path)(lines) for name, path in zip(("beam3", "greedy"),
                                                                  sys.argv[2:], strict=True)}
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "flax"
                or m.startswith("seq2seq_jax.models"))
print(json.dumps({"outputs": outputs, "loaded": loaded}))
"""


@pytest.mark.slow
def test_exported_translator_equals_the_decode_cli_without_model_code(
    exports, cli_run, greedy_scored, workdir
):
    import hashlib

    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOAD_AND_TRANSLATE,
            json.dumps(LINES),
            str(exports["dir"] / "beam3"),
            str(exports["dir"] / "greedy"),
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["loaded"] == []  # Neither Flax nor the model code was imported.
    assert result["outputs"]["beam3"] == cli_run["outputs"]
    assert result["outputs"]["greedy"] == greedy_scored["outputs"]
    manifest = exports["beam3"]
    assert manifest["search"]["beam_size"] == 3 and manifest["batch_size"] == 4
    assert manifest["widths"] == [8, 16, 32, 40] and manifest["platforms"] == ["cpu"]
    assert (
        manifest["models"][0]["config_sha256"]
        == hashlib.sha256((workdir / "config.json").read_bytes()).hexdigest()
    )
    assert exports["greedy"]["programs"][0]["inputs"] == "int32[b,8]"


@pytest.mark.slow
def test_decode_cli_with_exported(exports, cli_run, tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(REFS) + "\n")
    summary = run_lib.run_decode(
        run_lib.DecodeOptions(
            exported=str(exports["dir"] / "beam3"),
            input=str(tmp_path / "in.txt"),
            output=str(tmp_path / "out.txt"),
            reference=str(tmp_path / "ref.txt"),
            metrics_file=str(tmp_path / "metrics.json"),
            progress=False,
        )
    )
    assert run_lib.read_lines(str(tmp_path / "out.txt")) == cli_run["outputs"]
    assert summary["bleu"] == pytest.approx(cli_run["metrics"]["bleu"])
    assert summary["mode"] == "beam3" and summary["sentences"] == len(LINES) - 1
    assert json.loads((tmp_path / "metrics.json").read_text())["sentences_per_second"] > 0
    # Flags that need the model: a one-line error from the CLI.
    proc = run_module(
        "seq2seq_jax.decode", f"--exported={exports['dir'] / 'beam3'}", "--beam_size=2", stdin="x\n"
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert error_line(proc) == (
        "seq2seq_jax.decode: error: --beam_size needs the model "
        "(--workdir): an exported translator takes only --input, "
        "--output, --reference, --metrics_file (its search is set by "
        "python -m seq2seq_jax.export)"
    )
    with pytest.raises(ValueError, match="either --workdir or --exported"):
        run_lib.check_options(run_lib.DecodeOptions(workdir="w", exported="e"))


@pytest.mark.slow
def test_exported_wrong_platform_or_shape_is_a_one_line_error(exports, tmp_path):
    from seq2seq_jax.inference.exported import ExportError, load_exported

    source, length = exports["dir"] / "beam3", exports["beam3"]["search"]["max_length"]
    (tmp_path / "in.txt").write_text("x\n")
    for name, edit, message in [
        (
            "platform",
            lambda m: m.update(platforms=["cuda"]),
            f"export {tmp_path / 'platform'}: exported for platform cuda but JAX runs on cpu here",
        ),
        (
            "shape",
            lambda m: m.update(batch_size=8),
            f"export {tmp_path / 'shape'}: search_s8.jaxexport has the shapes (int32[4,8], "
            f"int32[4], float32[]) -> (int32[4,{length}], int32[4], float32[4])",
        ),
    ]:
        broken = tmp_path / name
        shutil.copytree(source, broken)
        manifest = json.loads((broken / "manifest.json").read_text())
        edit(manifest)
        (broken / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ExportError) as info:
            load_exported(broken)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
        with pytest.raises(ValueError, match="^export "):  # The CLI's one-line error.
            run_lib.run_decode(
                run_lib.DecodeOptions(
                    exported=str(broken),
                    input=str(tmp_path / "in.txt"),
                    output=str(tmp_path / "o.txt"),
                )
            )
