"""Fault injection: `python -m benchmarks.soak [--kills 50] [--seed 0]`.

Injects the faults a training workdir must survive into real `python -m seq2seq_jax.train` runs
of `configs/default.py:tiny`, checks each promise, and prints one JSON line per scenario plus a
summary (`faults`, `runs_survived`, `bytes_lost`, which must be 0, and `failures`):

- `kills`: SIGKILL at random moments (during a step, an asynchronous save, an evaluation, the
  final evaluation, or after a random delay), many times in a row, each followed by a resume;
  the per-step losses and the final parameters, optimiser state, step, RNG and data-iterator
  state must equal an uninterrupted run's bitwise, and every checkpoint committed before a kill
  must be byte-identical afterwards (else its bytes count as lost).
- `disk_full`: the disk fills after a committed save (a small tmpfs when `mount` is permitted,
  else a file-size limit, RLIMIT_FSIZE): the run must exit non-zero naming the cause, the older
  checkpoints stay byte-identical, and a later run with space again resumes from them.
- `concurrent`: a second trainer on a workdir in use exits at once naming the holder; the first
  finishes with one line per step in metrics.jsonl.
- `rejected_rerun`: re-running a trained workdir with a typo, another model size or a missing
  data file is refused and changes no byte of it (train.lock's holder line aside); `decode`
  still works on it. A rejected first run leaves no workdir.
- `nonfinite`: NaN gradients injected at step k under `optimizer.nonfinite` = abort (exit 1
  naming step k, the latest checkpoint the last good one), skip (step k skipped, the run
  finishes) and ignore (the run finishes, loss NaN).

The faults are real (os.kill, a full filesystem, NaN inside the compiled step); only their
timing is pinned, by running the CLI through this module's worker mode, which wraps library
functions to fire them at the chosen step. `tests/test_faults.py` runs each scenario at CI
size; this command runs them at soak size (`--kills 50`: about 10 minutes here).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
TRAIN_FLAGS = (
    "--config=configs/default.py:tiny",
    "--config.progress_bar=False",
    f"--config.num_train_steps={STEPS}",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=3",
    "--config.checkpoint.max_to_keep=20",
    "--config.eval_every_steps=6",
    "--config.eval.decode_examples=16",
    "--config.eval.max_batches=1",
    "--config.data.num_test_examples=16",
)
KILL_PHASES = ("step", "save", "eval", "final", "timer")  # Where a SIGKILL lands.


# ---------------------------------------------------------------------------------------------
# Running the CLI with faults.


def worker_env(cache: Path) -> dict[str, str]:
    """The environment of a training subprocess under fault injection: CPU, this checkout on
    the path, one device (no inherited XLA_FLAGS), and a persistent compilation cache shared by
    the runs of one scenario (every program cached, however quick to compile)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    return env


def run_train(
    workdir: Path,
    cache: Path,
    faults: Sequence[str] = (),
    flags=TRAIN_FLAGS,
    extra: Sequence[str] = (),
    timeout: float = 300,
    wait: bool = True,
):
    """Runs `python -m seq2seq_jax.train` in this module's worker mode with `faults`.

    Returns the CompletedProcess (or the Popen when `wait=False`).
    """
    env = worker_env(cache)
    argv = [
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--worker",
        *faults,
        "--",
        *flags,
        *extra,
        f"--workdir={workdir}",
    ]
    if not wait:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
    """The CLI's one-line error: its last `seq2seq_jax.<cli>: error:` line, else the last
    non-empty stderr line (warnings that libraries print at interpreter exit may follow it)."""
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    errors = [
        x
        for x in lines
        if x.startswith(("seq2seq_jax.train: error:", "seq2seq_jax.decode: error:"))
    ]
    return errors[-1] if errors else (lines[-1] if lines else "")


