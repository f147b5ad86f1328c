"""The command-line tools' re-exec with glibc's hugetlb tunable (`seq2seq_jax.hugepages`)."""

import os
import platform
import subprocess
import sys

import pytest

from seq2seq_jax import hugepages

LINUX = dict(system="Linux", libc="glibc", mode="madvise")


def test_should_reexec_only_where_it_helps():
    assert hugepages.should_reexec({}, **LINUX)
    assert hugepages.should_reexec({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
    assert not hugepages.should_reexec({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, **LINUX)
    assert not hugepages.should_reexec({"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=1"}, **LINUX)
    for off in ("0", "false", "off"):
        assert not hugepages.should_reexec({hugepages.OPT_OUT: off}, **LINUX)
    assert not hugepages.should_reexec({}, **dict(LINUX, system="Darwin"))
    assert not hugepages.should_reexec({}, **dict(LINUX, libc="musl"))
    for mode in ("always", "never", None):
        assert not hugepages.should_reexec({}, **dict(LINUX, mode=mode))


def test_with_hugetlb_keeps_other_tunables():
    assert hugepages.with_hugetlb(None) == "glibc.malloc.hugetlb=1"
    assert hugepages.with_hugetlb("") == "glibc.malloc.hugetlb=1"
    assert (hugepages.with_hugetlb("glibc.malloc.arena_max=2")
            == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(f) == "always"
    assert hugepages.thp_mode(tmp_path / "missing") is None


SCRIPT = ("import os, sys\n"
          "from seq2seq_jax.hugepages import reexec_with_hugepages\n"
          "print('start', sys.argv[1:], flush=True)\n"
          "reexec_with_hugepages()\n"
          "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n")


def _run(env_update):
    env = dict(os.environ, **env_update)
    env.pop("GLIBC_TUNABLES", None)
    return subprocess.run([sys.executable, "-c", SCRIPT, "a b", "--flag=1"], env=env,
                          capture_output=True, text=True, timeout=60, check=True).stdout


@pytest.mark.skipif(not hugepages.should_reexec(
    {}, system=platform.system(), libc=platform.libc_ver()[0], mode=hugepages.thp_mode()),
    reason="re-exec only happens on Linux/glibc with transparent huge pages in madvise mode")
def test_reexec_runs_the_same_command_line_once_with_the_tunable():
    out = _run({}).splitlines()
    # The script starts twice (the exec), the second time with the tunable; arguments intact.
    assert out == ["start ['a b', '--flag=1']", "start ['a b', '--flag=1']",
                   "tunables glibc.malloc.hugetlb=1 ['a b', '--flag=1']"]


def test_opt_out_runs_once_without_the_tunable():
    out = _run({hugepages.OPT_OUT: "0"}).splitlines()
    assert out == ["start ['a b', '--flag=1']", "tunables None ['a b', '--flag=1']"]
