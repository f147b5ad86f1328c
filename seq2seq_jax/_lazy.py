"""Re-exports resolved on first use (PEP 562), for packages whose `__init__` must stay cheap.

`seq2seq_jax` itself (so `python -m seq2seq_jax.train` can re-execute before JAX loads) and
`seq2seq_jax.inference` (so `load_exported` never imports the model code) use it. Standard
library only; imports nothing from the package.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`, whose module globals are `namespace`:
    `exports` maps each re-exported name to the module that defines it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # Later lookups skip __getattr__.
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
