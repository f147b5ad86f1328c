"""metrics.jsonl, TensorBoard events and the learning-curve PNG."""

import math

from seq2seq_jax.training.metrics_writer import (
    MetricsWriter,
    plot_learning_curves,
    read_metrics,
)


def read_event_scalars(directory):
    """Scalars of the TensorBoard event files, read back with tensorboardX's protobufs, as
    TensorBoard shows them: files in name order, and a `SessionLog.START` event at step s (what
    `SummaryWriter(purge_step=s)` writes first) hides the points of steps >= s read before it
    (TensorBoard's event accumulator, `purge_orphaned_data`)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            length = int.from_bytes(data[pos : pos + 8], "little")
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and (
                event.session_log.status == event_pb2.SessionLog.START
            ):
                out = {tag: [p for p in points if p[0] < event.step] for tag, points in out.items()}
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


def test_a_resumed_writer_hides_the_stale_tensorboard_points(tmp_path):
    with MetricsWriter(tmp_path) as writer:  # The interrupted run: its checkpoint is step 20.
        for step, loss in ((10, 2.5), (20, 1.5), (30, 1.0), (40, 0.75)):
            writer.write(step, {"train_loss": loss})
    with MetricsWriter(tmp_path) as writer:  # The run resumed from step 20 redoes 30 and 40.
        writer.drop_after(20)
        writer.write(30, {"train_loss": 0.875})  # Exact in float32, as 2.5, 1.5.
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert read_event_scalars(tmp_path / "tensorboard")["train_loss"] == [
        (10, 2.5),
        (20, 1.5),
        (30, 0.875),
    ]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [10, 20, 30]
