"""Checks the carried wheel folder and picks the wheels to install on the GPU machine.

    python benchmarks/gpu_wheels.py WHEEL_DIR [--python 3.12]

Standard library and `packaging` only (it runs before anything is installed). It checks that
every wheel in WHEEL_DIR installs on CPython 3.12 / manylinux x86_64, that no name comes in
two versions, and that every requirement of every wheel (extras aside, markers evaluated for
Linux and that Python) is met by another carried wheel or by a package the GPU machine has
(`GPU_MACHINE_HAS`, its image's package list). Where a requirement names a package the
machine has but this interpreter's installed version misses the specifier, the carried wheel
of that name is installed too (`CONDITIONAL`: protobuf, which googleapis-common-protos wants
>= 6.33.5, and etils, which tensorflow-datasets wants >= 1.9.1); without one that is a
warning (the install goes on; the import check after it tells).

Prints the wheel paths to install, one a line, on stdout; problems and warnings on stderr;
exit 1 on a problem (a wheel that cannot install, two versions, an unmet requirement).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

# The GPU image's packages that the carried wheels rely on (read from the device machine's
# package list, 2026-11-17): these are not carried unless too old there.
GPU_MACHINE_HAS = {
    canonicalize_name(n)
    for n in """absl-py attrs certifi charset-normalizer cloudpickle einops
    etils fsspec idna jax jaxlib flax optax orbax-checkpoint chex numpy packaging protobuf psutil
    pyarrow pyyaml requests six tqdm typing-extensions urllib3 wrapt zipp sentencepiece
    sacrebleu matplotlib tensorboard msgpack""".split()
}
# Carried only when the machine's own copy misses a carried wheel's requirement.
CONDITIONAL = {canonicalize_name("protobuf"), canonicalize_name("etils")}


def _cp_version(interpreter: str) -> tuple[int, int] | None:
    """'cp312' -> (3, 12); None for anything else."""
    if not interpreter.startswith("cp") or len(interpreter) < 4:
        return None
    return int(interpreter[2]), int(interpreter[3:])


def _compatible(tags, python: str) -> bool:
    target = tuple(int(x) for x in python.split(".")[:2])
    for tag in tags:
        if tag.platform != "any" and not (
            tag.platform.endswith("_x86_64") and tag.platform.startswith("manylinux")
        ):
            continue
        version = _cp_version(tag.interpreter)
        if (
            tag.interpreter in ("py3", "py2.py3")
            or version == target
            or (tag.abi == "abi3" and version is not None and version <= target)
        ):
            return True
    return False


def _requirements(path: Path) -> list[Requirement]:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode()
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def check(wheel_dir: Path, python: str) -> tuple[list[Path], list[str]]:
    """(wheels to install, problems)."""
    problems: list[str] = []
    wheels: dict[str, tuple[Path, str]] = {}
    for path in sorted(wheel_dir.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(path.name)
        if not _compatible(tags, python):
            problems.append(f"{path.name}: not installable on CPython {python} manylinux x86_64")
        if name in wheels:
            problems.append(f"{name}: two versions ({wheels[name][0].name}, {path.name})")
        wheels[name] = (path, str(version))
    env = {
        "python_version": python,
        "python_full_version": python + ".0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "extra": "",
    }
    needed = {n for n in wheels if n not in CONDITIONAL}
    for name in sorted(wheels):
        for req in _requirements(wheels[name][0]):
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            dep = canonicalize_name(req.name)
            if dep in wheels and dep not in CONDITIONAL:
                continue
            if dep not in GPU_MACHINE_HAS and dep not in wheels:
                problems.append(f"{name} needs {req}: neither carried nor on the GPU machine")
                continue
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                have = None
            if (
                have is not None
                and req.specifier
                and not req.specifier.contains(have, prereleases=True)
            ):
                if dep in wheels:
                    needed.add(dep)
                else:
                    print(
                        f"gpu_wheels: warning: {name} needs {req}; installed here: {have}",
                        file=sys.stderr,
                    )
    return [wheels[n][0] for n in sorted(needed)], problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel_dir", type=Path)
    parser.add_argument("--python", default="3.12", help="target CPython version")
    args = parser.parse_args(argv)
    if not args.wheel_dir.is_dir():
        print(f"gpu_wheels: no wheel folder {args.wheel_dir}", file=sys.stderr)
        return 1
    install, problems = check(args.wheel_dir, args.python)
    for problem in problems:
        print(f"gpu_wheels: {problem}", file=sys.stderr)
    for path in install:
        print(path)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
