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
    assert (
        hugepages.with_hugetlb("glibc.malloc.arena_max=2")
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(f) == "always"
    assert hugepages.thp_mode(tmp_path / "missing") is None


PROBE = (
    "import os, sys\n"
    "from seq2seq_jax.hugepages import reexec_with_hugepages\n"
    "print('start', sys.argv[1:], flush=True)\n"
    "reexec_with_hugepages('hugepage_probe')\n"
    "print('tunables', os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n"
)


def _run(tmp_path, env_update, how="module"):
    (tmp_path / "hugepage_probe.py").write_text(PROBE)
    env = dict(os.environ, **env_update)
    env.pop("GLIBC_TUNABLES", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    start = ["-m", "hugepage_probe"] if how == "module" else ["-c", PROBE]
    return subprocess.run(
        [sys.executable, *start, "a b", "--flag=1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_launched_as_recognises_only_python_dash_m_of_that_module():
    assert hugepages.launched_as("pkg.train", ["python", "-m", "pkg.train", "--x=1"])
    assert hugepages.launched_as("pkg.train", ["python", "-X", "dev", "-u", "-mpkg.train"])
    assert not hugepages.launched_as("pkg.train", ["python", "-m", "pkg.decode"])
    assert not hugepages.launched_as("pkg.train", ["python", "tool.py", "-m", "pkg.train"])
    assert not hugepages.launched_as("pkg.train", ["python", "-c", "import runpy", "-m"])
    assert not hugepages.launched_as("pkg.train", ["python"])


@pytest.mark.skipif(
    not hugepages.should_reexec(
        {}, system=platform.system(), libc=platform.libc_ver()[0], mode=hugepages.thp_mode()
    ),
    reason="re-exec only happens on Linux/glibc with transparent huge pages in madvise mode",
)
def test_reexec_runs_the_same_command_line_once_with_the_tunable(tmp_path):
    out = _run(tmp_path, {}).splitlines()
    # The module starts twice (the exec), the second time with the tunable; arguments intact.
    assert out == [
        "start ['a b', '--flag=1']",
        "start ['a b', '--flag=1']",
        "tunables glibc.malloc.hugetlb=1 ['a b', '--flag=1']",
    ]


def test_no_reexec_when_opted_out_or_not_started_as_the_module(tmp_path):
    once = ["start ['a b', '--flag=1']", "tunables None ['a b', '--flag=1']"]
    assert _run(tmp_path, {hugepages.OPT_OUT: "0"}).splitlines() == once
    assert _run(tmp_path, {}, how="command").splitlines() == once