def _install_faults(faults: Sequence[str]) -> None:
    """Wraps library functions so that each fault fires at its step (worker mode)."""
    import jax
    import jax.numpy as jnp

    from seq2seq_jax.training import checkpoint, loop, state, trainer

    spec = dict(f.lstrip("-").split("=", 1) for f in faults)
    kill = spec.get("kill")  # PHASE:STEP, or timer:SECONDS
    phase, _, at = (kill or "").partition(":")
    at_value = float(at) if at else 0.0

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if phase == "timer":
        # A thread, not SIGALRM: a Python signal handler is gone once the interpreter starts
        # to shut down, and an alarm landing then would end a finished run with SIGALRM.
        timer = threading.Timer(at_value, die)
        timer.daemon = True
        timer.start()
    if phase == "step":
        make = trainer.make_step_fns

        def make_step_fns(*args, **kwargs):
            train_step, eval_step = make(*args, **kwargs)

            def faulty(s, batch):
                before = int(
                    jax.device_get(
                        trainer.state_to_host_layout(
                            s, args[0] if args else kwargs["placement"]
                        ).step
                    )
                )
                out = train_step(s, batch)
                if before + 1 == int(at_value):
                    die()  # The step is dispatched, not finished.
                return out

            return faulty, eval_step

        trainer.make_step_fns = make_step_fns
    save = checkpoint.Checkpointer.save

    def faulty_save(self, step, *args, **kwargs):
        started = save(self, step, *args, **kwargs)
        if phase == "save" and step == int(at_value):
            die()  # The asynchronous write is in flight.
        if "fill_disk_after_save" in spec and step == int(spec["fill_disk_after_save"]):
            self.wait()
            _make_disk_full(Path(self.directory), spec.get("disk", "tmpfs"))
        return started

    checkpoint.Checkpointer.save = faulty_save
    if phase == "eval":
        run_eval = loop._run_eval

        def faulty_run_eval(exp, s, step, writer):
            if step == int(at_value):
                loop.evaluate(exp, s, exp.config.eval.split)
                die()  # Mid-evaluation: the teacher-forced part done, nothing written.
            return run_eval(exp, s, step, writer)

        loop._run_eval = faulty_run_eval
    if phase == "final":
        decode_and_score = loop.decode_and_score

        def faulty_decode(exp, params, split, max_examples, prefix):
            out = decode_and_score(exp, params, split, max_examples, prefix)
            if split == exp.config.eval.final_split and max_examples == 0:
                die()  # During the final evaluation, after its first decode.
            return out

        loop.decode_and_score = faulty_decode
    if "pause_at" in spec:  # STEP:PATH: wait at STEP until PATH exists.
        pause_step, _, pause_path = spec["pause_at"].partition(":")
        should_save = checkpoint.Checkpointer.should_save

        def paused_should_save(self, step):
            while step == int(pause_step) and not os.path.exists(pause_path):
                time.sleep(0.05)
            return should_save(self, step)

        checkpoint.Checkpointer.should_save = paused_should_save
    if "nan" in spec:
        nan_step = int(spec["nan"])  # 1-based, as logged.
        apply = state.TrainState.apply_gradients

        def apply_gradients(self, grads, **kwargs):
            poison = jnp.where(self.step == nan_step - 1, jnp.nan, 0.0)
            grads = jax.tree.map(lambda g: g + poison.astype(g.dtype), grads)
            return apply(self, grads, **kwargs)

        state.TrainState.apply_gradients = apply_gradients


DISK_LEFT = 1 << 16  # Bytes left after the fill: metrics lines fit, a checkpoint does not.


def _make_disk_full(directory: Path, how: str) -> None:
    """Makes the next checkpoint's writes fail: fills the filesystem (tmpfs) up to
    `DISK_LEFT` bytes, or limits the size of every file this process writes to that."""
    if how == "fsize":
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes then fail with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (DISK_LEFT, DISK_LEFT))
        return
    filler = directory.parent.parent / "filler"  # The filesystem's root: WORKDIR/..
    with open(filler, "wb") as f:
        chunk = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
                f.flush()
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - DISK_LEFT))


