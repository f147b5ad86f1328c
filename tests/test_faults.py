"""Fault injection at CI size: every scenario of `benchmarks/soak.py` (the soak runs them longer).

Each scenario drives real `python -m seq2seq_jax.train` processes of configs/default.py:tiny and
returns the promises it found broken; none may be, and no byte of a committed checkpoint may be
lost. Below them, the single failure paths: a config file that raises, a malformed config.json,
presets as model.name, a rejected resume naming the keys, and no unpickling anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import soak

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cache(root) -> Path:
    return root / "jax_cache"


def _check(rec: dict) -> None:
    assert rec["failures"] == [], json.dumps(rec, indent=1)
    assert rec["bytes_lost"] == 0


@pytest.mark.slow
def test_sigkill_five_times_at_every_phase_then_resume_matches_uninterrupted(root, cache):
    rec = soak.kills_scenario(root, cache, kills=5, seed=1)
    _check(rec)
    assert rec["faults"] == 5 and rec["completed_runs"] >= 1
    assert rec["phases"] == {phase: 1 for phase in soak.KILL_PHASES}


@pytest.mark.slow
def test_disk_full_fails_cleanly_and_older_checkpoints_survive(root, cache):
    rec = soak.disk_full_scenario(root, cache)
    _check(rec)
    assert rec["runs_survived"] == 1


@pytest.mark.slow
def test_second_trainer_on_a_workdir_in_use_exits_at_once(root, cache):
    rec = soak.concurrent_scenario(root, cache)
    _check(rec)


@pytest.mark.slow
def test_rejected_reruns_change_no_byte_of_a_trained_workdir(root, cache):
    rec = soak.rejected_rerun_scenario(root, cache)
    _check(rec)
    assert rec["faults"] == 4 and rec["runs_survived"] == 1


@pytest.mark.slow
def test_nonfinite_step_under_abort_skip_and_ignore(root, cache):
    rec = soak.nonfinite_scenario(root, cache, nan_step=5)
    _check(rec)
    assert rec["runs_survived"] == 3


@pytest.mark.slow
def test_nonfinite_abort_in_a_two_process_run_stops_both_alike(root, cache):
    rec = soak.nonfinite_two_process_scenario(root, cache, nan_step=5)
    _check(rec)
    assert rec["runs_survived"] == 2


def test_kill_choices_can_all_still_fire(tmp_path):
    import random

    rng = random.Random(0)
    seen = {soak.next_kill(rng, tmp_path / "fresh").split(":")[0] for _ in range(200)}
    assert seen == set(soak.KILL_PHASES)


# --- Single failure paths. ---------------------------------------------------------------


def run_cli(*args: str, module: str = "seq2seq_jax.train", stdin: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "body,kind",
    [
        ("def get_config(arg=None):\n    return 1 / 0\n", "ZeroDivisionError"),
        ("def get_config(arg=None):\n    raise RuntimeError('no GPU here')\n", "RuntimeError"),
        ("import no_such_module_xyz\n", "ModuleNotFoundError"),
        ("def get_config(arg=None):\n    return (\n", "SyntaxError"),
        ("def get_config(arg=None):\n    raise ValueError('bad variant')\n", "ValueError"),
    ],
)
def test_config_file_that_raises_is_a_one_line_error(tmp_path, body, kind):
    config = tmp_path / "broken.py"
    config.write_text("# A user's config.\n" + body)
    proc = run_cli(f"--config={config}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"seq2seq_jax.train: error: {config}: {kind}")
    assert "(line " in lines[0]
    assert not (tmp_path / "w").exists()


def test_malformed_config_json_names_the_file(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"model":\n')
    proc = run_cli(f"--workdir={workdir}", module="seq2seq_jax.decode", stdin="x\n")
    assert proc.returncode != 0
    line = [x for x in proc.stderr.splitlines() if x.strip()][-1]
    assert str(workdir / "config.json") in line and "Traceback" not in proc.stderr


def test_decode_max_length_zero_is_rejected(tmp_path, root, cache):
    workdir = soak.reference_run(root, cache)
    proc = run_cli(
        f"--workdir={workdir}",
        "--max_length=0",
        module="seq2seq_jax.decode",
        stdin="Saturday 9 May 2018\n",
    )
    assert proc.returncode != 0
    assert "--max_length must be >= 1" in proc.stderr


def test_resume_with_changed_model_keys_is_refused_naming_them(tmp_path, root, cache):
    from seq2seq_jax.training import experiment

    workdir = soak.reference_run(root, cache)
    saved = experiment.load_config(workdir)
    changed = experiment.load_config(workdir)
    changed.model.emb_dim = 24
    changed.data.vocab_size = 99
    changed.num_train_steps = 100  # Safe to change.
    changed.model.dropout_rate = 0.3  # Safe to change.
    conflicts = experiment.resume_conflicts(saved, changed)
    assert conflicts == ["data.vocab_size: 8000 -> 99", "model.emb_dim: 16 -> 24"]
    with pytest.raises(ValueError, match="model.emb_dim: 16 -> 24"):
        experiment.check_resume(changed, workdir, has_checkpoints=True)


def test_config_history_keeps_every_earlier_version(tmp_path):
    from seq2seq_jax.training import experiment

    config = experiment.base_config("rnnsearch")
    experiment.save_config(config, tmp_path)
    experiment.save_config(config, tmp_path)  # Unchanged: no history entry.
    assert not (tmp_path / "config_history").exists()
    for steps in (5, 7):
        config.num_train_steps = steps
        experiment.save_config(config, tmp_path)
    history = sorted((tmp_path / "config_history").glob("*.json"))
    assert [p.name for p in history] == ["1.json", "2.json"]
    assert [json.loads(p.read_text())["num_train_steps"] for p in history] == [1000, 5]
    assert experiment.load_config(tmp_path).num_train_steps == 7


def test_workdir_lock_is_exclusive_and_released_by_process_death(tmp_path):
    from seq2seq_jax.training import experiment

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from seq2seq_jax.training.experiment import WorkdirLock
        WorkdirLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        time.sleep(600)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeError, match=f"pid {holder.pid}") as info:
        experiment.WorkdirLock(tmp_path).acquire()
    assert str(tmp_path) in str(info.value)
    holder.kill()  # SIGKILL: no cleanup code runs.
    holder.wait()
    with experiment.WorkdirLock(tmp_path) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()


def test_preset_names_work_as_model_name(tmp_path):
    from seq2seq_jax.models import ModelConfig, default_model_config

    section = default_model_config("rnnsearch")
    section.name = "rnnsearch_reference"
    section.dropout_rate = 0.3  # Set on purpose: kept.
    config = ModelConfig.from_config(
        section, source_vocab_size=50, target_vocab_size=50, bos_id=1, eos_id=2
    )
    assert config.name == "rnnsearch"
    assert (config.emb_dim, config.decoder_hidden_size, config.attention_dim) == (256, 512, 512)
    assert config.dropout_rate == 0.3
    section.name = "rnnsearch_magic"
    with pytest.raises(ValueError, match="rnnsearch_reference"):
        ModelConfig.from_config(
            section, source_vocab_size=50, target_vocab_size=50, bos_id=1, eos_id=2
        )


def test_nothing_read_from_a_workdir_unpickles(tmp_path, root, cache):
    """Restoring for decoding and resuming training never resolve a pickled global.

    The one unpickling in a training process is tensorboardX's in-process queue of the events
    it is writing (objects this process made, not read from disk); it is told apart by its
    stack and allowed.
    """
    import shutil

    workdir = tmp_path / "copy"
    shutil.copytree(soak.reference_run(root, cache), workdir)
    flags = [
        *soak.TRAIN_FLAGS,
        f"--config.num_train_steps={soak.STEPS + 1}",
        f"--workdir={workdir}",
    ]
    script = textwrap.dedent(f"""
        import sys, traceback
        events = []
        def hook(event, args):
            if event.startswith("pickle."):
                stack = "".join(traceback.format_stack())
                if "tensorboardX/event_file_writer.py" not in stack:
                    events.append((event, args))
        sys.addaudithook(hook)
        from seq2seq_jax.inference.workdir import restore_from_workdir
        restored = restore_from_workdir({str(workdir)!r})
        assert restored.step == {soak.STEPS}
        from absl import app
        from seq2seq_jax import train
        sys.argv = ["seq2seq_jax.train", *{flags!r}]
        try:
            app.run(train.main, flags_parser=train.parse_flags)
        except SystemExit as e:
            assert not e.code, e.code
        print("events", events)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Resuming from" in proc.stderr
    assert proc.stdout.strip().endswith("events []"), proc.stdout


def test_package_source_has_no_code_executing_readers():
    """No pickle/marshal/shelve/dill imports, eval/exec calls or allow_pickle=True."""
    import ast

    offenders = []
    for path in (ROOT / "seq2seq_jax").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            if set(names) & {"pickle", "marshal", "shelve", "dill", "cloudpickle"}:
                offenders.append(f"{path}:{node.lineno} imports {names}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("eval", "exec"):
                offenders.append(f"{path}:{node.lineno} calls {node.func.id}")
            if (
                isinstance(node, ast.keyword)
                and node.arg == "allow_pickle"
                and getattr(node.value, "value", False) is True
            ):
                offenders.append(f"{path}:{node.lineno} allow_pickle=True")
    assert offenders == []
