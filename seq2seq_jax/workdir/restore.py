"""Restoring parameters from checkpoint steps (read-only): shape checks against the model,
vocabulary growth for fine-tuning, and the mean of several checkpoints.

Shape glossary: V vocabulary, D width.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from seq2seq_jax.workdir.layout import STATE_ITEM, CheckpointError, resolve_checkpoint

PyTree = Any

log = logging.getLogger(__name__)


def _replicated_sharding() -> jax.sharding.Sharding:
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("replica",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract_tree(tree: PyTree) -> PyTree:
    """`jax.ShapeDtypeStruct`s with shardings for a tree of arrays or abstract arrays.

    Leaves keep their own sharding (a `jax.Array`'s, or a `ShapeDtypeStruct`'s `sharding=`);
    leaves without one are restored replicated over all devices.
    """
    default = None

    def one(x):
        nonlocal default
        sharding = getattr(x, "sharding", None)
        if sharding is None:
            default = default or _replicated_sharding()
            sharding = default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(one, tree)


def path_str(path: tuple[Any, ...]) -> str:
    """'/'-joined key path, e.g. `encoder/embed/embedding` (as in optim.py's param paths)."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def shapes_by_path(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """`{path: shape}` of every leaf of `tree` (arrays, abstract arrays or Orbax metadata)."""
    return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(
    saved: Mapping[str, tuple[int, ...]],
    target: Mapping[str, tuple[int, ...]],
    where: Path,
    *,
    what: str = "parameter",
) -> None:
    """Raises if `saved` and `target` differ in paths or shapes, naming every difference."""
    missing = sorted(set(target) - set(saved))
    unexpected = sorted(set(saved) - set(target))
    mismatched = sorted(k for k in set(saved) & set(target) if saved[k] != target[k])
    problems = [f"{what} {k} missing from the checkpoint" for k in missing]
    problems += [f"checkpoint {what} {k} {saved[k]} not in the model" for k in unexpected]
    problems += [
        f"{what} {k}: checkpoint shape {saved[k]} != model shape {target[k]}" for k in mismatched
    ]
    if problems:
        raise ValueError(f"checkpoint {where} does not match the model: " + "; ".join(problems))


def read_state_metadata(step_dir: Path) -> dict[str, Any]:
    """The saved `TrainState` items' metadata tree (shapes, dtypes) of a step directory."""
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(step_dir / STATE_ITEM).tree
    except Exception as e:  # Orbax raises many types for unreadable metadata; re-raise as ours.
        raise CheckpointError(
            f"corrupt checkpoint {step_dir}: cannot read its metadata ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(tree, Mapping) or "params" not in tree:
        raise CheckpointError(
            f"corrupt checkpoint {step_dir}: no saved parameters in {step_dir / STATE_ITEM}"
        )
    return dict(tree)


def embedding_vocab_sizes(params: PyTree) -> set[int]:
    """First-axis sizes of the `embedding` tables (Flax `nn.Embed`) of a parameter tree."""
    return {
        int(shape[0])
        for path, shape in shapes_by_path(params).items()
        if path.rsplit("/", 1)[-1] == "embedding" and shape
    }


def vocab_growth(
    saved: Mapping[str, tuple[int, ...]],
    target: Mapping[str, tuple[int, ...]],
    vocab_sizes: Collection[int],
) -> dict[str, int]:
    """`{path: axis}` of parameters whose shapes differ only by a growing vocabulary axis.

    A parameter qualifies when it has the same rank in both trees, exactly one axis differs,
    that axis is larger in `target`, and its new size is one of `vocab_sizes` (e.g. an
    embedding `[V, D]`, an output kernel `[D, V]` or bias `[V]` after adding tokens). Any other
    difference (a changed width, say) is left for `check_shapes` to report.
    """
    growth = {}
    for path in set(saved) & set(target):
        old, new = saved[path], target[path]
        if old == new or len(old) != len(new):
            continue
        axes = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if len(axes) == 1 and old[axes[0]] < new[axes[0]] and new[axes[0]] in vocab_sizes:
            growth[path] = axes[0]
    return growth


def _restore_params_tree(step_dir: Path, abstract: PyTree) -> PyTree:
    """Reads only `params` from a step directory into `abstract`'s shapes/dtypes/shardings."""
    item = {"params": abstract}
    try:
        # Closed on exit: an unclosed checkpointer leaves its handler's threads behind.
        with ocp.PyTreeCheckpointer() as checkpointer:
            restored = checkpointer.restore(
                step_dir / STATE_ITEM,
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                ),
            )
    except Exception as e:  # Orbax/TensorStore raise many types; name the directory.
        raise CheckpointError(
            f"cannot restore parameters from {step_dir}: {type(e).__name__}: {e}"
        ) from e
    return restored["params"]


def restore_params(
    path: os.PathLike | str,
    target_params: PyTree,
    *,
    extend_vocab: bool = False,
    vocab_sizes: Collection[int] | None = None,
) -> PyTree:
    """Restores only the parameters of a checkpoint, checked against the model's.

    Args:
      path: a workdir (latest complete step), its `checkpoints/` directory or a step directory.
      target_params: the model's parameters, freshly initialised (concrete arrays) or abstract
        (`jax.ShapeDtypeStruct`, optionally with `sharding=`); they give the tree, shapes,
        dtypes and shardings of the result.
      extend_vocab: accept parameters whose shape grows along exactly one axis to one of
        `vocab_sizes` (a larger vocabulary): the checkpoint's rows are kept and the new ones
        taken from `target_params`, which must then be concrete arrays.
      vocab_sizes: the model's vocabulary sizes (source and target); default: the first axis
        of the target's `embedding` tables.

    Returns:
      A tree like `target_params` holding the checkpoint's values.

    Raises:
      FileNotFoundError: `path` does not exist or holds no complete checkpoint.
      ValueError: a parameter is missing, unexpected, or of another shape (all are named, with
        both shapes), or `extend_vocab` is used with abstract target parameters.
      CheckpointError: the checkpoint is incomplete or corrupt.
    """
    location = resolve_checkpoint(path)
    saved = shapes_by_path(read_state_metadata(location.step_dir)["params"])
    target = shapes_by_path(target_params)
    if vocab_sizes is None:
        vocab_sizes = embedding_vocab_sizes(target_params)
    growth = vocab_growth(saved, target, vocab_sizes) if extend_vocab else {}
    check_shapes(
        {k: target[k] if k in growth else v for k, v in saved.items()}, target, location.step_dir
    )
    abstract_leaves = [
        path_str(p)
        for p, x in jax.tree_util.tree_flatten_with_path(target_params)[0]
        if path_str(p) in growth and not isinstance(x, jax.Array)
    ]
    if abstract_leaves:
        raise ValueError(
            f"extend_vocab needs initialised target parameters (the new rows come "
            f"from them); abstract: {abstract_leaves}"
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_tree(target_params))
    abstract = [
        jax.ShapeDtypeStruct(saved[path_str(p)], x.dtype, sharding=_replicated_like(x))
        if path_str(p) in growth
        else x
        for p, x in flat
    ]
    restored = _restore_params_tree(
        location.step_dir, jax.tree_util.tree_unflatten(treedef, abstract)
    )
    if not growth:
        return restored
    return _merge_grown(restored, target_params, growth, location.step_dir)


def _replicated_like(x: jax.ShapeDtypeStruct) -> jax.sharding.Sharding:
    """A replicated sharding on the devices (and mesh) of `x`'s sharding."""
    if isinstance(x.sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(x.sharding.mesh, jax.sharding.PartitionSpec())
    if len(x.sharding.device_set) == 1:
        return x.sharding
    return _replicated_sharding()


def _merge_grown(
    restored: PyTree, fresh: PyTree, growth: Mapping[str, int], step_dir: Path
) -> PyTree:
    """Writes the checkpoint's rows into the fresh parameters along each grown axis."""

    def merge(path, old, new):
        key = path_str(path)
        if key not in growth:
            return old
        index = tuple(
            slice(0, n) if i == growth[key] else slice(None) for i, n in enumerate(old.shape)
        )
        merged = jax.jit(
            lambda fresh_rows, saved_rows: fresh_rows.at[index].set(saved_rows),
            out_shardings=new.sharding,
        )(new, old.astype(new.dtype))
        log.info(
            "extend_vocab: %s %s -> %s (new rows freshly initialised) from %s",
            key,
            tuple(old.shape),
            tuple(new.shape),
            step_dir,
        )
        return merged

    return jax.tree_util.tree_map_with_path(merge, restored, fresh)


# ------------------------------------------------------------------------------------------------
# Checkpoint averaging.


def average_params(step_dirs: Collection[os.PathLike | str], target_params: PyTree) -> PyTree:
    """The element-wise mean of the parameters of several checkpoint steps.

    Args:
      step_dirs: step directories (e.g. the last N of `complete_steps`), at least one.
      target_params: concrete or abstract parameters giving tree, shapes, dtypes, shardings.

    Returns:
      A tree like `target_params`: the mean (accumulated in float32, cast back to each leaf's
      dtype).

    Raises:
      ValueError: no step directory, or one whose parameters do not match (named).
    """
    step_dirs = [Path(d) for d in step_dirs]
    if not step_dirs:
        raise ValueError("average_params needs at least one checkpoint step directory")
    total = None
    for step_dir in step_dirs:
        params = restore_params(step_dir, target_params)
        params32 = jax.tree.map(lambda x: x.astype(np.float32), params)
        total = params32 if total is None else jax.tree.map(np.add, total, params32)
    dtypes = jax.tree.map(lambda x: x.dtype, abstract_tree(target_params))
    return jax.tree.map(lambda x, d: (x / len(step_dirs)).astype(d), total, dtypes)