def _worker(argv: list[str]) -> None:
    split = argv.index("--")
    _install_faults(argv[:split])
    from absl import app

    from seq2seq_jax import train

    sys.argv = ["seq2seq_jax.train", *argv[split + 1 :]]
    app.run(train.main, flags_parser=train.parse_flags)


# ---------------------------------------------------------------------------------------------
# What a run left behind.


def losses(workdir: Path) -> dict[int, float]:
    """step -> train_loss of metrics.jsonl (raises on duplicate steps)."""
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    if len(train) != len(dict(train)):
        raise AssertionError(f"duplicate steps in {workdir}/metrics.jsonl")
    return dict(train)


def committed(workdir: Path) -> list[int]:
    from seq2seq_jax.training.checkpoint import complete_steps

    return complete_steps(workdir / "checkpoints")


def tree_digest(directory: Path, skip: Sequence[str] = ()) -> dict[str, str]:
    """relative path -> sha256 of every file below `directory` (names in `skip` excluded)."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name not in skip:
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def lost_bytes(before: dict[str, str], directory: Path) -> int:
    """Bytes of the files of `before` that are missing or changed below `directory`."""
    lost = 0
    for rel, digest in before.items():
        path = directory / rel
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            lost += path.stat().st_size if path.is_file() else 1
    return lost


def checkpoint_digest(workdir: Path) -> dict[str, str]:
    """Digest of the committed checkpoint steps (their files only)."""
    out = {}
    for step in committed(workdir):
        for rel, d in tree_digest(workdir / "checkpoints" / str(step)).items():
            out[f"checkpoints/{step}/{rel}"] = d
    return out


def final_state(workdir: Path, step: int = STEPS) -> dict[str, Any]:
    """The checkpoint of `step` as numpy (state) plus its data-iterator JSON."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    step_dir = workdir / "checkpoints" / str(step)
    handler = ocp.PyTreeCheckpointHandler()
    try:  # Both closed afterwards: no handler threads left behind.
        metadata = handler.metadata(step_dir / "state").tree
    finally:
        handler.close()
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(
            step_dir / "state", args=ocp.args.PyTreeRestore(restore_args=as_numpy)
        )
    data = json.loads((step_dir / "data" / "process_0-of-1.json").read_text())
    return {"state": tree, "data": data}


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import jax
    import numpy as np

    if a["data"] != b["data"] or jax.tree.structure(a["state"]) != jax.tree.structure(b["state"]):
        return False
    return all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"]), strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Scenarios: each returns a record {"scenario", "faults", "runs_survived", "bytes_lost",
# "failures": [...]} (an empty `failures` list: every promise held).


def _record(name: str, **values: Any) -> dict[str, Any]:
    return {
        "scenario": name,
        "faults": 0,
        "runs_survived": 0,
        "bytes_lost": 0,
        "failures": [],
        **values,
    }


def reference_run(root: Path, cache: Path) -> Path:
    """The uninterrupted run every kill cycle is compared with."""
    workdir = root / "reference"
    if not (workdir / "checkpoints" / str(STEPS)).is_dir():
        proc = run_train(workdir, cache)
        if proc.returncode != 0:
            raise RuntimeError(f"the reference run failed: {error_line(proc)}")
    return workdir


def next_kill(rng: random.Random, workdir: Path, prefer: str | None = None) -> str:
    """A random fault 'PHASE:AT' that can still fire in `workdir`'s next run (in phase
    `prefer` when it still can)."""
    done = max(committed(workdir), default=0) if (workdir / "checkpoints").is_dir() else 0
    choices = {
        "step": [f"step:{s}" for s in range(done + 1, STEPS + 1)],
        "save": [f"save:{s}" for s in range(3, STEPS + 1, 3) if s > done],
        "eval": [f"eval:{s}" for s in range(6, STEPS + 1, 6) if s > done],
        "final": ["final:0"],
        "timer": [f"timer:{rng.uniform(3.0, 12.0):.2f}"],
    }
    phase = (
        prefer if prefer and choices[prefer] else rng.choice([p for p in KILL_PHASES if choices[p]])
    )
    return rng.choice(choices[phase])


