"""The benchmark harness: well-formed figures at tiny sizes, FLOP counts, peer handling.

No timing is asserted (the machine is shared); what is checked is what the figures are built
from: the analytic FLOP counts against an independent count over the model's jaxpr, the ratio's
orientation, the JSON records of `python -m benchmarks.run --tiny`, the skip path of a missing
peer, and that the chunked attention's compiled memory is a fraction of the naive one's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import math
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seq2seq_jax.models import build_model

# `benchmarks/` is a top-level folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import (  # noqa: E402
    attention_memory,
    flops,
    multi30k_curves,
    peer,
    run,
    train_bench,
)
from benchmarks.settings import TINY  # noqa: E402
from benchmarks.timing import figure  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_PEER = (peer.DEFAULT_PEER_DIR / peer.SCRIPTS["rnnsearch"]).is_file()


def _jaxpr_matmul_flops(jaxpr: jax.extend.core.Jaxpr) -> float:
    """2 x multiply-adds of every dot_general, scan bodies counted once per iteration."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in contract)
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    total += repeat * _jaxpr_matmul_flops(inner)
    return total


@pytest.mark.parametrize(
    "family,overrides",
    [
        ("rnnsearch", {}),
        (
            "rnnsearch",
            {"cell_type": "lstm", "encoder_layers": 2, "decoder_layers": 2, "maxout_size": 6},
        ),
        ("transformer", {}),
        ("transformer", {"attention_type": "dot"}),
    ],
)
def test_analytic_forward_flops_equal_a_count_over_the_jaxpr(family, overrides):
    settings = dataclasses.replace(TINY, batch=3, source_length=7, target_length=5)
    cfg = train_bench.model_config(family, settings, **overrides)
    if cfg.attention_type == "dot":
        cfg = cfg.replace(attention_dim=0)
    batch = train_bench.reference_batch(settings)
    model = build_model(cfg)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch["inputs"], batch["targets"])
    jaxpr = jax.make_jaxpr(model.apply)(variables, batch["inputs"], batch["targets"])
    counted = _jaxpr_matmul_flops(jaxpr.jaxpr)
    forward = (
        flops.rnnsearch_forward_flops if family == "rnnsearch" else flops.transformer_forward_flops
    )
    analytic = forward(cfg, settings.batch, settings.source_length, settings.target_length)
    assert analytic == pytest.approx(counted, rel=1e-9)
    assert flops.train_flops(
        cfg, settings.batch, settings.source_length, settings.target_length
    ) == pytest.approx(3 * counted, rel=1e-9)


def test_train_flops_rejects_unknown_model():
    cfg = train_bench.model_config("rnnsearch", TINY)
    with pytest.raises(ValueError, match="no FLOP count for model 'mystery'"):
        flops.train_flops(dataclasses.replace(cfg, name="mystery"), 1, 1, 1)


def test_figure_ratio_is_ours_over_peer_or_inverted_for_costs():
    speed = figure("x/tokens_per_s", 300.0, "tokens/s", peer_value=200.0, batch=4)
    assert speed == {
        "name": "x/tokens_per_s",
        "value": 300.0,
        "unit": "tokens/s",
        "peer_value": 200.0,
        "ratio": 1.5,
        "batch": 4,
    }
    time = figure("x/step_time", 300.0, "ms", peer_value=600.0, lower_is_better=True)
    assert time["ratio"] == 2.0
    assert "ratio" not in figure("x/y", 1.0, "s") and "ratio" not in figure(
        "x/y", 1.0, "s", peer_value=0.0
    )


def test_reference_batch_has_the_peer_shapes_and_padding():
    settings = dataclasses.replace(TINY, batch=16, source_length=10, target_length=7)
    batch = train_bench.reference_batch(settings)
    assert batch["inputs"].shape == (16, 10) and batch["targets"].shape == (16, 7)
    lengths = (batch["inputs"] != 0).sum(axis=1)
    assert lengths.min() >= 5 and lengths.max() <= 10
    real = np.arange(10)[None] < lengths[:, None]  # left-aligned: padding only at the end
    np.testing.assert_array_equal(batch["inputs"] != 0, real)
    np.testing.assert_array_equal(batch["inputs_segmentation"], real.astype(np.int32))
    assert (batch["targets"] >= 3).all() and (batch["targets"] < settings.vocab).all()


def test_missing_peer_is_reported_with_its_path(tmp_path):
    cfg = train_bench.model_config("rnnsearch", TINY)
    with pytest.raises(peer.PeerUnavailable, match="torch_rnnsearch.py not found"):
        peer.run_peer("rnnsearch", TINY, cfg, modes=("train",), directory=tmp_path)
    with pytest.raises(ValueError, match="no peer for model 'lstm'"):
        peer.run_peer("lstm", TINY, cfg, modes=("train",), directory=tmp_path)


