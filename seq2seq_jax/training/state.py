"""The training state: everything a step needs and a checkpoint must hold (except data state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Pure training state, a pytree.

    Attributes:
      step: int32 scalar, number of optimizer updates applied so far.
      params: model parameters (the `params` collection).
      opt_state: Optax optimizer state.
      rng: a raw `jax.random.PRNGKey` (uint32[2]); the step's dropout key is
        `jax.random.fold_in(rng, step)`, so the stream is a pure function of (seed, step).
      apply_fn: the model's `apply` (static, not saved).
      tx: the Optax transformation (static, not saved).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    rng: jax.Array
    apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, *, apply_fn, params, tx, rng) -> TrainState:
        """Builds a fresh state at step 0 with `tx` initialised on `params`."""
        return cls(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=params,
            opt_state=tx.init(params),
            rng=rng,
            apply_fn=apply_fn,
            tx=tx,
        )

    def apply_gradients(self, grads: PyTree) -> TrainState:
        """Applies one Optax update and increments the step."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)

    def checkpoint_items(self) -> dict[str, PyTree]:
        """The saved part of the state (no callables)."""
        return {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "rng": self.rng,
        }
