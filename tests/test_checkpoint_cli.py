"""Checkpoints through `python -m seq2seq_jax.train`: exact resume after SIGTERM and SIGKILL
(also mid-save), and fine-tuning with `configs/finetune.py`.

One uninterrupted run of N steps (configs/default.py:tiny) is the reference. A second run is
interrupted three times and resumed each time in a fresh process:

1. SIGTERM during step 4 -> the loop finishes step 5, saves it (not a multiple of the checkpoint
   interval) and exits with code 0;
2. SIGKILL right after `save(8)` returned, i.e. while the asynchronous write is in flight ->
   step 8 is never committed, the next run resumes from 6 over Orbax's leftover temporary dir;
3. SIGKILL during step 9, after step 8 was committed (a plain kill);
4. the last run trains to N.

Its per-step losses (metrics.jsonl) and final TrainState (params, optimizer state, step, rng)
and data-iterator state must equal the reference bitwise: on CPU the same compiled program on
the same inputs is deterministic, so any difference is a resume bug, not float noise.

The signals are real (os.kill on the training process); only their timing is pinned by running
the CLI through this file's `__main__`, which wraps `Checkpointer.should_save`/`save` to send
them at the chosen steps.

The resumed runs also get `--config.init_checkpoint=<reference>`: the workdir's own checkpoints
must take precedence. The reference run is then the pre-trained model of
`configs/finetune.py:tiny`: parameters come from it, the optimizer starts afresh, frozen paths
stay equal to it, and a missing `init_checkpoint` is a one-line error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import soak

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
TRAIN_FLAGS = (
    "--config=configs/default.py:tiny",
    "--config.progress_bar=False",
    f"--config.num_train_steps={STEPS}",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2",
    "--config.checkpoint.max_to_keep=10",
    "--config.eval_every_steps=0",
    "--config.eval.task_metric=none",
    "--config.eval.final_split=",
    "--config.eval.max_batches=1",
)


def run_train(workdir: Path, cache: Path, *args: str, flags=TRAIN_FLAGS):
    """Runs the CLI through this file's `__main__`; `args`: faults, then `--`, then flags."""
    env = soak.worker_env(cache)
    faults = [a for a in args if a.startswith("--sig")]
    extra = [a for a in args if not a.startswith("--sig")]
    return subprocess.run(
        [sys.executable, __file__, *faults, "--", *flags, *extra, f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A JAX compilation cache shared by the runs (the same programs compile once)."""
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The uninterrupted run's workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    proc = run_train(workdir, cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    assert len(train) == len(dict(train)), f"duplicate steps in {workdir}/metrics.jsonl"
    return dict(train)


def saved_state(workdir: Path, step: int = STEPS) -> dict:
    """The checkpoint of `step` as numpy plus its data-iterator JSON (the soak's reader)."""
    return soak.final_state(workdir, step)


def committed(workdir: Path) -> list[int]:
    from seq2seq_jax.training.checkpoint import complete_steps

    return complete_steps(workdir / "checkpoints")


@pytest.mark.slow
def test_resume_after_sigterm_and_sigkill_matches_uninterrupted_run(tmp_path, cache, reference):
    resumed = tmp_path / "resumed"
    # From the first resume on, an init_checkpoint is given too: the workdir's own checkpoints
    # must take precedence (the bitwise comparison fails if the reference's final params load).
    init = f"--config.init_checkpoint={reference}"
    proc = run_train(resumed, cache, "--sigterm-during=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert committed(resumed) == [2, 4, 5]

    proc = run_train(resumed, cache, "--sigkill-after-save=8", init)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert committed(resumed) == [2, 4, 5, 6]
    leftovers = list((resumed / "checkpoints").glob("8.orbax-checkpoint-tmp*"))
    assert leftovers, "the kill did not land during the asynchronous save of step 8"

    proc = run_train(resumed, cache, "--sigkill-during=9", init)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert committed(resumed) == [2, 4, 5, 6, 8]
    assert not list((resumed / "checkpoints").glob("*.orbax-checkpoint-tmp*"))

    proc = run_train(resumed, cache, init)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming from" in proc.stderr and "Initialising parameters" not in proc.stderr
    expected = losses(reference)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert losses(resumed) == expected
    want, got = saved_state(reference), saved_state(resumed)
    assert got["data"] == want["data"]
    import jax

    assert jax.tree.structure(got["state"]) == jax.tree.structure(want["state"])
    for a, b in zip(jax.tree.leaves(got["state"]), jax.tree.leaves(want["state"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


FINETUNE_FLAGS = (
    "--config=configs/finetune.py:tiny",
    "--config.progress_bar=False",
    "--config.eval_every_steps=0",
    "--config.eval.task_metric=none",
    "--config.eval.final_split=",
    "--config.eval.max_batches=1",
    "--config.checkpoint_every_steps=3",
)


def _flat(tree, prefix: str) -> dict:
    from seq2seq_jax.training.checkpoint import path_str

    return {
        path_str(p): np.asarray(x)
        for p, x in __import__("jax").tree_util.tree_flatten_with_path(tree[prefix])[0]
    }


@pytest.mark.slow
def test_finetune_restores_params_only_fresh_optimizer_frozen_paths(tmp_path, cache, reference):
    workdir = tmp_path / "finetune"
    init = f"--config.init_checkpoint={reference}"
    proc = run_train(workdir, cache, init, "--config.num_train_steps=3", flags=FINETUNE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Initialising parameters from {reference}" in proc.stderr
    pre, tuned = saved_state(reference)["state"], saved_state(workdir, 3)["state"]
    pre_params, tuned_params = _flat(pre, "params"), _flat(tuned, "params")
    assert pre_params.keys() == tuned_params.keys()
    for path, value in tuned_params.items():
        frozen = path.startswith(("target_embed/", "output/"))
        assert np.array_equal(value, pre_params[path]) == frozen, path
    # Fresh optimizer: 3 updates counted, not the pre-training's 10 + 3.
    counts = {k: int(v) for k, v in _flat(tuned, "opt_state").items() if k.endswith("/count")}
    assert counts and set(counts.values()) == {3}
    assert int(tuned["step"]) == 3
    assert (workdir / "tokenizer").is_dir()  # the pre-trained vocabulary, copied


@pytest.mark.slow
def test_missing_init_checkpoint_is_a_one_line_error(tmp_path, cache, reference):
    missing = tmp_path / "no_such_run"
    proc = run_train(
        tmp_path / "finetune",
        cache,
        f"--config.init_checkpoint={missing}",
        f"--config.data.tokenizer_dir={reference}/tokenizer",
        flags=FINETUNE_FLAGS,
    )
    assert proc.returncode == 1
    last = [x for x in proc.stderr.splitlines() if x.strip()][-1]
    assert last.startswith("seq2seq_jax.train: error:") and str(missing) in last
    assert not (tmp_path / "finetune" / "checkpoints").exists() or not any(
        (tmp_path / "finetune" / "checkpoints").iterdir()
    )


# ------------------------------------------------------------------------------------------------
# Worker: `python tests/test_checkpoint_cli.py [faults] -- <seq2seq_jax.train flags>`.


def _install_faults(args: list[str]) -> None:
    """Wraps Checkpointer methods to signal this process at the requested steps."""
    from seq2seq_jax.training import checkpoint

    faults = dict(a.lstrip("-").split("=") for a in args)
    faults = {k: int(v) for k, v in faults.items()}
    should_save, save = checkpoint.Checkpointer.should_save, checkpoint.Checkpointer.save

    def faulty_should_save(self, step):
        if step == faults.get("sigkill-during"):
            self.wait()  # step - 1 (a save step) is committed: a plain kill
            os.kill(os.getpid(), signal.SIGKILL)
        return should_save(self, step)

    def faulty_save(self, step, *a, **kw):
        started = save(self, step, *a, **kw)
        if step == faults.get("sigterm-during"):
            # After the step's save, the loop's last look at it: the signal is seen after the
            # next step, which the loop then saves before exiting.
            os.kill(os.getpid(), signal.SIGTERM)
        if step == faults.get("sigkill-after-save"):
            os.kill(os.getpid(), signal.SIGKILL)  # the async write is still in flight
        return started

    checkpoint.Checkpointer.should_save = faulty_should_save
    checkpoint.Checkpointer.save = faulty_save


if __name__ == "__main__":
    split = sys.argv.index("--")
    _install_faults(sys.argv[1:split])
    from absl import app

    from seq2seq_jax import train

    sys.argv = ["seq2seq_jax.train", *sys.argv[split + 1 :]]
    app.run(train.main)