def kills_scenario(root: Path, cache: Path, kills: int, seed: int = 0) -> dict[str, Any]:
    """SIGKILL `kills` times (resuming after each); each workdir that reaches the end is
    compared with the uninterrupted run, and the next kills go to a fresh workdir. The first
    kills land in each phase of `KILL_PHASES` in turn, the rest at random."""
    reference = reference_run(root, cache)
    want_losses, want_state = losses(reference), final_state(reference)
    rng = random.Random(seed)
    rec = _record("kills", phases={p: 0 for p in KILL_PHASES}, completed_runs=0)
    run_index, kept = 0, {}
    workdir = root / f"killed_{seed}_{run_index}"

    def check_completed() -> None:
        rec["completed_runs"] += 1
        if losses(workdir) != want_losses:
            rec["failures"].append(
                f"{workdir.name}: per-step losses differ from the uninterrupted run"
            )
        if not same_state(final_state(workdir), want_state):
            rec["failures"].append(
                f"{workdir.name}: final state differs from the uninterrupted run"
            )

    attempts = 0
    while rec["faults"] < kills:
        attempts += 1
        if attempts > 4 * kills + 10:
            rec["failures"].append(
                f"only {rec['faults']} of {kills} kills fired in {attempts - 1} runs"
            )
            return rec
        prefer = KILL_PHASES[rec["faults"]] if rec["faults"] < len(KILL_PHASES) else None
        fault = next_kill(rng, workdir, prefer)
        proc = run_train(workdir, cache, [f"--kill={fault}"])
        if proc.returncode not in (0, -signal.SIGKILL):
            rec["failures"].append(f"{fault}: exit {proc.returncode}: {error_line(proc)}")
            return rec
        lost = lost_bytes(kept, workdir)
        rec["bytes_lost"] += lost
        if lost:
            rec["failures"].append(f"{fault}: {lost} bytes of committed checkpoints changed")
        kept = checkpoint_digest(workdir)
        if proc.returncode == -signal.SIGKILL:
            rec["faults"] += 1
            rec["phases"][fault.split(":")[0]] += 1
            continue
        rec["runs_survived"] += 1  # The run after the last kill completed.
        check_completed()
        run_index, kept = run_index + 1, {}
        workdir = root / f"killed_{seed}_{run_index}"
    if workdir.exists():
        proc = run_train(workdir, cache)
        if proc.returncode != 0:
            rec["failures"].append(f"final resume: exit {proc.returncode}: {error_line(proc)}")
            return rec
        rec["bytes_lost"] += lost_bytes(kept, workdir)
        rec["runs_survived"] += 1
        check_completed()
    return rec


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0


def disk_full_scenario(root: Path, cache: Path) -> dict[str, Any]:
    """The disk fills after the save of step 6: the save of step 9 fails in the background.
    The run must exit 1 at the next save, wait or close with the cause in one last line; steps
    3 and 6 stay byte-identical, and a run with space again resumes from 6 and ends exactly like
    the uninterrupted run."""
    mount = root / "tmpfs"
    mounted = _mount_tmpfs(mount, "64m")
    rec = _record("disk_full", method="tmpfs" if mounted else "RLIMIT_FSIZE")
    workdir = (mount if mounted else root / "disk") / "run"
    try:
        proc = run_train(
            workdir,
            cache,
            ["--fill_disk_after_save=6", f"--disk={'tmpfs' if mounted else 'fsize'}"],
        )
        rec["faults"] = 1
        line = error_line(proc)
        if proc.returncode != 1 or not line.startswith("seq2seq_jax.train: error:"):
            rec["failures"].append(f"exit {proc.returncode} (want 1, one line): {line}")
        cause = "No space left" if mounted else "File too large"
        if cause not in line:
            rec["failures"].append(f"the error does not name the cause ({cause!r}): {line}")
        kept = checkpoint_digest(workdir)
        if committed(workdir) != [3, 6]:
            rec["failures"].append(f"committed steps after the failure: {committed(workdir)}")
        (workdir.parent / "filler").unlink(missing_ok=True)  # Space again.
        proc = run_train(workdir, cache)
        if proc.returncode != 0:
            rec["failures"].append(f"resume after freeing space: {error_line(proc)}")
        else:
            rec["runs_survived"] = 1
        rec["bytes_lost"] = lost_bytes(kept, workdir)
        reference = reference_run(root, cache)
        if losses(workdir) != losses(reference):
            rec["failures"].append("losses after the resume differ from the uninterrupted run")
        if not same_state(final_state(workdir), final_state(reference)):
            rec["failures"].append("the final state differs from the uninterrupted run")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return rec


