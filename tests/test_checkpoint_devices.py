"""Restore onto another device count or mesh: 1 -> 8 devices (fsdp and data-parallel) -> 1.

Each leg runs in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count=N`) through
this file's `__main__`: it builds a TrainState (a small seq2seq-signature model, Adam with the
training code's optimizer) with the training code's placement (`trainer.init_train_state` over
a ("data", "fsdp") mesh, its compiled train step), restores the previous leg's
checkpoint onto those shardings, checks every leaf bitwise against the values the saver wrote
to an .npz (its independent copy) and that each leaf carries the target sharding, takes one
compiled (donating) train step whose loss must match the saver's own next-step loss, then
trains one step and saves for the next leg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_legs(tmp_path: Path, devices: int, *legs: tuple) -> list:
    """Runs legs in one process with `devices` CPU devices: `(fsdp, restore_from, save_to)`
    moves a TrainState, `("extend", fsdp, restore_from)` restores params with a larger
    target vocabulary (`extend_vocab`)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    args = [sys.executable, __file__, str(tmp_path), json.dumps(legs)]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["devices"] == devices for r in reports)
    return reports


@pytest.mark.slow
def test_save_on_1_restore_on_8_fsdp_and_back(tmp_path):
    (one,) = run_legs(tmp_path, 1, (1, None, "one"))
    eight, dp, extended = run_legs(
        tmp_path, 8, (4, "one", "eight"), (1, "eight", None), ("extend", 4, "one")
    )
    assert extended["grown_sharded"]
    assert eight["sharded_leaves"] > 0  # fsdp really shards the restored state
    # The first step after a restore computes the loss the saver computed for that step.
    assert eight["restored_loss"] == pytest.approx(one["next_loss"], rel=1e-5)
    # 8 devices without fsdp (pure data parallelism): the state is replicated.
    assert dp["sharded_leaves"] == 0
    assert dp["restored_loss"] == pytest.approx(eight["next_loss"], rel=1e-5)
    (back,) = run_legs(tmp_path, 1, (1, "eight", None))
    assert back["restored_loss"] == pytest.approx(eight["next_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Worker: `python tests/test_checkpoint_devices.py TMP '[[FSDP, RESTORE_FROM, SAVE_TO], ...]'`.


def _tiny_model(target_vocab: int):
    import flax.linen as nn

    class TinySeq2Seq(nn.Module):
        """The seq2seq call signature with a few small layers (fast to compile)."""

        target_vocab: int = 16

        @nn.compact
        def __call__(
            self,
            inputs,
            targets,
            inputs_segmentation=None,
            targets_segmentation=None,
            inputs_position=None,
            targets_position=None,
            train=False,
        ):
            source = nn.Embed(24, 16)(inputs).mean(axis=1, keepdims=True)  # [B, 1, 16]
            embedded = nn.Embed(self.target_vocab, 16)(targets)  # [B, T, 16]
            hidden = nn.tanh(nn.Dense(32)(embedded + source))  # [B, T, 32]
            hidden = nn.Dropout(0.1, deterministic=not train)(hidden)
            return nn.Dense(self.target_vocab)(hidden)  # [B, T, V]

    return TinySeq2Seq(target_vocab)


def _build(fsdp: int, seed: int, target_vocab: int = 16):
    import numpy as np

    from seq2seq_jax.training import optim, parallel, trainer

    tx, _ = optim.make_optimizer(optim.default_optimizer_config(), 10)
    state, placement = trainer.init_train_state(
        _tiny_model(target_vocab), tx, seed=seed, mesh=parallel.make_mesh(fsdp), fsdp_min_size=0
    )
    train_step, _ = trainer.make_step_fns(placement)
    rng = np.random.default_rng(0)
    batch = trainer.dummy_batch(6, 5, rows=8)
    batch["inputs"] = rng.integers(3, 24, (8, 6)).astype("int32")
    batch["targets"] = rng.integers(3, 16, (8, 5)).astype("int32")
    return state, placement, train_step, trainer.put_batch(batch, placement)


def _loss(metrics) -> float:
    import numpy as np

    total, weight = (np.asarray(x, np.float64) for x in metrics["loss"])
    return float(total / weight)


def _leg(tmp: Path, fsdp: int, restore_from: str | None, save_to: str | None) -> dict:
    import jax
    import numpy as np

    from seq2seq_jax.training.checkpoint import Checkpointer, path_str

    state, placement, train_step, batch = _build(fsdp, seed=0 if restore_from is None else 1)
    report = {"devices": jax.device_count()}
    if restore_from is not None:
        with Checkpointer(tmp / restore_from, save_every_steps=1) as ckpt:
            state = ckpt.restore(state)
        reference = np.load(tmp / f"{restore_from}.npz")
        flat = jax.tree_util.tree_flatten_with_path(state.checkpoint_items())[0]
        targets = jax.tree.leaves(placement.shardings.checkpoint_items())
        for (path, leaf), target in zip(flat, targets, strict=True):
            np.testing.assert_array_equal(np.asarray(leaf), reference[path_str(path)])
            assert leaf.sharding.is_equivalent_to(target, leaf.ndim), (path_str(path), target)
        report["sharded_leaves"] = sum(not x.sharding.is_fully_replicated for _, x in flat)
        state, metrics = train_step(state, batch)
        report["restored_loss"] = _loss(metrics)
    if save_to is not None:
        state, _ = train_step(state, batch)
        with Checkpointer(tmp / save_to, save_every_steps=1) as ckpt:
            ckpt.save(int(state.step), state)
        np.savez(
            tmp / f"{save_to}.npz",
            **{
                path_str(p): np.asarray(x)
                for p, x in jax.tree_util.tree_flatten_with_path(state.checkpoint_items())[0]
            },
        )
        _, metrics = train_step(state, batch)
        report["next_loss"] = _loss(metrics)
    return report


def _extend_leg(tmp: Path, fsdp: int, restore_from: str) -> dict:
    """Restores params saved with target vocabulary 16 into a sharded model with 24."""
    import jax
    import numpy as np

    from seq2seq_jax.training.checkpoint import restore_params

    state, placement, _, _ = _build(fsdp, seed=2, target_vocab=24)
    params = restore_params(tmp / restore_from, state.params, extend_vocab=True)
    reference = np.load(tmp / f"{restore_from}.npz")
    grown = {"Embed_1/embedding": 0, "Dense_1/kernel": 1, "Dense_1/bias": 0}
    for path, axis in grown.items():
        first, second = path.split("/")
        got, fresh = params[first][second], state.params[first][second]
        old = np.take(np.asarray(got), range(16), axis=axis)
        np.testing.assert_array_equal(old, reference[f"params/{path}"])
        np.testing.assert_array_equal(
            np.take(np.asarray(got), range(16, 24), axis=axis),
            np.take(np.asarray(fresh), range(16, 24), axis=axis),
        )
        assert got.sharding.is_equivalent_to(fresh.sharding, got.ndim), path
    unchanged = np.asarray(params["Dense_0"]["kernel"])
    np.testing.assert_array_equal(unchanged, reference["params/Dense_0/kernel"])
    return {
        "devices": jax.device_count(),
        "grown_sharded": any(
            not params[p.split("/")[0]][p.split("/")[1]].sharding.is_fully_replicated for p in grown
        ),
    }


if __name__ == "__main__":
    tmp_dir, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
    print(
        json.dumps(
            [
                _extend_leg(tmp_dir, *leg[1:]) if leg[0] == "extend" else _leg(tmp_dir, *leg)
                for leg in plan
            ]
        )
    )
