"""The package's import graph against the dependency direction of docs/ARCHITECTURE.md.

Reads every module's imports (ast: top-level, function-level and TYPE_CHECKING imports alike)
and fails on an edge between sub-packages that the documented direction does not allow, and on
any cycle between sub-packages.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seq2seq_jax"

# Each part of the package and the parts it may import (docs/ARCHITECTURE.md, "Dependency
# direction"). Leaves first; entry points last.
ALLOWED: dict[str, set[str]] = {
    "ops": set(),
    "hugepages": set(),
    "workdir": set(),
    "evaluation": set(),
    "layers": {"ops"},
    "models": {"layers", "ops"},
    "decoding": {"ops"},
    "data": {"workdir"},
    "inference": {"models", "decoding", "data", "evaluation", "workdir", "layers", "ops"},
    "training": {
        "models",
        "decoding",
        "data",
        "evaluation",
        "workdir",
        "inference",
        "layers",
        "ops",
    },
    "train": {"training", "workdir", "data", "models", "hugepages"},
    "decode": {"inference", "hugepages"},
    "export": {"inference", "workdir", "hugepages"},
}


def _part(module: str) -> str | None:
    """`seq2seq_jax.training.loop` -> 'training'; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "seq2seq_jax" else None


def _imports(path: Path) -> set[str]:
    """The seq2seq_jax modules imported anywhere in `path` (absolute and relative imports)."""
    tree = ast.parse(path.read_text(), str(path))
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m.startswith("seq2seq_jax.")}


def package_edges() -> dict[tuple[str, str], list[str]]:
    """`{(importer part, imported part): [file, ...]}` over the whole package."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _part(module)
        if source is None or source == "__init__":
            continue
        for imported in _imports(path):
            target = _part(imported)
            if target and target != source and target in ALLOWED:
                edges.setdefault((source, target), []).append(str(path.relative_to(PACKAGE)))
    return edges


def test_every_part_of_the_package_is_placed_in_the_documented_direction():
    parts = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").is_file())
        and p.name != "__init__.py"
        and not p.name.startswith("_")
    }
    assert parts == set(ALLOWED), f"parts without a documented place: {parts ^ set(ALLOWED)}"


def test_no_import_against_the_documented_direction():
    bad = {f"{a} -> {b}": files for (a, b), files in package_edges().items() if b not in ALLOWED[a]}
    assert not bad, f"imports against docs/ARCHITECTURE.md's direction: {bad}"


def test_no_cycle_between_parts():
    graph: dict[str, set[str]] = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(trail + [node, nxt])}")
            if not state.get(nxt):
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The graph reader finds function-level and relative imports (so the tests above can
    fail): a fake part importing upwards is reported."""
    fake = tmp_path / "seq2seq_jax"
    (fake / "layers").mkdir(parents=True)
    (fake / "layers" / "bad.py").write_text(
        "def f():\n    from seq2seq_jax.training import loop\n    from ..decoding import beam\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    edges = package_edges()
    assert ("layers", "training") in edges and ("layers", "decoding") in edges


SECTION = ("Args:", "Returns:", "Raises:", "Yields:", "Attributes:")


def docstring_style_problems(path: Path) -> list[str]:
    """Google-style sections whose first item is not indented 2 spaces under the header (the
    package's one docstring style)."""
    problems = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=False)
        if not doc:
            continue
        lines = doc.split("\n")
        for i, line in enumerate(lines[:-1]):
            if line.strip() in SECTION:
                item = next((x for x in lines[i + 1 :] if x.strip()), "")
                header, indent = len(line) - len(line.lstrip()), len(item) - len(item.lstrip())
                if indent > header and indent != header + 2:
                    problems.append(f"{path.name}:{node.lineno} {line.strip()}")
    return problems


def test_one_docstring_style():
    problems = [p for path in sorted(PACKAGE.rglob("*.py")) for p in docstring_style_problems(path)]
    assert not problems, f"sections not in the 2-space item style: {problems}"


def test_the_docstring_checker_sees_the_other_style(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(x):\n    """Doc.\n\n    Args:\n        x: four spaces.\n    """\n')
    assert docstring_style_problems(bad) == ["bad.py:1 Args:"]
