"""Time budgets, early stopping and checkpoint averaging of the training loop, and the decode
CLI's averaging options. Tiny in-process runs of configs/default.py:tiny; the averages are
checked against a NumPy mean of the checkpoints read back independently."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

import configs.default
from seq2seq_jax.inference import run as decode_run
from seq2seq_jax.inference import workdir as workdir_lib
from seq2seq_jax.training import checkpoint as ckpt_lib
from seq2seq_jax.training import experiment, loop

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    config = configs.default.get_config("tiny")
    config.progress_bar = False
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def rules(history, **overrides):
    return loop.StopRules(tiny_config(**overrides), history)


def test_stop_rules_from_history():
    r = rules(
        [{"step": 5, "train_minutes": 1.5}, {"step": 10, "train_minutes": 2.0}],
        max_train_minutes=3.0,
    )
    assert r.previous_seconds == 120.0
    assert not r.budget_spent(59.0) and r.budget_spent(60.0)
    assert not rules([], max_train_minutes=0.0).budget_spent(1e9)  # 0 = no budget
    history = [{"eval_exact_match": v} for v in (10.0, 12.0, float("nan"), 11.0)]
    r = rules(history, **{"eval.early_stopping_patience": 2})
    assert r.best == 12.0 and r.since_best == 2 and r.patience_spent()  # NaN is never a best
    r.update({"eval_exact_match": 13.0})
    assert r.since_best == 0 and not r.patience_spent()
    r = rules(
        [{"eval_loss": 3.0}, {"eval_loss": 2.0}],
        **{
            "checkpoint.best_metric": "eval_loss",
            "checkpoint.best_mode": "min",
            "eval.early_stopping_patience": 1,
        },
    )
    assert r.since_best == 0  # Lower is better in 'min' mode.


def test_time_budget_stops_checkpoints_and_final_evaluates(tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(
        num_train_steps=1000,
        max_train_minutes=1e-4,
        eval_every_steps=0,
        **{"checkpoint.async_save": False},
    )
    result = loop.train_and_evaluate(config, str(workdir))
    stopped = result["step"]
    assert 1 <= stopped < 1000 and not result["preempted"]
    assert "test_exact_match" in result  # The final evaluation ran.
    assert ckpt_lib.complete_steps(workdir / "checkpoints")[-1] == stopped
    minutes = [r["train_minutes"] for r in records(workdir) if "train_minutes" in r]
    assert minutes and minutes[-1] >= 1e-4
    # A resumed run finds the budget spent by the first one: no step, the final evaluation only.
    again = loop.train_and_evaluate(config, str(workdir))
    assert again["step"] == stopped and "test_exact_match" in again
    # A larger budget continues from there.
    more = loop.train_and_evaluate(
        tiny_config(num_train_steps=stopped + 3, max_train_minutes=60.0), str(workdir)
    )
    assert more["step"] == stopped + 3


def test_early_stopping_after_patience_evaluations(tmp_path):
    # Learning rate 0: every evaluation is the same, so only the first one is a new best.
    config = tiny_config(
        num_train_steps=40,
        eval_every_steps=2,
        **{
            "optimizer.learning_rate": 0.0,
            "optimizer.schedule": "constant",
            "checkpoint.best_metric": "eval_loss",
            "checkpoint.best_mode": "min",
            "eval.task_metric": "none",
            "eval.final_split": "",
            "eval.early_stopping_patience": 2,
        },
    )
    result = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["step"] == 6  # Evaluations at 2 (best), 4, 6: two without a new best.


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("avg") / "run"
    config = tiny_config(
        num_train_steps=6,
        checkpoint_every_steps=2,
        eval_every_steps=0,
        **{
            "checkpoint.max_to_keep": 3,
            "checkpoint.average_last": 3,
            "checkpoint.async_save": False,
        },
    )
    return workdir, loop.train_and_evaluate(config, str(workdir))


def numpy_mean_of_steps(workdir: Path, steps: list[int]):
    restored = workdir_lib.restore_from_workdir(workdir, step=steps[0])
    trees = [workdir_lib.restore_from_workdir(workdir, step=s).params for s in steps]
    return restored, jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *trees)


def test_average_last_scores_and_saves_the_mean(averaged_run):
    workdir, result = averaged_run
    assert result["averaged_checkpoints"] == 3 and "averaged_test_exact_match" in result
    assert ckpt_lib.complete_steps(workdir / "checkpoints") == [2, 4, 6]
    _, want = numpy_mean_of_steps(workdir, [2, 4, 6])
    averaged = workdir_lib.restore_from_workdir(workdir, checkpoint="averaged")
    assert averaged.step == 6
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), averaged.params, want
    )
    latest = workdir_lib.restore_from_workdir(workdir)
    assert any(
        not np.allclose(a, b)
        for a, b in zip(
            jax.tree.leaves(latest.params), jax.tree.leaves(averaged.params), strict=True
        )
    )


def test_decode_average_checkpoints_matches_saved_average(averaged_run, tmp_path):
    workdir, _ = averaged_run
    source = tmp_path / "in.txt"
    source.write_text("Saturday 9 May 2018\n3 March 1999\n")
    outputs = {}
    for name, kwargs in (
        ("on_load", dict(average_checkpoints=3)),
        ("saved", dict(checkpoint="averaged")),
    ):
        out = tmp_path / f"{name}.txt"
        summary = decode_run.run_decode(
            decode_run.DecodeOptions(
                workdir=str(workdir), input=str(source), output=str(out), progress=False, **kwargs
            )
        )
        assert summary["checkpoint_step"] == 6
        outputs[name] = out.read_text()
    assert outputs["on_load"] == outputs["saved"] and len(outputs["saved"].splitlines()) == 2
    on_load = workdir_lib.restore_from_workdir(workdir, average=2)
    _, want = numpy_mean_of_steps(workdir, [4, 6])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), on_load.params, want
    )


def test_averaging_option_errors(averaged_run, tmp_path):
    workdir, _ = averaged_run
    with pytest.raises(ValueError, match="--average_checkpoints averages"):
        workdir_lib.restore_from_workdir(workdir, checkpoint="best", average=2)
    with pytest.raises(ValueError, match="must be >= 0"):
        workdir_lib.restore_from_workdir(workdir, average=-1)
    other = tmp_path / "copy"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.json").write_text((workdir / "config.json").read_text())
    import shutil

    shutil.copytree(workdir / "tokenizer", other / "tokenizer")
    shutil.copytree(workdir / "checkpoints" / "6", other / "checkpoints" / "6")
    with pytest.raises(FileNotFoundError, match="no averaged checkpoint"):
        workdir_lib.restore_from_workdir(other, checkpoint="averaged")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_train_minutes": -1.0}, "max_train_minutes must be a finite number >= 0"),
        ({"max_train_minutes": float("nan")}, "max_train_minutes must be a finite number >= 0"),
        (
            {"eval.early_stopping_patience": 2, "checkpoint.best_metric": ""},
            "early_stopping_patience needs config.checkpoint.best_metric",
        ),
        (
            {"checkpoint.average_last": 4, "checkpoint.max_to_keep": 3},
            "average_last=4 needs checkpoints enabled and config.checkpoint.max_to_keep >= 4",
        ),
        ({"checkpoint.average_last": 2, "eval.final_split": ""}, "average_last needs"),
    ],
)
def test_stop_and_average_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        experiment.validate_config(tiny_config(**overrides))


def test_split_config_arg():
    assert experiment.split_config_arg(None, ("fast",)) == (None, None)
    assert experiment.split_config_arg("fast", ("fast",)) == ("fast", None)
    assert experiment.split_config_arg("fast:/d/x", ("fast",)) == ("fast", "/d/x")
    assert experiment.split_config_arg("/d/x", ("fast",)) == (None, "/d/x")


def ema_config(num_train_steps: int) -> ml_collections.ConfigDict:
    return tiny_config(
        num_train_steps=num_train_steps,
        checkpoint_every_steps=1,
        eval_every_steps=0,
        **{
            "optimizer.ema_decay": 0.6,
            "optimizer.schedule": "constant",  # The same at every step whatever the length.
            "checkpoint.max_to_keep": 4,
            "checkpoint.async_save": False,
        },
    )


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ema") / "run"
    return workdir, loop.train_and_evaluate(ema_config(4), str(workdir))


def test_ema_is_scored_saved_and_equals_numpy_average_of_the_steps(ema_run, tmp_path):
    workdir, result = ema_run
    assert "ema_test_exact_match" in result and "test_exact_match" in result
    assert ckpt_lib.complete_steps(workdir / "ema") == [4]
    ema = workdir_lib.restore_from_workdir(workdir, checkpoint="ema")
    assert ema.step == 4
    # Independent reference: the bias-corrected EMA of the parameters saved after steps 1..4.
    trees = [workdir_lib.restore_from_workdir(workdir, step=s).params for s in (1, 2, 3, 4)]
    weights = [0.4 * 0.6 ** (3 - i) for i in range(4)]
    want = jax.tree.map(
        lambda *xs: sum(w * np.asarray(x) for w, x in zip(weights, xs, strict=True)) / (1 - 0.6**4),
        *trees,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ema.params, want
    )
    source = tmp_path / "in.txt"
    source.write_text("Saturday 9 May 2018\n")
    summary = decode_run.run_decode(
        decode_run.DecodeOptions(
            workdir=str(workdir),
            checkpoint="ema",
            input=str(source),
            output=str(tmp_path / "out.txt"),
            progress=False,
        )
    )
    assert summary["checkpoint_step"] == 4 and len((tmp_path / "out.txt").read_text()) > 1
    with pytest.raises(ValueError, match="--checkpoint=ema or --checkpoint_step"):
        workdir_lib.restore_from_workdir(workdir, checkpoint="ema", step=2)


def test_ema_resumes_exactly(ema_run, tmp_path):
    workdir, _ = ema_run
    resumed = tmp_path / "resumed"
    loop.train_and_evaluate(ema_config(2), str(resumed))
    loop.train_and_evaluate(ema_config(4), str(resumed))  # num_train_steps may change.
    straight = workdir_lib.restore_from_workdir(workdir, checkpoint="ema").params
    again = workdir_lib.restore_from_workdir(resumed, checkpoint="ema").params
    jax.tree.map(np.testing.assert_array_equal, straight, again)
    changed = ema_config(5)
    changed.optimizer.ema_decay = 0.9
    with pytest.raises(loop.SetupError, match="optimizer.ema_decay: 0.6 -> 0.9"):
        loop.train_and_evaluate(changed, str(resumed))


def test_no_ema_checkpoint_is_named(averaged_run):
    workdir, _ = averaged_run
    with pytest.raises(FileNotFoundError, match=r"no ema checkpoint in .*optimizer.ema_decay"):
        workdir_lib.restore_from_workdir(workdir, checkpoint="ema")
