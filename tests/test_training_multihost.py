"""Two JAX processes (2 CPU devices each, jax.distributed on 127.0.0.1, gloo) = one 4-device run.

Each process feeds its own half of every global batch through `trainer.put_batch`; losses and
final parameters must match a single process with 4 devices, with and without an fsdp axis that
spans both processes. Tolerance as in test_training_parallel.py (rtol 2e-5, atol 2e-6).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from seq2seq_jax.training import loop

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    out, process_id, num_processes, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        sys.argv[4]
    if num_processes > 1:
        from seq2seq_jax.training import parallel
        cfg = parallel.default_distributed_config()
        cfg.initialize, cfg.coordinator_address = "true", f"127.0.0.1:{port}"
        cfg.num_processes, cfg.process_id = num_processes, process_id
        assert parallel.maybe_initialize_distributed(cfg)
    import numpy as np, optax
    from training_tiny_model import TinySeq2Seq, make_batch
    from seq2seq_jax.training import parallel, trainer
    assert jax.device_count() == 4 and jax.process_count() == num_processes
    report = {}
    for fsdp in (1, 4):
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-2))
        state, placement = trainer.init_train_state(
            TinySeq2Seq(), tx, seed=0, mesh=parallel.make_mesh(fsdp))
        train_step, _ = trainer.make_step_fns(placement, label_smoothing=0.1)
        losses = []
        for i in range(3):
            batch = make_batch(i)
            rows = len(batch["inputs"]) // num_processes
            mine = {k: v[process_id * rows:(process_id + 1) * rows] for k, v in batch.items()}
            state, m = train_step(state, trainer.put_batch(mine, placement))
            m = trainer.metrics_to_host(m, placement)
            losses.append(float(m["loss"][0] / m["loss"][1]))
        from jax.experimental import multihost_utils
        params = multihost_utils.process_allgather(state.params, tiled=True)
        report[f"fsdp{fsdp}"] = {"losses": losses, "params": [np.asarray(x).tolist()
                                 for x in jax.tree.leaves(params)]}
    if process_id == 0:
        with open(out, "w") as f:
            json.dump(report, f)
    """
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, num_processes, devices_per_process):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(out), str(i), str(num_processes), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(num_processes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    return json.loads(Path(out).read_text())


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
    multi = launch(tmp_path / "multi.json", num_processes=2, devices_per_process=2)
    single = launch(tmp_path / "single.json", num_processes=1, devices_per_process=4)
    for key in ("fsdp1", "fsdp4"):
        np.testing.assert_allclose(multi[key]["losses"], single[key]["losses"], rtol=2e-5)
        for a, b in zip(multi[key]["params"], single[key]["params"], strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert single["fsdp1"]["losses"][0] != single["fsdp1"]["losses"][-1]


PREEMPTION_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    out, process_id, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from seq2seq_jax.training import parallel
    cfg = parallel.default_distributed_config()
    cfg.initialize, cfg.coordinator_address = "true", f"127.0.0.1:{port}"
    cfg.num_processes, cfg.process_id = 2, process_id
    assert parallel.maybe_initialize_distributed(cfg)
    from jax.experimental import multihost_utils
    from seq2seq_jax.training import loop
    gathers = []
    real = multihost_utils.process_allgather
    def counted(*args, **kwargs):  # The real all-gather, counted.
        gathers.append(1)
        return real(*args, **kwargs)
    multihost_utils.process_allgather = counted
    seen = None
    with loop.Preemption() as preemption:
        for step in range(1, 10):
            if step == 4 and process_id == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # Only process 1 is preempted.
            if preemption.requested(sync_point=step % 3 == 0):
                seen = step
                break
    # The time budget: process 0 decides (its clock says spent from step 2 on, process 1's
    # never), broadcast at sync points only.
    broadcasts = []
    real_broadcast = multihost_utils.broadcast_one_to_all
    def counted_broadcast(*args, **kwargs):
        broadcasts.append(1)
        return real_broadcast(*args, **kwargs)
    multihost_utils.broadcast_one_to_all = counted_broadcast
    from seq2seq_jax.training import experiment
    config = experiment.base_config()
    config.max_train_minutes = 1.0
    rules = loop.StopRules(config, [])
    budget_step = None
    for step in range(1, 10):
        seconds = 120.0 if process_id == 0 and step >= 2 else 0.0
        if rules.budget_spent(seconds, sync_point=step % 3 == 0):
            budget_step = step
            break
    with open(f"{out}.{process_id}", "w") as f:
        json.dump({"step": seen, "gathers": len(gathers), "budget_step": budget_step,
                   "broadcasts": len(broadcasts)}, f)
    """
)


@pytest.mark.slow
def test_sigterm_of_one_process_stops_both_at_the_next_sync_point(tmp_path):
    """The SIGTERM flag is all-gathered at sync points only (steps 3 and 6 here, not at every
    step), and both processes stop at the same step, the first sync point after the signal;
    likewise the time budget (process 0's clock decides, broadcast at sync points only)."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    port, out = str(free_port()), tmp_path / "preemption"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PREEMPTION_SCRIPT, str(out), str(i), port],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    for i in range(2):
        assert json.loads(Path(f"{out}.{i}").read_text()) == {
            "step": 6,
            "gathers": 2,
            "budget_step": 3,
            "broadcasts": 1,
        }


def test_sigterm_in_one_process_is_seen_at_the_next_step():
    before = signal.getsignal(signal.SIGTERM)
    with loop.Preemption() as preemption:
        assert not preemption.requested(sync_point=False)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested(sync_point=False)  # One process: no sync point needed.
    assert signal.getsignal(signal.SIGTERM) == before  # The handler is uninstalled.
