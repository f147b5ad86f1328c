"""metrics.jsonl, TensorBoard events and the learning-curve PNG."""

import math

from seq2seq_jax.training.metrics_writer import (
    MetricsWriter,
    plot_learning_curves,
    read_metrics,
)


def read_event_scalars(directory):
    """Scalars of the TensorBoard event files, read back with tensorboardX's protobufs."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in directory.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos:pos + 8], "little")
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_jsonl_tensorboard_resume_and_plot(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        writer.write(10, {"train_loss": 2.5, "learning_rate": 1e-3})
        writer.write(20, {"train_loss": 1.5})
        writer.write(20, {"eval_loss": float("nan"), "eval_exact_match": 50.0})
        writer.write(30, {"train_loss": 1.0})
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records[0] == {"step": 10, "train_loss": 2.5, "learning_rate": 1e-3}
    assert records[2]["eval_loss"] is None  # NaN is written as null (valid JSON)
    scalars = read_event_scalars(tmp_path / "tensorboard")
    assert scalars["train_loss"] == [(10, 2.5), (20, 1.5), (30, 1.0)]
    assert math.isnan(scalars["eval_loss"][0][1])

    with MetricsWriter(tmp_path, tensorboard=False) as writer:  # A run resumed from step 20.
        writer.drop_after(20)
        writer.write(30, {"train_loss": 0.9})
    steps = [(r["step"], r.get("train_loss")) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == [(10, 2.5), (20, 1.5), (20, None), (30, 0.9)]

    png = plot_learning_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_disabled_writer_writes_nothing(tmp_path):
    with MetricsWriter(tmp_path, enabled=False) as writer:
        writer.write(1, {"train_loss": 1.0})
        writer.drop_after(0)
    assert list(tmp_path.iterdir()) == []
