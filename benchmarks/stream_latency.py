"""Streaming latency of `python -m seq2seq_jax.decode --stream`, as a client sees it.

`python -m benchmarks.stream_latency WORKDIR INPUT [--lines=50] [decode flags...]` starts the
decoder with `--stream`, then for each of the first N lines of INPUT writes the line, waits for
its translation and times it. Prints the first line's wait (process start, restore and
compilation included) and the median / max of the others, and the decoder's own
`latency_seconds` (arrival of a line to its written output) from its metrics file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("input")
    parser.add_argument("--lines", type=int, default=50)
    args, decode_flags = parser.parse_known_args()
    lines = Path(args.input).read_text(encoding="utf-8").splitlines()[: args.lines]
    if len(lines) < 2:
        raise SystemExit(f"{args.input}: need at least 2 lines")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "seq2seq_jax.decode",
                f"--workdir={args.workdir}",
                "--stream",
                f"--metrics_file={metrics}",
                *decode_flags,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        waits = []
        for line in lines:
            start = time.perf_counter()
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            if not proc.stdout.readline():
                raise SystemExit(f"the decoder stopped (exit code {proc.wait()})")
            waits.append(time.perf_counter() - start)
        proc.stdin.close()
        if proc.wait() != 0:
            raise SystemExit(f"the decoder failed (exit code {proc.returncode})")
        server = json.loads(metrics.read_text())["latency_seconds"]
    rest = waits[1:]
    print(
        f"line 1 (process start, restore, compile): {waits[0]:.2f} s; lines 2-{len(waits)}: "
        f"median {1000 * statistics.median(rest):.1f} ms, max {1000 * max(rest):.1f} ms; "
        f"decoder-side: median {1000 * server['median']:.1f} ms, max "
        f"{1000 * server['max']:.1f} ms"
    )


if __name__ == "__main__":
    main()
