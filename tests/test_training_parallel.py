"""Same losses and parameters on 1 device (jit), 8 devices (jit), 8 devices (jit + fsdp), 8 (pmap).

With dropout, the jit placements also agree (pmap draws per-device masks).

Runs in a subprocess with `--xla_force_host_platform_device_count=8` (pytest's own process has
already initialised JAX with one CPU device). Tolerance: rtol 2e-5 / atol 2e-6 on losses and on
the parameters after 3 Adam steps (measured: max abs difference 3e-7). The placements differ only
in the order of float32 sums (per-device partial sums, then an all-reduce): the last bits move.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, optax
    from training_tiny_model import TinySeq2Seq, make_batch
    from seq2seq_jax.training import parallel, trainer

    assert jax.device_count() == 8, jax.devices()
    out_dir = sys.argv[1]
    # (parallelism, devices, fsdp, dropout). With dropout only the jit placements must agree:
    # pmap draws each device's mask from its own key.
    modes = {"jit1": ("jit", 1, 1, 0.0), "jit8": ("jit", 8, 1, 0.0),
             "jit8_fsdp4": ("jit", 8, 4, 0.0), "pmap8": ("pmap", 8, 0, 0.0),
             "jit1_dropout": ("jit", 1, 1, 0.3), "jit8_fsdp4_dropout": ("jit", 8, 4, 0.3)}
    report = {}
    for name, (parallelism, n, fsdp, dropout) in modes.items():
        mesh = parallel.make_mesh(fsdp, jax.devices()[:n]) if parallelism == "jit" else None
        tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-2))
        state, placement = trainer.init_train_state(
            TinySeq2Seq(dropout=dropout), tx, seed=0, parallelism=parallelism, mesh=mesh)
        train_step, eval_step = trainer.make_step_fns(placement, label_smoothing=0.1)
        specs = sorted({str(s.spec) for s in jax.tree.leaves(placement.shardings)})
        losses = []
        for i in range(3):
            old = state
            state, m = train_step(state, trainer.put_batch(make_batch(i), placement))
            m = trainer.metrics_to_host(m, placement)
            losses.append(float(m["loss"][0] / m["loss"][1]))
        donated = all(x.is_deleted() for x in jax.tree.leaves(old.params))
        e = trainer.metrics_to_host(eval_step(state, trainer.put_batch(make_batch(9),
                                                                       placement)), placement)
        params = trainer.state_to_host_layout(state, placement).params
        flat = {"/".join(str(k.key) for k in p): np.asarray(v)
                for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(f"{out_dir}/{name}.npz", **flat)
        report[name] = {"losses": losses, "eval_loss": float(e["loss"][0] / e["loss"][1]),
                        "specs": specs, "donated": donated, "step": int(
                            trainer.state_to_host_layout(state, placement).step)}
    print("REPORT" + json.dumps(report))
    """
)


def run_modes(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT") :])


def assert_same(tmp_path, report, reference, other):
    np.testing.assert_allclose(
        report[other]["losses"], report[reference]["losses"], rtol=2e-5, err_msg=other
    )
    np.testing.assert_allclose(
        report[other]["eval_loss"], report[reference]["eval_loss"], rtol=2e-5, err_msg=other
    )
    ref, got = np.load(tmp_path / f"{reference}.npz"), np.load(tmp_path / f"{other}.npz")
    assert sorted(ref.files) == sorted(got.files)
    for key in ref.files:
        np.testing.assert_allclose(
            got[key], ref[key], rtol=2e-5, atol=2e-6, err_msg=f"{other}: {key}"
        )


@pytest.mark.slow
def test_jit_sharded_fsdp_and_pmap_agree_with_single_device(tmp_path):
    report = run_modes(tmp_path)
    for other in ("jit8", "jit8_fsdp4", "pmap8"):
        assert_same(tmp_path, report, "jit1", other)
    # Dropout masks do not depend on the mesh (partitionable threefry + fold_in(rng, step)).
    assert_same(tmp_path, report, "jit1_dropout", "jit8_fsdp4_dropout")
    assert report["jit1_dropout"]["losses"] != report["jit1"]["losses"]
    assert all(r["step"] == 3 for r in report.values())
    # The runs are not trivially identical: training moved the loss.
    assert report["jit1"]["losses"][0] != report["jit1"]["losses"][2]
    # fsdp really shards parameters / optimizer state; plain data parallelism replicates them.
    assert any("fsdp" in s for s in report["jit8_fsdp4"]["specs"])
    assert not any("fsdp" in s for s in report["jit8"]["specs"])
    # The state is donated to the jit step.
    assert report["jit8"]["donated"] and report["jit8_fsdp4"]["donated"]
