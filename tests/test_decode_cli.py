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
LINES = ["Saturday 9 May 2018", "", "21/12/57", "24. Januar 2035", LONG.strip(), "2018/05/09",
         "Thursday 23 December 1976"]
REFS = ["2018-05-09", "", "1957-12-21", "2035-01-24", "2018-05-09", "2018-05-09", "1976-12-23"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")


def run_module(module: str, *args: str, stdin: str | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(),
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("decode") / "run"
    proc = run_module("seq2seq_jax.train", "--config=configs/default.py:tiny",
                      f"--workdir={path}", "--config.num_train_steps=4",
                      "--config.checkpoint_every_steps=2", "--config.eval_every_steps=2",
                      "--config.log_every_steps=2", "--config.eval.max_batches=1",
                      "--config.eval.task_metric=none", "--config.eval.final_split=",
                      "--config.checkpoint.best_metric=eval_loss",
                      "--config.checkpoint.best_mode=min", "--config.progress_bar=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def cli_run(workdir, tmp_path_factory) -> dict:
    """One CLI run: stdin -> stdout, beam 3, batches of 2, reference, plots, alignments."""
    out = tmp_path_factory.mktemp("cli")
    (out / "ref.txt").write_text("\n".join(REFS) + "\n")
    proc = run_module("seq2seq_jax.decode", f"--workdir={workdir}", "--beam_size=3",
                      "--batch_size=2", f"--reference={out / 'ref.txt'}",
                      f"--metrics_file={out / 'metrics.json'}", f"--plot_attention={out / 'png'}",
                      "--num_plots=3", f"--alignments={out / 'align.jsonl'}",
                      stdin="\n".join(LINES) + "\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"proc": proc, "dir": out, "outputs": proc.stdout.split("\n")[:-1],
            "metrics": json.loads((out / "metrics.json").read_text())}


@pytest.mark.slow
def test_one_output_line_per_input_line_in_order(cli_run, workdir):
    outputs = cli_run["outputs"]
    assert cli_run["proc"].stdout.endswith("\n")
    assert len(outputs) == len(LINES)
    assert outputs[1] == ""  # The empty line stays an empty line.
    restored = restore_from_workdir(workdir)
    options = run_lib.DecodeOptions(workdir=str(workdir), beam_size=3)
    search = run_lib.search_config(options, restored)
    translator = BatchTranslator(restored.model, search,
                                 source_tokenizer=restored.source_tokenizer,
                                 target_tokenizer=restored.target_tokenizer,
                                 max_source_length=40, batch_size=1)
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
    assert error_line(proc) == f"seq2seq_jax.decode: error: workdir does not exist: " \
                               f"{tmp_path / 'absent'}"
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
    metrics = {s: json.loads((copy / "checkpoints" / s / "metrics" / "metrics").read_text())
               for s in ("2", "4")}
    assert best_step(copy, "eval_loss", "min") == max(
        (-m["eval_loss"], int(s)) for s, m in metrics.items())[1]
    assert best_step(copy, "eval_accuracy", "max") == max(
        (m["eval_accuracy"], int(s)) for s, m in metrics.items())[1]
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
    summary = run_lib.run_decode(run_lib.DecodeOptions(
        workdir=str(workdir), input=str(empty), reference=str(empty),
        output=str(tmp_path / "out.txt")))
    assert (tmp_path / "out.txt").read_text() == ""
    assert summary["sentences"] == 0 and "bleu" not in summary
    with pytest.raises(ValueError, match="has 1 lines but the input has 0"):
        (tmp_path / "ref.txt").write_text("x\n")
        run_lib.run_decode(run_lib.DecodeOptions(workdir=str(workdir), input=str(empty),
                                                 reference=str(tmp_path / "ref.txt")))


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
    summary = run_lib.run_decode(run_lib.DecodeOptions(
        workdir=str(workdir), input=str(source), output=str(tmp_path / "out.txt"),
        dtype="bfloat16", progress=False))
    assert summary["dtype"] == "bfloat16"
    assert len((tmp_path / "out.txt").read_text().split("\n")[:-1]) == len(LINES)
    with pytest.raises(ValueError, match="floating-point dtype, got 'int32'"):
        restore_from_workdir(workdir, dtype="int32")
