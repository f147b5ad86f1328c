"""Training orchestration pieces that do not depend on the data or model families.

`init_train_state` builds the (sharded or replicated) state, `make_step_fns` compiles the train and
eval steps, `put_batch` / `metrics_to_host` move batches and metrics across the host boundary. The
end-to-end loop (`train_and_evaluate`) lives in `seq2seq_jax.training.loop`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from seq2seq_jax.models import init as model_init
from seq2seq_jax.training import parallel, steps
from seq2seq_jax.training.state import TrainState

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the state and batches live.

    Attributes:
      parallelism: "jit" or "pmap".
      mesh: the ("data", "fsdp") mesh (jit; None under pmap).
      shardings: the state's NamedShardings (jit; None under pmap).
    """

    parallelism: str
    mesh: Mesh | None = None
    shardings: PyTree = None


def dummy_batch(source_length: int, target_length: int, rows: int = 1) -> dict[str, np.ndarray]:
    """An all-ones batch of the given shape, for `model.init` (values do not matter)."""
    src = np.ones((rows, source_length), np.int32)
    tgt = np.ones((rows, target_length), np.int32)
    return {
        "inputs": src,
        "targets": tgt,
        "inputs_segmentation": src,
        "targets_segmentation": tgt,
        "inputs_position": np.zeros_like(src),
        "targets_position": np.zeros_like(tgt),
    }


def init_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    parallelism: str = "jit",
    mesh: Mesh | None = None,
    fsdp_min_size: int = 0,
    init_lengths: tuple[int, int] = (4, 4),
) -> tuple[TrainState, Placement]:
    """Initialises parameters and optimiser state directly in their final placement.

    Parameters follow the model's `config.init_scheme` ('flax' or 'torch', see
    `seq2seq_jax.models.init`). The PRNG key `PRNGKey(seed)` is split into (params,
    dropout-at-init, state.rng); the values are the same whatever the placement (JAX's
    partitionable threefry), so one seed gives one model on any device count.

    Args:
      model: a Linen model with the seq2seq call signature.
      tx: the optimiser.
      seed: experiment seed.
      parallelism: "jit" (sharded over `mesh`) or "pmap" (replicated on local devices).
      mesh: the mesh for "jit".
      fsdp_min_size: leaves with fewer elements stay replicated under fsdp.
      init_lengths: (S, T) of the dummy batch used for `model.init`.

    Returns:
      `(state, placement)`.
    """
    params_key, dropout_key, state_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    batch = dummy_batch(*init_lengths)

    def init_fn():
        variables = model.init(
            {"params": params_key, "dropout": dropout_key},
            batch["inputs"],
            batch["targets"],
            **{k: batch[k] for k in steps.MODEL_KEYS},
            train=False,
        )
        scheme = getattr(getattr(model, "config", None), "init_scheme", "flax")
        params = model_init.apply_scheme(scheme, variables["params"], params_key)
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=state_key)

    if parallelism == "pmap":
        return parallel.replicate(jax.jit(init_fn)()), Placement("pmap")
    if parallelism != "jit":
        raise ValueError(f"parallelism={parallelism!r} is not 'jit' or 'pmap'")
    mesh = mesh if mesh is not None else parallel.make_mesh()
    shardings = parallel.state_shardings(jax.eval_shape(init_fn), mesh, fsdp_min_size)
    state = jax.jit(init_fn, out_shardings=shardings)()
    return state, Placement("jit", mesh, shardings)


def make_step_fns(
    placement: Placement, *, label_smoothing: float = 0.0, nonfinite: str = "abort"
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """Compiles `(train_step, eval_step)` for `placement` (state donated in the train step);
    `nonfinite` is `steps.train_step`'s mode ('abort', 'skip' or 'ignore')."""
    kwargs = dict(mesh=placement.mesh, shardings=placement.shardings)
    train = parallel.compile_train_step(
        functools.partial(steps.train_step, label_smoothing=label_smoothing, nonfinite=nonfinite),
        placement.parallelism,
        **kwargs,
    )
    evaluate = parallel.compile_eval_step(
        functools.partial(steps.eval_step, label_smoothing=label_smoothing),
        placement.parallelism,
        **kwargs,
    )
    return train, evaluate


def put_batch(batch: dict[str, np.ndarray], placement: Placement) -> dict[str, Any]:
    """This host's rows -> the step's input (global sharded arrays, or per-device shards)."""
    if placement.parallelism == "pmap":
        return parallel.shard_for_pmap(batch)
    return parallel.make_global_batch(batch, placement.mesh)


def metrics_to_host(metrics: PyTree, placement: Placement) -> PyTree:
    """Device metrics -> host numpy (first device's copy under pmap; they are psum'ed)."""
    if placement.parallelism == "pmap":
        metrics = jax.tree.map(lambda x: x[0], metrics)
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), metrics)


def state_to_host_layout(state: TrainState, placement: Placement) -> TrainState:
    """The state without pmap's device axis (what checkpoints and decoding see)."""
    return parallel.unreplicate(state) if placement.parallelism == "pmap" else state


def host_params(state: TrainState, placement: Placement) -> PyTree:
    """Parameters usable by a plain `jit` call (decoding): one copy under pmap."""
    params = state_to_host_layout(state, placement).params
    return jax.tree.map(jnp.asarray, params)
