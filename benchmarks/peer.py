"""Finds and runs the PyTorch peers in a subprocess and parses their JSON lines.

The peers live outside the package, in `../shared/bench` next to the project (override with
`--peer-dir` or the `SEQ2SEQ_JAX_PEER_DIR` environment variable):
`torch_rnnsearch.py` (the RNNsearch reference, DESIGN.md section 4) and `torch_transformer.py`
(timed through this package's `torch_transformer_peer.py` driver). Each prints one JSON line per
mode: `{"mode": "train", "tokens_per_s", "step_ms"}`, `{"mode": "greedy"|"beam",
"sentences_per_s"}`. A missing torch or peer file is reported as `PeerUnavailable` with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.settings import BenchSettings

PEER_DIR_ENV = "SEQ2SEQ_JAX_PEER_DIR"
DEFAULT_PEER_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "bench"
SCRIPTS = {"rnnsearch": "torch_rnnsearch.py", "transformer": "torch_transformer.py"}
# Benchmarked model -> its peer (the PyTorch Transformer's cross-attention is dot-product).
PEER_OF = {"rnnsearch": "rnnsearch", "transformer": "transformer", "transformer_dot": "transformer"}
_TRANSFORMER_DRIVER = Path(__file__).resolve().parent / "torch_transformer_peer.py"


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (no torch, no peer file, or it failed); the message says why."""


def peer_dir(override: str | None = None) -> Path:
    """The peer directory: `override`, else $SEQ2SEQ_JAX_PEER_DIR, else ../shared/bench."""
    return Path(override or os.environ.get(PEER_DIR_ENV) or DEFAULT_PEER_DIR)


def _command(
    family: str,
    directory: Path,
    settings: BenchSettings,
    cfg: Any,
    threads: int,
    device: str = "cpu",
    float32_matmul_precision: str = "",
) -> list[str]:
    """The peer's command line for `family` with the benchmark's sizes.

    Off the CPU both peers run through the driver (`torch_transformer_peer.py --family`),
    which moves them to `device`; torch_rnnsearch.py itself has no device option.
    """
    if family not in SCRIPTS:
        raise ValueError(f"no peer for model {family!r}; known: {sorted(SCRIPTS)}")
    script = directory / SCRIPTS[family]
    if not script.is_file():
        raise PeerUnavailable(f"peer file {script} not found (set --peer-dir or ${PEER_DIR_ENV})")
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("torch is not installed (pip install torch, or the 'bench' extra)")
    common = [
        "--vocab",
        str(settings.vocab),
        "--batch",
        str(settings.batch),
        "--src-len",
        str(settings.source_length),
        "--tgt-len",
        str(settings.target_length),
        "--steps",
        str(settings.train_steps),
        "--beam",
        str(settings.beam_size),
        "--threads",
        str(threads),
    ]
    if device != "cpu":
        common += ["--device", device]
        if float32_matmul_precision:
            common += ["--float32-matmul-precision", float32_matmul_precision]
    if family == "rnnsearch":
        sizes = ["--emb", str(settings.peer_emb), "--hidden", str(settings.peer_hidden)]
        if device == "cpu":
            return [sys.executable, str(script), *sizes, *common]
        return [
            sys.executable,
            str(_TRANSFORMER_DRIVER),
            "--peer-dir",
            str(directory),
            "--family",
            "rnnsearch",
            *sizes,
            *common,
        ]
    return [
        sys.executable,
        str(_TRANSFORMER_DRIVER),
        "--peer-dir",
        str(directory),
        "--d-model",
        str(cfg.emb_dim),
        "--layers",
        str(cfg.encoder_layers),
        "--heads",
        str(cfg.num_heads),
        "--ff",
        str(cfg.mlp_dim),
        *common,
    ]


def run_peer(
    family: str,
    settings: BenchSettings,
    cfg: Any,
    *,
    modes: tuple[str, ...],
    directory: Path,
    threads: int = 0,
    timeout_s: float = 1800.0,
    device: str = "cpu",
    float32_matmul_precision: str = "",
) -> dict[str, dict[str, Any]]:
    """Runs the peer of `family` for each mode in `modes` ('train', 'greedy', 'beam').

    Args:
      family: 'rnnsearch' or 'transformer'.
      settings: the benchmark sizes (the peer gets the same ones).
      cfg: our `ModelConfig` of that family (the Transformer peer copies its widths).
      modes: the peer's modes to run ('all': the three in one process).
      directory: the peer directory.
      threads: the peer's torch threads (0: torch's default).
      timeout_s: per-mode time limit.
      device: the torch device ('cpu', or e.g. 'cuda' through the driver).
      float32_matmul_precision: off the CPU, `torch.set_float32_matmul_precision` ('high':
        TF32, like JAX's default on a GPU; '' keeps torch's default).

    Returns:
      mode -> the peer's JSON record.

    Raises:
      PeerUnavailable: no torch, no file, a failed or silent run (with its stderr's tail).
    """
    command = _command(family, directory, settings, cfg, threads, device, float32_matmul_precision)
    results = {}
    for mode in modes:
        try:
            proc = subprocess.run(
                [*command, "--mode", mode],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise PeerUnavailable(
                f"{' '.join(command[:2])} --mode {mode} ran over {timeout_s:.0f} s"
            ) from e
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not records:
            raise PeerUnavailable(
                f"{' '.join(command[:2])} --mode {mode} failed "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
            )
        results.update({record["mode"]: record for record in records})
    return results
