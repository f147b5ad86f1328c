"""Parameter initialisation schemes chosen by `ModelConfig.init_scheme`.

'flax' keeps the modules' own initialisers (Linen defaults: embeddings N(0, 1/E), LeCun-normal
kernels, zero biases). 'torch' redraws the parameter tree the way PyTorch's layers initialise
themselves (shared/bench/torch_rnnsearch.py is built from them), for parity with PyTorch peers:

- token and position tables (`embedding`): N(0, 1), as `nn.Embedding`;
- a Dense kernel [fan_in, ..., out] and its bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as
  `nn.Linear`;
- a recurrent cell (a module with `input` and `hidden` Dense children): kernels and biases
  U(-1/sqrt(H), 1/sqrt(H)) with H the hidden size, as `nn.GRU` / `nn.GRUCell`;
- the additive-attention score vector `v` [heads, A]: U(-1/sqrt(A), 1/sqrt(A)) (`nn.Linear(A, 1)`);
- everything else (layer norms, gains, the tied output bias) keeps its Flax value.

Differences that remain on purpose: our GRU folds the context part of the decoder's input kernel
into `context_proj` (same bound 1/sqrt(H) only when the context width equals H), and PyTorch's
`padding_idx` row is not zeroed (padding never reaches a loss or an unmasked state here).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from seq2seq_jax.models.config import INIT_SCHEMES

PyTree = Any


def _uniform(key: jax.Array, like: jax.Array, bound: float) -> jax.Array:
    return jax.random.uniform(key, like.shape, jnp.float32, -bound, bound).astype(like.dtype)


def torch_style(params: PyTree, key: jax.Array) -> PyTree:
    """Redraws `params` with PyTorch's default initialisation rules (module docstring).

    Args:
      params: a model's parameter tree (nested dicts, e.g. `variables['params']`).
      key: PRNG key; each leaf gets `fold_in(key, its index in sorted path order)`.

    Returns:
      A tree of the same structure, shapes and dtypes.
    """
    flat = traverse_util.flatten_dict(params)
    out = dict(flat)
    for index, path in enumerate(sorted(flat)):
        leaf, name, parent = flat[path], path[-1], path[:-1]
        leaf_key = jax.random.fold_in(key, index)
        grand = parent[:-1]
        in_cell = parent[-1:] in (("input",), ("hidden",)) and (
            grand + ("input", "kernel") in flat and grand + ("hidden", "kernel") in flat
        )
        if name == "embedding":
            out[path] = jax.random.normal(leaf_key, leaf.shape, jnp.float32).astype(leaf.dtype)
        elif name in ("kernel", "bias") and in_cell:
            hidden = flat[grand + ("hidden", "kernel")].shape[0]
            out[path] = _uniform(leaf_key, leaf, 1.0 / math.sqrt(hidden))
        elif name == "kernel" and leaf.ndim >= 2:
            out[path] = _uniform(leaf_key, leaf, 1.0 / math.sqrt(math.prod(leaf.shape[:-1])))
        elif name == "bias" and parent + ("kernel",) in flat:
            kernel = flat[parent + ("kernel",)]
            out[path] = _uniform(leaf_key, leaf, 1.0 / math.sqrt(math.prod(kernel.shape[:-1])))
        elif name == "v" and leaf.ndim == 2:
            out[path] = _uniform(leaf_key, leaf, 1.0 / math.sqrt(leaf.shape[-1]))
    return traverse_util.unflatten_dict(out)


def apply_scheme(scheme: str, params: PyTree, key: jax.Array) -> PyTree:
    """`params` under `scheme` ('flax': unchanged; 'torch': `torch_style`).

    Raises:
      ValueError: unknown scheme, listing the known ones.
    """
    if scheme == "flax":
        return params
    if scheme == "torch":
        return torch_style(params, key)
    raise ValueError(f"model.init_scheme={scheme!r} is not one of {list(INIT_SCHEMES)}")