def concurrent_scenario(root: Path, cache: Path) -> dict[str, Any]:
    """A second trainer on a workdir in use must exit at once, naming the holder."""
    workdir = root / "concurrent"
    rec = _record("concurrent", faults=1)
    go = root / "concurrent.go"
    first = run_train(workdir, cache, [f"--pause_at=3:{go}"], wait=False)
    lock = workdir / "train.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.is_file() and lock.read_text().strip()):
        time.sleep(0.05)
    started = time.time()
    second = run_train(workdir, cache)
    seconds = time.time() - started
    go.write_text("go")
    _, err = first.communicate(timeout=300)
    line = error_line(second)
    if second.returncode != 1 or f"pid {first.pid}" not in line or str(workdir) not in line:
        rec["failures"].append(f"second run: exit {second.returncode}: {line}")
    rec["second_run_seconds"] = round(seconds, 1)
    if first.returncode != 0:
        rec["failures"].append(f"first run: exit {first.returncode}: {err[-500:]}")
    else:
        rec["runs_survived"] = 1
        try:
            if sorted(losses(workdir)) != list(range(1, STEPS + 1)):
                rec["failures"].append("metrics.jsonl does not hold exactly one line per step")
        except AssertionError as e:
            rec["failures"].append(str(e))
    return rec


