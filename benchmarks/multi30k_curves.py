"""Learning curves of a training workdir beside the PyTorch peer's log, for time-to-quality.

    python -m benchmarks.multi30k_curves --workdir=W [--workdir=W2 ...] --peer_log=PEER.jsonl \
        [--output=curves.png]

`PEER.jsonl` is what `../shared/bench/torch_multi30k.py` prints (a JSON line every 100 steps with
`loss`, `minutes`, `tokens_per_s`, then one per evaluation). The peer logs PyTorch's
label-smoothed cross-entropy; a workdir logs the same cross-entropy minus the entropy of the
smoothed target (so that 0 is perfect). The workdir's curve is shifted back by that entropy
(`smoothed_target_entropy`, 1.224 nats for smoothing 0.1 over 8000 pieces), so both curves are
cross-entropies against the same smoothed targets and compare directly. Prints, per
run, the loss at the same counts of real target tokens seen and at the same minutes, the real
target tokens/s, padding, and the final scores, as JSON lines; writes both curves (loss against
tokens seen and against minutes) to one PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINTS_M_TOKENS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
CHECKPOINTS_MINUTES = (5.0, 10.0, 20.0, 30.0)


def smoothed_target_entropy(smoothing: float, vocab: int) -> float:
    """Entropy of the smoothed target: 1 - smoothing on the label, the rest spread evenly over
    the other `vocab - 1` pieces (seq2seq_jax.training.steps)."""
    if smoothing <= 0:
        return 0.0
    rest = smoothing / (vocab - 1)
    return float(-(1 - smoothing) * np.log(1 - smoothing) - smoothing * np.log(rest))


def workdir_curve(workdir: Path) -> dict[str, Any]:
    """(tokens seen, minutes, train cross-entropy) per logged window of a workdir."""
    from seq2seq_jax.data import load_tokenizers
    from seq2seq_jax.training.experiment import load_config
    from seq2seq_jax.training.metrics_writer import read_metrics
    from seq2seq_jax.workdir import PARAMS_ONLY_KINDS

    config = load_config(workdir)
    if config.data.tokenizer != "sentencepiece":
        raise ValueError(f"{workdir}: the entropy offset needs a SentencePiece vocabulary")
    # The target vocabulary the loss was smoothed over (restricted ones are smaller).
    vocab = load_tokenizers(str(workdir / "tokenizer"))[1].vocab_size
    offset = smoothed_target_entropy(float(config.label_smoothing), int(vocab))
    records = read_metrics(workdir / "metrics.jsonl")
    tokens, minutes, loss, padding, last_step = [], [], [], [], 0
    seen = 0.0
    for r in records:
        if "train_loss" not in r:
            continue
        steps = r["step"] - last_step
        last_step = r["step"]
        seen += steps * float(r.get("train_target_tokens", 0.0))
        tokens.append(seen)
        minutes.append(float(r.get("train_minutes", 0.0)))
        loss.append(None if r["train_loss"] is None else r["train_loss"] + offset)
        padding.append(r.get("train_padding"))
    # The final evaluation's scores: the last checkpoint's, then each parameters-only kind's
    # (`averaged_<split>_...`, `ema_<split>_...`).
    split = config.eval.final_split
    prefixes = (f"{split}_", *(f"{kind}_{split}_" for kind in PARAMS_ONLY_KINDS))
    finals = {k: v for r in records for k, v in r.items() if split and k.startswith(prefixes)}
    rate = tokens[-1] / (60 * minutes[-1]) if minutes and minutes[-1] else None
    return {
        "name": workdir.name,
        "tokens": tokens,
        "minutes": minutes,
        "loss": loss,
        "entropy_offset": round(offset, 4),
        "tokens_per_second": rate,
        "steps": last_step,
        "padding": float(np.nanmean([p for p in padding if p is not None])) if padding else None,
        "final": finals,
    }


def peer_curve(log: Path) -> dict[str, Any]:
    """The same from the peer's JSON lines."""
    tokens, minutes, loss, evals, steps = [], [], [], [], 0
    for line in log.read_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "loss" in r and "tokens_per_s" in r:
            tokens.append(r["tokens_per_s"] * r["minutes"] * 60)
            minutes.append(r["minutes"])
            loss.append(r["loss"])
            steps = r["step"]
        elif "bleu" in r:
            evals.append(
                {
                    k: r[k]
                    for k in (
                        "eval",
                        "beam",
                        "bleu",
                        "chrf",
                        "decode_s",
                        "train_minutes",
                        "steps",
                        "epochs",
                    )
                    if k in r
                }
            )
    rate = tokens[-1] / (60 * minutes[-1]) if minutes else None
    return {
        "name": "pytorch_peer",
        "tokens": tokens,
        "minutes": minutes,
        "loss": loss,
        "tokens_per_second": rate,
        "steps": steps,
        "padding": None,
        "final": evals,
    }


def _at(xs: list[float], ys: list[float], x: float, window: int = 3) -> float | None:
    """Mean of the `window` logged losses nearest before `x` (None past the curve's end)."""
    idx = [i for i, v in enumerate(xs) if v <= x]
    if not idx or xs[-1] < x * 0.98:
        return None
    chosen = [ys[i] for i in idx[-window:] if ys[i] is not None]
    return round(float(np.mean(chosen)), 3) if chosen else None


def summary(curve: dict[str, Any]) -> dict[str, Any]:
    out = {k: curve[k] for k in ("name", "steps", "tokens_per_second", "padding", "final")}
    out["loss_at_million_tokens"] = {
        str(m): _at(curve["tokens"], curve["loss"], m * 1e6) for m in CHECKPOINTS_M_TOKENS
    }
    out["loss_at_minutes"] = {
        str(m): _at(curve["minutes"], curve["loss"], m) for m in CHECKPOINTS_MINUTES
    }
    return out


def plot(curves: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in curves:
        axes[0].plot(np.asarray(c["tokens"]) / 1e6, c["loss"], label=c["name"])
        axes[1].plot(c["minutes"], c["loss"], label=c["name"])
    axes[0].set_xlabel("real target tokens seen (millions)")
    axes[1].set_xlabel("training minutes")
    for ax in axes:
        ax.set_ylabel("train cross-entropy vs smoothed targets (nats/token)")
        ax.set_ylim(1.5, 6.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", action="append", default=[], help="training workdir (repeat)")
    p.add_argument("--peer_log", default=None, help="torch_multi30k.py's output")
    p.add_argument("--output", default=None, help="PNG of the curves")
    a = p.parse_args(argv)
    curves = [workdir_curve(Path(w)) for w in a.workdir]
    if a.peer_log:
        curves.append(peer_curve(Path(a.peer_log)))
    if not curves:
        p.error("give --workdir and/or --peer_log")
    for c in curves:
        print(json.dumps(summary(c)))
    if a.output:
        plot(curves, Path(a.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
