"""End-to-end `python -m seq2seq_jax.train` runs of configs/default.py:tiny and its input errors."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import configs.default
from seq2seq_jax.training import loop

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, devices=1, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "-m", "seq2seq_jax.train", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_line(proc):
    """The CLI's one-line error (last non-empty stderr line)."""
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
def test_tiny_config_writes_metrics_events_config_and_curves(tmp_path):
    workdir = tmp_path / "run"
    # 80 train examples, some longer than 24 tokens: the 96 rows of 6 steps read past an epoch.
    proc = run_cli(
        "--config=configs/default.py:tiny",
        f"--workdir={workdir}",
        "--config.num_train_steps=6",
        "--config.log_every_steps=3",
        "--config.eval_every_steps=6",
        "--config.checkpoint_every_steps=6",
        "--config.progress_bar=False",
        "--config.data.num_train_examples=80",
        "--config.data.max_source_length=24",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The data pipeline's log lines reach the CLI's stderr (INFO, as the loop's own lines).
    assert re.search(
        r"dates:train: epoch 1 read \(process 0\): [1-9]\d* of \d+ examples so "
        r"far over-long \(dropped\)",
        proc.stderr,
    ), proc.stderr[-3000:]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [3, 6]
    assert all(r["train_loss"] > 0 and r["train_tokens_per_second"] > 0 for r in train)
    evals = [r for r in records if "eval_loss" in r]
    assert evals and evals[-1]["step"] == 6
    for key in ("eval_perplexity", "eval_accuracy", "eval_exact_match"):
        assert key in evals[-1]
    assert any("test_exact_match" in r for r in records)  # eval.final_split = "test"
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert (workdir / "learning_curves.png").stat().st_size > 1000
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["num_train_steps"] == 6 and saved["model"]["name"] == "rnnsearch"
    assert (workdir / "checkpoints" / "6").is_dir()


def test_unknown_config_key_is_a_one_line_error(tmp_path):
    proc = run_cli(
        "--config=configs/default.py:tiny", f"--workdir={tmp_path}", "--config.no_such_key=3"
    )
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr
    assert "Traceback" not in proc.stderr


def tiny_config(**overrides):
    config = configs.default.get_config("tiny")
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def test_unknown_model_name_and_unwritable_workdir_fail_during_setup(tmp_path):
    # The same path the CLI takes (it prints SetupError as one line and exits 1), in-process.
    with pytest.raises(loop.SetupError, match="model.name='lstm_of_doom' is not a model family"):
        loop.setup_experiment(tiny_config(**{"model.name": "lstm_of_doom"}), str(tmp_path / "a"))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(loop.SetupError, match="is not writable") as info:
        loop.setup_experiment(tiny_config(), str(blocker / "run"))
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)


def test_setup_experiment_without_staging_leaves_no_temporary_directory(tmp_path, monkeypatch):
    # Without `staging`, the tokenizer goes to a temporary directory that setup_experiment
    # removes itself, whether it returns or raises (it used to leak one per call).
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    with pytest.raises(loop.SetupError, match="lstm_of_doom"):
        loop.setup_experiment(tiny_config(**{"model.name": "lstm_of_doom"}), str(tmp_path / "a"))
    exp = loop.setup_experiment(tiny_config(), str(tmp_path / "b"))
    # The tokenizers stay usable after their directory is gone (they live in memory).
    text = "2024-01-31"
    assert exp.source_tokenizer.decode(exp.source_tokenizer.encode(text)) == text
    leaked = [p.name for p in system_tmp.iterdir() if p.name.startswith("seq2seq_jax.")]
    assert leaked == []


def test_batch_size_not_divisible_by_device_count(tmp_path):
    proc = run_cli(
        "--config=configs/default.py:tiny",
        f"--workdir={tmp_path}",
        "--config.batch_size=12",
        devices=8,
    )
    assert proc.returncode == 1
    line = error_line(proc)
    assert "batch_size=12" in line and "device count 8" in line, proc.stderr[-2000:]