def test_unknown_group_is_a_usage_error():
    with pytest.raises(SystemExit), redirect_stderr(io.StringIO()):
        run.parse_args(["--only", "train,warp"])


def test_chunked_attention_compiles_to_a_fraction_of_the_naive_memory():
    naive = attention_memory.compiled_bytes(
        attention_memory.CrossAttentionBlock(32, "naive"), batch=2, length=64
    )
    chunked = attention_memory.compiled_bytes(
        attention_memory.CrossAttentionBlock(32, "chunked", chunk_size=4), batch=2, length=64
    )
    tanh_bytes = 2 * 64 * 64 * 32 * 4  # the naive [B, T, S, D] float32 tensor
    assert naive["temp"] >= tanh_bytes
    assert chunked["temp"] * 4 < naive["temp"]


def _run_tiny(argv: list[str]) -> tuple[list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        assert run.main(["--tiny", *argv]) == 0
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines], err.getvalue()


def _check_records(records: list[dict]) -> None:
    for record in records:
        assert isinstance(record["name"], str) and isinstance(record["unit"], str)
        assert math.isfinite(record["value"]) and record["value"] >= 0
        if "peer_value" in record and "ratio" in record:
            ours, theirs = record["value"], record["peer_value"]
            inverted = record["unit"] in ("ms", "s", "MiB")
            expected = theirs / ours if inverted else ours / theirs
            assert record["ratio"] == pytest.approx(expected, rel=2e-3)


def test_tiny_run_without_peer_prints_one_json_figure_per_line(tmp_path):
    records, err = _run_tiny(
        [
            "--only",
            "machine,matmul,train,decode",
            "--models",
            "rnnsearch",
            "--peer-dir",
            str(tmp_path),
        ]
    )
    _check_records(records)
    names = {r["name"] for r in records}
    assert {
        "machine/cpu_cores",
        "matmul_peak/float32",
        "train/rnnsearch/tokens_per_s",
        "train/rnnsearch/step_time",
        "train/rnnsearch/model_flops_per_step",
        "train/rnnsearch/fraction_of_matmul_peak",
        "train/rnnsearch/compile_time",
        "decode/rnnsearch/greedy/sentences_per_s",
        f"decode/rnnsearch/beam{TINY.beam_size}/sentences_per_s",
        "decode/rnnsearch/greedy_bf16/sentences_per_s",
        f"decode/rnnsearch/beam{TINY.beam_size}_bf16/sentences_per_s",
    } <= names
    dtypes = {r["name"]: r["dtype"] for r in records if r["name"].startswith("decode/")}
    assert dtypes["decode/rnnsearch/greedy_bf16/sentences_per_s"] == "bfloat16"
    assert dtypes["decode/rnnsearch/greedy/sentences_per_s"] == "float32"
    assert not any("peer_value" in r for r in records)
    assert "peer figures of rnnsearch train skipped" in err and str(tmp_path) in err
    cfg = train_bench.model_config("rnnsearch", TINY)
    model_flops = next(r for r in records if r["name"].endswith("model_flops_per_step"))
    expected = flops.train_flops(cfg, TINY.batch, TINY.source_length, TINY.target_length)
    assert model_flops["value"] == pytest.approx(expected / 1e9, rel=1e-3)


def test_peers_off_the_cpu_run_through_the_device_driver(tmp_path, monkeypatch):
    """On a GPU both peers go through torch_transformer_peer.py with --device (the peer files
    have no device option); on CPU the RNNsearch peer's own script runs, as before."""
    for script in peer.SCRIPTS.values():
        (tmp_path / script).write_text("")
    monkeypatch.setattr(peer.importlib.util, "find_spec", lambda name: object())  # "torch"
    cfg = train_bench.model_config("rnnsearch", TINY)
    cpu = peer._command("rnnsearch", tmp_path, TINY, cfg, 0)
    assert cpu[1] == str(tmp_path / "torch_rnnsearch.py") and "--device" not in cpu
    for family in ("rnnsearch", "transformer"):
        cmd = peer._command(
            family, tmp_path, TINY, train_bench.model_config(family, TINY), 0, "cuda", "high"
        )
        flag = lambda name, cmd=cmd: cmd[cmd.index(name) + 1]
        assert cmd[1].endswith("torch_transformer_peer.py")
        assert flag("--peer-dir") == str(tmp_path) and flag("--device") == "cuda"
        assert flag("--float32-matmul-precision") == "high"
        assert flag("--batch") == str(TINY.batch)
    assert flag("--d-model") == str(train_bench.model_config("transformer", TINY).emb_dim)
    rnn = peer._command("rnnsearch", tmp_path, TINY, cfg, 0, "cuda")
    assert rnn[rnn.index("--family") + 1] == "rnnsearch" and "--float32-matmul-precision" not in rnn
    assert rnn[rnn.index("--hidden") + 1] == str(TINY.peer_hidden)


