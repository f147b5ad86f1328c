"""Transparent huge pages for XLA's CPU buffers, by re-executing a command line once.

XLA's CPU runtime takes its buffers (parameters, activations, the step's temporaries: 361 MiB
for the RNNsearch reference train step) from glibc's `malloc`. With the kernel's transparent
huge pages in `madvise` mode (the default of many distributions), that memory is backed by 4 KiB
pages: the large matmuls then miss the TLB, and every step faults its temporaries in page by
page. glibc asks for huge pages when its `glibc.malloc.hugetlb=1` tunable is set, but tunables
are read only when a process starts, so the command-line tools (`seq2seq_jax.train`,
`seq2seq_jax.decode`, `benchmarks.run`) call `reexec_with_hugepages(module)` first thing: when it
would help, it sets the tunable in the environment and replaces the process with the same
command line (`os.execve`, same pid, nothing run twice). Measured on the 2-core development VM
with the benchmark's train step (`benchmarks.train_bench.measure_train`, 2 runs of 8 steps with
and without the tunable): the reference train step ~1,060 -> ~990 ms; the PyTorch peer is
unaffected by the tunable.

Nothing happens (no re-exec) when the tunable is already set, on non-Linux or non-glibc systems,
when transparent huge pages are `always` (already used) or `never` (unavailable), when the
process was not started as `python -m <that entry point>` (e.g. `runpy` from another program,
which must not be restarted), or when `SEQ2SEQ_JAX_HUGEPAGES=0`. The library never re-executes
anything on import: only the command-line entry points call this.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

OPT_OUT = "SEQ2SEQ_JAX_HUGEPAGES"  # "0" disables the re-exec
TUNABLE = "glibc.malloc.hugetlb"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def with_hugetlb(tunables: str | None) -> str:
    """`GLIBC_TUNABLES` with `glibc.malloc.hugetlb=1` added (other tunables kept)."""
    kept = [t for t in (tunables or "").split(":") if t]
    return ":".join([*kept, f"{TUNABLE}=1"])


_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")


def launched_as(module: str, argv: list[str]) -> bool:
    """Whether the interpreter command line `argv` (`sys.orig_argv`) is `python ... -m module`."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) == module
        if arg.startswith("-m"):
            return arg[2:] == module
        if arg in _OPTIONS_WITH_VALUE:
            next(args, None)
        elif arg == "-c" or arg == "-" or not arg.startswith("-"):
            return False  # a command string, stdin or a script: not the module
    return False


def should_reexec(environ: Mapping[str, str], *, system: str, libc: str, mode: str | None) -> bool:
    """Whether re-executing with the tunable can help (see the module docstring)."""
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if system != "Linux" or libc != "glibc" or mode != "madvise":
        return False
    return not any(t.split("=")[0] == TUNABLE for t in environ.get("GLIBC_TUNABLES", "").split(":"))


def reexec_with_hugepages(module: str) -> None:
    """Replaces this process by itself with glibc's hugetlb tunable set, when that helps.

    Call it first thing in a command-line entry point (`if __name__ == "__main__":`), before
    anything reads stdin or starts threads. Returns only when no re-exec happens.

    Args:
      module: the entry point's module name; the process is re-executed only if it was started
        as `python -m module`.
    """
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable or not launched_as(module, argv):
        return
    if not should_reexec(
        os.environ, system=platform.system(), libc=platform.libc_ver()[0], mode=thp_mode()
    ):
        return
    env = dict(os.environ, GLIBC_TUNABLES=with_hugetlb(os.environ.get("GLIBC_TUNABLES")))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
