"""seq2seq_jax.workdir: the read-only queries beside a running trainer, the one ranking of the
best step, and errors naming the file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from test_checkpoint import make_state

from seq2seq_jax import workdir as wd
from seq2seq_jax.training.checkpoint import Checkpointer


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_rank_best_takes_the_best_finite_value_and_the_later_step_on_ties():
    metrics = {
        1: {"bleu": 3.0},
        2: {"bleu": math.nan},
        3: {"bleu": 3.0},
        4: None,
        5: {"loss": 9.0},
        6: {"bleu": 1.0},
    }
    assert wd.rank_best(metrics, "bleu", "max") == 3
    assert wd.rank_best(metrics, "bleu", "min") == 6
    assert wd.rank_best({1: {"bleu": math.inf}, 2: None}, "bleu", "max") is None


def test_queries_read_orbax_metrics_and_write_nothing_beside_a_trainer(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, save_every_steps=1, max_to_keep=3, best_metric="eval_bleu") as ckpt:
        for step, bleu in ((1, 4.0), (2, 7.5), (3, math.nan)):
            ckpt.save(step, state, metrics={"eval_bleu": bleu})
            ckpt.wait()
        checkpoints = tmp_path / wd.CHECKPOINT_DIRNAME
        # What a trainer's save in flight looks like: Orbax's temporary directory.
        in_flight = checkpoints / "4.orbax-checkpoint-tmp-1234"
        (in_flight / "state").mkdir(parents=True)
        before = _tree(tmp_path)
        saved = wd.saved_metrics(checkpoints)
        assert sorted(saved) == [1, 2, 3] and math.isnan(saved.pop(3)["eval_bleu"])
        assert saved == {1: {"eval_bleu": 4.0}, 2: {"eval_bleu": 7.5}}
        assert wd.saved_metrics(checkpoints, [2]) == {2: {"eval_bleu": 7.5}}
        assert wd.best_step(checkpoints, "eval_bleu", "max") == 2
        assert wd.best_step(checkpoints, "eval_bleu", "min") == 1
        assert ckpt.best_step() == 2  # The writer ranks with the same function.
        assert _tree(tmp_path) == before  # Nothing written, the trainer's temporary kept.
        assert in_flight.is_dir()


def test_corrupt_saved_metrics_are_an_error_naming_the_directory(tmp_path):
    state = make_state()
    with Checkpointer(tmp_path, save_every_steps=1, best_metric="eval_bleu") as ckpt:
        ckpt.save(1, state, metrics={"eval_bleu": 1.0})
    checkpoints = tmp_path / wd.CHECKPOINT_DIRNAME
    files = [p for p in (checkpoints / "1" / "metrics").rglob("*") if p.is_file()]
    assert files
    for f in files:
        f.write_text("{not json")
    with pytest.raises(wd.CheckpointError, match=str(checkpoints)):
        wd.best_step(checkpoints, "eval_bleu", "max")


def test_config_round_trip_keeps_every_version(tmp_path):
    import ml_collections

    config = ml_collections.ConfigDict({"model": {"name": "rnnsearch"}, "seed": 1})
    wd.save_config(config, tmp_path)
    config.seed = 2
    wd.save_config(config, tmp_path)
    assert wd.load_config(tmp_path).seed == 2
    history = tmp_path / wd.CONFIG_HISTORY_DIRNAME / "1.json"
    assert '"seed": 1' in history.read_text()
    (tmp_path / wd.CONFIG_FILENAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match=os.fspath(tmp_path / wd.CONFIG_FILENAME)):
        wd.load_config(tmp_path)