@pytest.mark.skipif(not (HAS_TORCH and HAS_PEER), reason="needs torch and ../shared/bench")
def test_tiny_run_with_the_peer_gives_ratios():
    records, _ = _run_tiny(["--only", "train", "--models", "rnnsearch", "--peer-threads", "1"])
    _check_records(records)
    with_peer = {r["name"] for r in records if "ratio" in r}
    assert with_peer == {"train/rnnsearch/tokens_per_s", "train/rnnsearch/step_time"}


def test_tiny_attention_figures_compare_chunked_with_naive():
    settings = dataclasses.replace(TINY, attention_batch=2, attention_length=16)
    records = attention_memory.run(settings)
    _check_records(records)
    by_name = {r["name"]: r for r in records}
    chunked = by_name["attention/chunked/peak_memory"]
    assert chunked["peer"] == "naive"
    assert chunked["peer_value"] == by_name["attention/naive/peak_memory"]["value"]
    assert jnp.isfinite(by_name["attention/chunked/fwd_bwd_time"]["value"])


def test_median_round_keeps_one_side_by_side_round_per_figure():
    rounds = [
        [figure("t", 100.0, "tokens/s", peer_value=100.0), figure("peak", 5.0, "GFLOP/s")],
        [figure("t", 300.0, "tokens/s", peer_value=150.0), figure("peak", 9.0, "GFLOP/s")],
        [figure("t", 120.0, "tokens/s", peer_value=80.0), figure("peak", 7.0, "GFLOP/s")],
    ]
    merged = {r["name"]: r for r in run.median_round(rounds)}
    assert merged["t"]["value"] == 120.0 and merged["t"]["peer_value"] == 80.0
    assert merged["t"]["ratio"] == 1.5 and merged["t"]["spread"] == [1.0, 2.0]
    assert merged["peak"]["value"] == 7.0 and merged["peak"]["rounds"] == 3


def test_multi30k_curves_counts_tokens_seen_and_reads_every_final_kind(tmp_path):
    from seq2seq_jax import data

    workdir = tmp_path / "w"
    words = ["ein", "Hund", "läuft", "a", "dog", "runs", "über", "die", "Wiese", "the", "grass"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(5)) for i in range(200)]
    tok = data.SentencePieceTokenizer.train(texts, vocab_size=40, model_type="bpe")
    tok.save(str(workdir / "tokenizer"))
    config = {
        "data": {"tokenizer": "sentencepiece"},
        "label_smoothing": 0.1,
        "eval": {"final_split": "validation"},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    records = [
        {"step": 10, "train_loss": 3.0, "train_target_tokens": 100.0, "train_minutes": 1.0,
         "train_padding": 0.1},
        {"step": 10, "eval_bleu": 5.0},
        {"step": 30, "train_loss": 2.0, "train_target_tokens": 200.0, "train_minutes": 2.0,
         "train_padding": 0.2},
        {"step": 30, "validation_bleu": 20.0, "averaged_validation_bleu": 21.0,
         "averaged_checkpoints": 2, "ema_validation_bleu": 22.0},
    ]  # fmt: skip
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    curve = multi30k_curves.workdir_curve(workdir)
    offset = multi30k_curves.smoothed_target_entropy(0.1, tok.vocab_size)
    # Tokens seen: 10 steps of 100 real target tokens, then 20 steps of 200.
    assert curve["tokens"] == [1000.0, 5000.0]
    assert curve["tokens_per_second"] == pytest.approx(5000.0 / 120.0)
    assert curve["loss"] == pytest.approx([3.0 + offset, 2.0 + offset])
    assert curve["padding"] == pytest.approx(0.15)
    assert curve["steps"] == 30
    # The final evaluation of the last checkpoint, the mean and the moving average; no eval_.
    assert curve["final"] == {
        "validation_bleu": 20.0,
        "averaged_validation_bleu": 21.0,
        "ema_validation_bleu": 22.0,
    }
    # A uniform 40-piece target with smoothing 0.1: -(0.9 ln 0.9 + 0.1 ln(0.1 / 39)).
    assert offset == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1 / 39)))
