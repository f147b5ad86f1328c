"""One command for every benchmark: `python -m benchmarks.run [--quick]`.

Prints one JSON line per figure, `{"name", "value", "unit"}` plus `"peer_value"` and `"ratio"`
(ours / peer, higher is better) where the PyTorch peer measured the same thing in this same
invocation (subprocesses of ../shared/bench/torch_rnnsearch.py and torch_transformer.py). Peer
figures are skipped, with the reason on stderr, when torch or the peer files are absent.

Groups (`--only`, comma-separated): machine, matmul, train, decode, attention, pipeline.
Sizes: the issue's by default; `--quick` fewer repeats at the same sizes; `--tiny` tiny sizes
(for testing the harness; the figures mean nothing). `--rounds N` repeats the whole measurement
N times and prints, per figure, the round with the median ratio (value without a peer): on a
shared machine that is steadier than one round.
"""

from __future__ import annotations

if __name__ == "__main__":  # Before JAX loads (seq2seq_jax.hugepages).
    from seq2seq_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages("benchmarks.run")

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

from benchmarks import attention_memory, decode_bench, matmul_peak, train_bench
from benchmarks import peer as peer_lib
from benchmarks.settings import PRESETS, BenchSettings
from benchmarks.timing import Figure, figure
from seq2seq_jax import hugepages

GROUPS = ("machine", "matmul", "train", "decode", "attention", "pipeline")
FAMILIES = tuple(train_bench.PRESETS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repeats, same sizes")
    size.add_argument("--tiny", action="store_true", help="tiny sizes (harness tests)")
    p.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups to run")
    p.add_argument("--models", default=",".join(FAMILIES), help=",".join(FAMILIES))
    p.add_argument("--no-peer", action="store_true", help="do not run the PyTorch peers")
    p.add_argument(
        "--peer-dir",
        default=None,
        help=f"peer directory (default ${peer_lib.PEER_DIR_ENV} or ../shared/bench)",
    )
    p.add_argument("--peer-threads", type=int, default=0, help="peer torch threads (0: default)")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure everything N times; print each figure's median round",
    )
    p.add_argument("--output", default=None, help="also append the JSON lines to this file")
    args = p.parse_args(argv)
    for name, chosen, known in (("--only", args.only, GROUPS), ("--models", args.models, FAMILIES)):
        unknown = sorted(set(chosen.split(",")) - set(known))
        if unknown:
            p.error(f"{name}: unknown {unknown}; known: {', '.join(known)}")
    return args


def machine_figures() -> list[Figure]:
    """What the figures were measured on."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
    return [
        figure(
            "machine/cpu_cores",
            os.cpu_count() or 0,
            "cores",
            processor=platform.processor() or platform.machine(),
            backend=jax.default_backend(),
            devices=jax.device_count(),
            jax=jax.__version__,
            loadavg_1min=round(load, 2),
            transparent_hugepages=hugepages.thp_mode(),
            glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""),
        )
    ]


def _peers(
    args: argparse.Namespace,
    settings: BenchSettings,
    families: Sequence[str],
    modes: tuple[str, ...],
) -> dict[str, dict[str, Any]]:
    """family -> mode -> the peer's record; unavailable peers reported on stderr."""
    if args.no_peer:
        return {}
    directory = peer_lib.peer_dir(args.peer_dir)
    by_peer: dict[str, dict[str, Any] | None] = {}
    for family in families:
        name = peer_lib.PEER_OF[family]
        if name in by_peer:
            continue
        try:
            by_peer[name] = peer_lib.run_peer(
                name,
                settings,
                train_bench.model_config(name, settings),
                modes=modes,
                directory=directory,
                threads=args.peer_threads,
            )
        except peer_lib.PeerUnavailable as e:
            by_peer[name] = None
            print(
                f"benchmarks.run: peer figures of {name} {'/'.join(modes)} skipped: {e}",
                file=sys.stderr,
            )
    return {f: by_peer[peer_lib.PEER_OF[f]] for f in families if by_peer[peer_lib.PEER_OF[f]]}


def _pipeline(quick: bool) -> list[Figure]:
    """The data issue's input-pipeline figures (benchmarks.pipeline_bench), if present."""
    try:
        from benchmarks import pipeline_bench
    except ImportError as e:
        print(f"benchmarks.run: pipeline figures skipped: {e}", file=sys.stderr)
        return []
    return list(pipeline_bench.run(quick))


def run(args: argparse.Namespace, emit: Callable[[Figure], None]) -> None:
    """Runs the chosen groups, emitting each figure as soon as it is measured."""
    settings = PRESETS["tiny" if args.tiny else "quick" if args.quick else "full"]
    groups = set(args.only.split(","))
    families = tuple(args.models.split(","))
    emit_all = lambda figures: [emit(f) for f in figures]
    if "machine" in groups:
        emit_all(machine_figures())
    peak = None
    if "matmul" in groups or "train" in groups:
        peak_figures = matmul_peak.run(settings.matmul_size, settings.matmul_repeats)
        peak = peak_figures[0]["value"] * 1e9
        emit_all(peak_figures)
    if "train" in groups:
        peers = {k: v.get("train") for k, v in _peers(args, settings, families, ("train",)).items()}
        for family in families:
            emit_all(train_bench.run(settings, families=(family,), peak_flops=peak, peers=peers))
    if "decode" in groups:
        peers = _peers(args, settings, families, ("greedy", "beam"))
        emit_all(decode_bench.run(settings, families=families, peers=peers))
    if "attention" in groups:
        emit_all(attention_memory.run(settings))
    if "pipeline" in groups:
        emit_all(_pipeline(quick=args.quick or args.tiny))


def median_round(rounds: list[list[Figure]]) -> list[Figure]:
    """Per figure, the record of the round with the median ratio (or value, without a peer).

    Taking one whole record keeps value, peer value and ratio from the same side-by-side
    round; `rounds` and the `spread` (min, max) of what was ranked are added.
    """
    by_name: dict[str, list[Figure]] = {}
    for records in rounds:
        for record in records:
            by_name.setdefault(record["name"], []).append(record)
    merged = []
    for records in by_name.values():
        key = "ratio" if all("ratio" in r for r in records) else "value"
        ranked = sorted(records, key=lambda r: r[key])
        chosen = dict(ranked[(len(ranked) - 1) // 2])
        chosen.update(rounds=len(records), spread=[ranked[0][key], ranked[-1][key]])
        merged.append(chosen)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    sink = open(args.output, "a") if args.output else None  # noqa: SIM115

    def emit(record: Figure) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()

    try:
        if args.rounds <= 1:
            run(args, emit)
        else:
            rounds: list[list[Figure]] = []
            for _ in range(args.rounds):
                rounds.append([])
                run(args, rounds[-1].append)
            for record in median_round(rounds):
                emit(record)
    finally:
        if sink:
            sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