def rejected_rerun_scenario(root: Path, cache: Path) -> dict[str, Any]:
    """Rejected re-runs of a trained workdir change none of its bytes; decode still works."""
    workdir = reference_run(root, cache)
    before = tree_digest(workdir, skip=("train.lock",))
    rec = _record("rejected_rerun")
    reruns = {
        "typo": ["--config.model.name=lstm_magic"],
        "model size": ["--config.model.emb_dim=24"],
        "missing data": [
            "--config.data.name=parallel_text",
            f"--config.data.train_source={root}/missing.de",
            f"--config.data.train_target={root}/missing.en",
        ],
    }
    for name, flags in reruns.items():
        proc = run_train(workdir, cache, extra=flags)
        rec["faults"] += 1
        if proc.returncode != 1 or "Traceback" in proc.stderr:
            rec["failures"].append(f"{name}: exit {proc.returncode}: {error_line(proc)}")
    rec["bytes_lost"] = lost_bytes(before, workdir)
    if tree_digest(workdir, skip=("train.lock",)) != before:
        rec["failures"].append("the workdir changed")
    fresh = root / "fresh_rejected"
    proc = run_train(fresh, cache, extra=reruns["missing data"])
    rec["faults"] += 1
    if proc.returncode != 1 or fresh.exists():
        rec["failures"].append(f"fresh workdir: exit {proc.returncode}, exists={fresh.exists()}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    decode = subprocess.run(
        [sys.executable, "-m", "seq2seq_jax.decode", f"--workdir={workdir}"],
        input="Saturday 9 May 2018\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if decode.returncode != 0 or not decode.stdout.strip():
        rec["failures"].append(f"decode after the rejected runs: {error_line(decode)}")
    else:
        rec["runs_survived"] = 1
    return rec


def nonfinite_scenario(root: Path, cache: Path, nan_step: int = 5) -> dict[str, Any]:
    """NaN gradients at step `nan_step` under each `optimizer.nonfinite` mode."""
    rec = _record("nonfinite")
    for mode in ("abort", "skip", "ignore"):
        workdir = root / f"nan_{mode}"
        proc = run_train(
            workdir, cache, [f"--nan={nan_step}"], extra=[f"--config.optimizer.nonfinite={mode}"]
        )
        rec["faults"] += 1
        line = error_line(proc)
        if mode == "abort":
            good = [s for s in committed(workdir) if s < nan_step]
            if (
                proc.returncode != 1
                or f"step {nan_step}" not in line
                or committed(workdir) != good
                or not good
            ):
                rec["failures"].append(
                    f"abort: exit {proc.returncode}, checkpoints {committed(workdir)}: {line}"
                )
            else:
                rec["runs_survived"] += 1
            continue
        if proc.returncode != 0:
            rec["failures"].append(f"{mode}: exit {proc.returncode}: {line}")
            continue
        records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        at = next(r for r in records if r.get("step") == nan_step and "train_loss" in r)
        last = [r for r in records if "train_loss" in r][-1]
        if mode == "skip" and not (
            at["train_nonfinite_skipped"] == 1.0
            and last["nonfinite_total"] == 1
            and last["train_loss"] is not None
        ):
            rec["failures"].append(f"skip: step {nan_step} {at}, last {last}")
        elif mode == "ignore" and last["train_loss"] is not None:
            rec["failures"].append(f"ignore: the loss stayed finite: {last}")
        else:
            rec["runs_survived"] += 1
    return rec


def nonfinite_two_process_scenario(root: Path, cache: Path, nan_step: int = 5) -> dict[str, Any]:
    """NaN at `nan_step` in a 2-process run (jax.distributed on 127.0.0.1) under 'abort': both
    processes stop at the same step with the same one-line error."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = root / "nan_two_process"
    rec = _record("nonfinite_two_process", faults=1)
    procs = [
        run_train(
            workdir,
            root / f"jax_cache_p{i}",
            [f"--nan={nan_step}"],
            wait=False,
            extra=[
                "--config.distributed.initialize=true",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
            ],
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append((proc.returncode, error_line(subprocess.CompletedProcess([], 0, "", err))))
    for code, line in results:
        if code != 1 or f"step {nan_step}" not in line:
            rec["failures"].append(f"exit {code}: {line}")
    if len({line.split("(")[0] for _, line in results}) != 1:
        rec["failures"].append(f"the processes disagree: {results}")
    if not rec["failures"]:
        rec["runs_survived"] = 2
    return rec


SCENARIOS = (
    "kills",
    "disk_full",
    "concurrent",
    "rejected_rerun",
    "nonfinite",
    "nonfinite_two_process",
)


def run_all(
    root: Path, kills: int, seed: int, only: Sequence[str] = SCENARIOS
) -> Iterator[dict[str, Any]]:
    cache = root / "jax_cache"
    for name in only:
        started = time.time()
        if name == "kills":
            rec = kills_scenario(root, cache, kills, seed)
        else:
            rec = globals()[f"{name}_scenario"](root, cache)
        rec["seconds"] = round(time.time() - started, 1)
        yield rec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        _worker(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs to land (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
    a = p.parse_args(argv)
    root = Path(a.workdir or tempfile.mkdtemp(prefix="seq2seq_jax_soak."))
    root.mkdir(parents=True, exist_ok=True)
    totals = _record("summary")
    for rec in run_all(root, a.kills, a.seed, [s for s in a.only.split(",") if s]):
        print(json.dumps(rec), flush=True)
        for key in ("faults", "runs_survived", "bytes_lost"):
            totals[key] += rec[key]
        totals["failures"] += [f"{rec['scenario']}: {f}" for f in rec["failures"]]
    print(json.dumps(totals), flush=True)
    return 1 if totals["failures"] or totals["bytes_lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
