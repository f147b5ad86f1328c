"""Devices, meshes, shardings and the two compilations (sharded jit, pmap) of the same step.

`parallelism="jit"` (default): one `Mesh` over all devices of all hosts with axes
`("data", "fsdp")`. The batch is split over both axes (every device gets distinct rows);
with `fsdp > 1` each parameter and optimiser-state leaf is additionally split along its largest
dimension divisible by the fsdp size (smaller leaves stay replicated). The state is donated.

`parallelism="pmap"`: the state is replicated on every local device, each host's batch is
reshaped to `[local_devices, B / local_devices, ...]`, and the step runs with
`axis_name="batch"` so gradients and metrics are summed with `psum`.

Multi-host: `maybe_initialize_distributed` calls `jax.distributed.initialize` before any other
JAX call when the config or the environment asks for it; each host then feeds its own rows
(`process_index` / `process_count`) and `make_global_batch` assembles the global array.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PyTree = Any
PMAP_AXIS = "batch"
MESH_AXES = ("data", "fsdp")
BATCH_SPEC = P(MESH_AXES)


def default_distributed_config() -> ml_collections.ConfigDict:
    """The `config.distributed` section."""
    c = ml_collections.ConfigDict()
    # "auto": initialise when the environment names a cluster (JAX_COORDINATOR_ADDRESS, a
    # SLURM job with several tasks, or a multi-worker TPU VM); "true"/"false" force it.
    c.initialize = "auto"
    c.coordinator_address = ""  # host:port of process 0 ("" = from the environment).
    c.num_processes = 0  # 0 = from the environment.
    c.process_id = -1  # -1 = from the environment.
    c.local_device_ids = ""  # Comma-separated ids ("" = all local devices).
    c.cpu_collectives = "gloo"  # CPU backend collectives across processes.
    return c


def _env_asks_for_distributed() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Calls `jax.distributed.initialize` when asked; must run before any other JAX call.

    Args:
      config: the `config.distributed` section.

    Returns:
      Whether the distributed runtime was initialised.
    """
    mode = str(config.initialize).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"distributed.initialize={config.initialize!r} is not auto/true/false")
    if mode == "false" or (mode == "auto" and not _env_asks_for_distributed()):
        return False
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    kwargs: dict[str, Any] = {}
    if config.coordinator_address:
        kwargs["coordinator_address"] = config.coordinator_address
    if config.num_processes > 0:
        kwargs["num_processes"] = int(config.num_processes)
    if config.process_id >= 0:
        kwargs["process_id"] = int(config.process_id)
    if config.local_device_ids:
        kwargs["local_device_ids"] = [int(i) for i in str(config.local_device_ids).split(",")]
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
    )
    return True


def make_mesh(fsdp: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp")` mesh over `devices` (default all); `fsdp=-1`: all on `fsdp`."""
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    fsdp = n if fsdp == -1 else int(fsdp)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} must be -1 or a divisor of the device count {n}")
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((n // fsdp, fsdp), MESH_AXES, axis_types=auto, devices=devices)


def check_batch_size(batch_size: int, parallelism: str) -> None:
    """Raises a one-line error unless the global batch splits evenly over devices and hosts."""
    n, hosts = jax.device_count(), jax.process_count()
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the device count {n} "
            f"(parallelism={parallelism}); choose a multiple of {n}"
        )
    if batch_size % hosts:
        raise ValueError(f"batch_size={batch_size} is not divisible by the host count {hosts}")


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = 0) -> P:
    """Shards the largest dimension divisible by `fsdp_size` along "fsdp" (else replicated)."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    candidates = [i for i, d in enumerate(shape) if d % fsdp_size == 0 and d >= fsdp_size]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], -i))
    return P(*([None] * axis + ["fsdp"]))


def state_shardings(abstract_state: PyTree, mesh: Mesh, min_size: int = 0) -> PyTree:
    """NamedShardings for every leaf of an (abstract) state, per `fsdp_spec`."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size, min_size)),
        abstract_state,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over all devices (both mesh axes), other dimensions whole."""
    return NamedSharding(mesh, BATCH_SPEC)


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in local_batch.items()
    }


def shard_for_pmap(local_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reshapes host rows `[B, ...]` to `[local_devices, B / local_devices, ...]`."""
    n = jax.local_device_count()
    return {k: np.asarray(v).reshape((n, -1) + np.shape(v)[1:]) for k, v in local_batch.items()}


def replicate(tree: PyTree) -> PyTree:
    """Copies a (host or single-device) pytree onto every local device for pmap."""
    return jax_utils.replicate(tree)


def unreplicate(tree: PyTree) -> PyTree:
    """The first device's copy of a replicated pytree."""
    return jax_utils.unreplicate(tree)


def compile_train_step(
    step_fn: Callable[..., Any],
    parallelism: str,
    *,
    mesh: Mesh | None = None,
    shardings: PyTree = None,
) -> Callable[..., Any]:
    """Compiles `step_fn(state, batch, *, axis_name) -> (state, metrics)` with donated state.

    Args:
      step_fn: the pure step (e.g. `functools.partial(train_step, label_smoothing=0.1)`).
      parallelism: "jit" or "pmap".
      mesh: the mesh (jit only).
      shardings: the state's shardings (jit only).
    """
    if parallelism == "jit":
        replicated = NamedSharding(mesh, P())
        return jax.jit(
            step_fn,
            in_shardings=(shardings, batch_sharding(mesh)),
            out_shardings=(shardings, replicated),
            donate_argnums=0,
        )
    if parallelism == "pmap":
        return jax.pmap(
            functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, donate_argnums=0
        )
    raise ValueError(f"parallelism={parallelism!r} is not 'jit' or 'pmap'")


def compile_eval_step(
    step_fn: Callable[..., Any],
    parallelism: str,
    *,
    mesh: Mesh | None = None,
    shardings: PyTree = None,
) -> Callable[..., Any]:
    """Compiles `step_fn(state, batch, *, axis_name) -> metrics` (no donation)."""
    if parallelism == "jit":
        return jax.jit(
            step_fn,
            in_shardings=(shardings, batch_sharding(mesh)),
            out_shardings=NamedSharding(mesh, P()),
        )
    if parallelism == "pmap":
        return jax.pmap(functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS)
    raise ValueError(f"parallelism={parallelism!r} is not 'jit' or 'pmap'")
