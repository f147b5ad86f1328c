"""Optimisers, schedules, clipping, accumulation, freezing and per-path learning rates.

Everything is built from the `config.optimizer` section (see `default_optimizer_config`) into one
`optax.GradientTransformation`, composed from the inside out as

```
MultiSteps(                           # optional: gradient accumulation over k micro-batches
  params_ema(                         # optional: an exponential moving average of the params
    multi_transform({                 # freezing by path regex
      "trainable": chain(clip_by_global_norm, <optimizer with schedule>, scale_by_path),
      "frozen": set_to_zero(),
    })))
```

The moving average (`ema_decay` > 0) lives in the optimiser state (`ParamsEmaState`), so it is
checkpointed, sharded and resumed with it; `ema_params(opt_state)` reads it, bias-corrected.

Non-finite steps (`nonfinite`: abort | skip | ignore) are handled by the train step and loop
(`seq2seq_jax.training.steps.train_step`), not by the transformation: a step is non-finite when
its loss or any *updated parameter* is NaN/Inf, which also catches an update of finite gradients
that overflows the weights. `validate_optimizer_config` checks every number before anything is
built.

The schedule's step is the optimiser's own update count, so with accumulation over `k`
micro-batches the schedule advances once per `k` train steps.

Parameter paths are the '/'-joined keys of the `params` tree, e.g. `encoder/embed/embedding`;
regexes match with `re.search`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any

OPTIMIZERS = ("adam", "adamw", "adafactor", "sgd")
SCHEDULES = ("constant", "warmup_rsqrt", "warmup_cosine", "warmup_linear", "piecewise")


def default_optimizer_config() -> ml_collections.ConfigDict:
    """The `config.optimizer` section with every key the builder reads."""
    c = ml_collections.ConfigDict()
    c.name = "adam"  # One of OPTIMIZERS.
    c.learning_rate = 1e-3  # Peak learning rate.
    c.schedule = "constant"  # One of SCHEDULES.
    c.warmup_steps = 0  # Linear warmup from 0 (not used by "constant" and "piecewise").
    c.decay_steps = 0  # Steps of the whole schedule for cosine/linear; 0 = num_train_steps.
    c.end_learning_rate_fraction = 0.0  # Final lr / peak lr for cosine and linear decay.
    c.boundaries = ()  # Piecewise: update counts where the lr is multiplied ...
    c.scales = ()  # ... by these factors (cumulative).
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.0  # adamw / adafactor decoupled weight decay, on params with ndim >= 2.
    c.momentum = 0.9  # sgd momentum (0 = plain SGD).
    c.nesterov = False
    c.grad_clip_norm = 1.0  # Global-norm clipping threshold; 0 disables.
    c.accumulate_steps = 1  # > 1 wraps the optimiser in optax.MultiSteps.
    # A step whose loss or updated parameters hold NaN/Inf: 'abort' (stop the run at once,
    # exit non-zero naming the step, save nothing poisoned), 'skip' (leave parameters and
    # optimiser state unchanged, counted and logged; abort after `max_consecutive_nonfinite`
    # consecutive skips) or 'ignore' (apply it anyway).
    c.nonfinite = "abort"
    c.max_consecutive_nonfinite = 5
    c.freeze = ""  # Regex of parameter paths that stay fixed ("" = none).
    c.lr_multipliers = ()  # ((regex, factor), ...): first matching regex scales the update.
    # Keep an exponential moving average of the parameters, updated after every optimiser
    # update with this decay (0 = off; 0.999 averages over ~1,000 updates). The final
    # evaluation scores it (`ema_<split>_<metric>`) and saves it as WORKDIR/ema/<step>
    # (`decode --checkpoint=ema`).
    c.ema_decay = 0.0
    return c


def param_path(path: Sequence[Any]) -> str:
    """'/'-joined key names of a `jax.tree_util` key path (dict keys, attributes, indices)."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)


def make_schedule(config: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """The learning-rate schedule as a function of the optimiser's update count.

    Formulas (`lr` peak rate, `w` warmup steps, `n` decay steps, `f` end fraction, `t` count):
      constant:       lr
      warmup_rsqrt:   lr * min(t / w, 1) * sqrt(w / max(t, w))          (needs w >= 1)
      warmup_cosine:  lr * t / w for t < w, then
                      lr * (f + (1 - f) * 0.5 * (1 + cos(pi * (t - w) / (n - w))))
      warmup_linear:  lr * t / w for t < w, then lr * (1 - (1 - f) * min((t - w) / (n - w), 1))
      piecewise:      lr * product of scales[i] for all boundaries[i] <= t

    Args:
      config: the `config.optimizer` section.
      num_train_steps: used as `n` when `config.decay_steps` is 0.

    Returns:
      An Optax schedule.

    Raises:
      ValueError: unknown schedule name or inconsistent settings (the message names the key).
    """
    lr, w = float(config.learning_rate), int(config.warmup_steps)
    n = int(config.decay_steps) or int(num_train_steps)
    f = float(config.end_learning_rate_fraction)
    name = config.schedule
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "piecewise":
        if len(config.boundaries) != len(config.scales):
            raise ValueError(
                f"optimizer.boundaries {tuple(config.boundaries)} and optimizer.scales "
                f"{tuple(config.scales)} must have the same length"
            )
        return optax.piecewise_constant_schedule(
            lr, {int(b): float(s) for b, s in zip(config.boundaries, config.scales, strict=True)}
        )
    if name == "warmup_rsqrt":
        if w < 1:
            raise ValueError("optimizer.schedule='warmup_rsqrt' needs optimizer.warmup_steps >= 1")

        def rsqrt(count):
            t = jnp.asarray(count, jnp.float32)
            return lr * jnp.minimum(t / w, 1.0) * jnp.sqrt(w / jnp.maximum(t, w))

        return rsqrt
    if name in ("warmup_cosine", "warmup_linear"):
        if n <= w:
            raise ValueError(
                f"optimizer.decay_steps (or num_train_steps) = {n} must exceed "
                f"optimizer.warmup_steps = {w} for schedule {name!r}"
            )
        if name == "warmup_cosine":
            return optax.warmup_cosine_decay_schedule(0.0, lr, w, n, end_value=lr * f)
        warmup = optax.linear_schedule(0.0, lr, max(w, 1))
        decay = optax.linear_schedule(lr, lr * f, n - w)
        return optax.join_schedules([warmup, decay], [w])
    raise ValueError(f"optimizer.schedule={name!r} is not one of {SCHEDULES}")


def _decay_mask(params: PyTree) -> PyTree:
    """Weight decay only on matrices and embeddings (ndim >= 2), not on biases and scales."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _base_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The named Optax optimiser driven by `schedule`."""
    name = config.name
    if name == "adam":
        return optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
    if name == "adamw":
        return optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        )
    if name == "adafactor":
        return optax.adafactor(
            schedule, weight_decay_rate=config.weight_decay or None, weight_decay_mask=_decay_mask
        )
    if name == "sgd":
        return optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")


def _compile_multipliers(pairs: Sequence[Sequence[Any]]) -> list[tuple[re.Pattern, float]]:
    """Validates `((regex, factor), ...)` and compiles the regexes."""
    compiled = []
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(
                f"optimizer.lr_multipliers entries must be (regex, factor) pairs, got {pair!r}"
            )
        regex, factor = pair
        try:
            compiled.append((re.compile(regex), float(factor)))
        except re.error as e:
            raise ValueError(f"optimizer.lr_multipliers: bad regex {regex!r}: {e}") from e
    return compiled


def scale_by_path(pairs: Sequence[Sequence[Any]]) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first regex matching its parameter path.

    Args:
      pairs: `((regex, factor), ...)`; paths matching no regex keep factor 1.

    Returns:
      A stateless Optax transformation (the identity when `pairs` is empty).
    """
    compiled = _compile_multipliers(pairs)

    def factor(path: str) -> float:
        return next((f for rx, f in compiled if rx.search(path)), 1.0)

    def scale(updates: PyTree, params: PyTree = None) -> PyTree:
        del params
        return jax.tree_util.tree_map_with_path(
            lambda p, u: u * jnp.asarray(factor(param_path(p)), u.dtype), updates
        )

    return optax.stateless(scale) if compiled else optax.identity()


def freeze_labels(freeze_regex: str) -> Callable[[PyTree], PyTree]:
    """A label function for `optax.multi_transform`: 'frozen' where the path matches."""
    try:
        rx = re.compile(freeze_regex)
    except re.error as e:
        raise ValueError(f"optimizer.freeze: bad regex {freeze_regex!r}: {e}") from e

    def labels(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if rx.search(param_path(p)) else "trainable", params
        )

    return labels


class ParamsEmaState(NamedTuple):
    """State of `params_ema`: the inner transformation's state, the number of updates averaged
    and the (not bias-corrected) moving average, float32."""

    inner_state: Any
    count: jax.Array
    ema: PyTree


def params_ema(inner: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """`inner`, also keeping an exponential moving average of the updated parameters.

    After update t (parameters p_t = p_{t-1} + u_t) the state holds
    e_t = decay * e_{t-1} + (1 - decay) * p_t with e_0 = 0; `ema_params` divides by
    (1 - decay^t), so the initial parameters carry no weight. Updates pass through unchanged.

    Args:
      inner: the transformation whose updates are applied.
      decay: in (0, 1).
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"optimizer.ema_decay must be in (0, 1) to keep an average, got {decay}")

    def init_fn(params: PyTree) -> ParamsEmaState:
        return ParamsEmaState(
            inner_state=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            ema=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
        )

    def update_fn(updates: PyTree, state: ParamsEmaState, params: PyTree = None):
        if params is None:
            raise ValueError("params_ema needs the parameters in update(updates, state, params)")
        updates, inner_state = inner.update(updates, state.inner_state, params)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(
            lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32), state.ema, new_params
        )
        count = optax.safe_int32_increment(state.count)
        return updates, ParamsEmaState(inner_state=inner_state, count=count, ema=ema)

    return optax.GradientTransformation(init_fn, update_fn)


def ema_params(opt_state: PyTree, decay: float, like: PyTree) -> PyTree | None:
    """The bias-corrected moving average kept by `params_ema` in `opt_state`, cast to the
    dtypes of `like` (the parameters); None before the first update.

    Raises:
      ValueError: `opt_state` holds no (or more than one) `ParamsEmaState`.
    """
    found = [
        x
        for x in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, ParamsEmaState)
        )
        if isinstance(x, ParamsEmaState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"the optimiser state holds {len(found)} parameter averages, not 1 "
            "(was it built with optimizer.ema_decay > 0?)"
        )
    (state,) = found
    count = int(jax.device_get(state.count))
    if count == 0:
        return None
    correction = 1.0 - float(decay) ** count
    return jax.tree.map(lambda e, p: (e / correction).astype(p.dtype), state.ema, like)


def make_optimizer(
    config: ml_collections.ConfigDict, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the full gradient transformation described in the module docstring.

    Args:
      config: the `config.optimizer` section.
      num_train_steps: total train steps (used for decaying schedules; with accumulation the
        schedule length is `num_train_steps // accumulate_steps` updates).

    Returns:
      `(tx, schedule)`; `schedule(update_count)` gives the learning rate for logging.
    """
    k = int(config.accumulate_steps)
    if k < 1:
        raise ValueError(f"optimizer.accumulate_steps must be >= 1, got {k}")
    schedule = make_schedule(config, max(num_train_steps // k, 1))
    clip = (
        optax.clip_by_global_norm(config.grad_clip_norm)
        if config.grad_clip_norm > 0
        else optax.identity()
    )
    tx = optax.chain(clip, _base_optimizer(config, schedule), scale_by_path(config.lr_multipliers))
    if config.freeze:
        tx = optax.multi_transform(
            {"trainable": tx, "frozen": optax.set_to_zero()}, freeze_labels(config.freeze)
        )
    if config.get("ema_decay", 0.0):
        tx = params_ema(tx, float(config.ema_decay))
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx, schedule


def frozen_paths(params: PyTree, freeze_regex: str) -> list[str]:
    """Paths of `params` matched by `freeze_regex` (for logging what is frozen)."""
    if not freeze_regex:
        return []
    labels = freeze_labels(freeze_regex)(params)
    flat = jax.tree_util.tree_flatten_with_path(labels)[0]
    return [param_path(p) for p, label in flat if label == "frozen"]


NONFINITE_MODES = ("abort", "skip", "ignore")

# Numeric keys of `config.optimizer`: (name, lower bound, lower bound included, upper bound).
_NUMBERS = (
    ("learning_rate", 0.0, True, None),  # 0 trains nothing (e.g. to evaluate); < 0 ascends.
    ("warmup_steps", 0, True, None),
    ("decay_steps", 0, True, None),
    ("end_learning_rate_fraction", 0.0, True, 1.0),
    ("b1", 0.0, True, 1.0),
    ("b2", 0.0, True, 1.0),
    ("eps", 0.0, True, None),
    ("weight_decay", 0.0, True, None),
    ("momentum", 0.0, True, 1.0),
    ("grad_clip_norm", 0.0, True, None),
    ("accumulate_steps", 1, True, None),
    ("max_consecutive_nonfinite", 1, True, None),
    ("ema_decay", 0.0, True, 1.0),
)


def validate_optimizer_config(config: ml_collections.ConfigDict) -> None:
    """Checks every number and choice of `config.optimizer` (finite, in range).

    Raises:
      ValueError: one line naming the key and the value (`optimizer.learning_rate must be a
        finite number > 0, got -0.001`).
    """
    for key, low, closed, high in _NUMBERS:
        value = config[key]
        integral = isinstance(low, int)
        kind = (int,) if integral else (int, float)
        relation = ">=" if closed else ">"
        want = f"{'an int' if integral else 'a finite number'} {relation} {low}" + (
            f" and <= {high}" if high is not None else ""
        )
        ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value >= low if closed else value > low) and (high is None or value <= high)
        if not ok:
            raise ValueError(f"optimizer.{key} must be {want}, got {value!r}")
    if config.get("ema_decay", 0.0) >= 1.0:
        raise ValueError(f"optimizer.ema_decay must be < 1 (0 = off), got {config.ema_decay!r}")
    if config.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={config.name!r} is not one of {list(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise ValueError(f"optimizer.schedule={config.schedule!r} is not one of {list(SCHEDULES)}")
    if config.nonfinite not in NONFINITE_MODES:
        raise ValueError(
            f"optimizer.nonfinite={config.nonfinite!r} is not one of {list(NONFINITE_MODES)}"
        )
    for b in config.boundaries:
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(
                f"optimizer.boundaries must be ints >= 0, got {tuple(config.boundaries)}"
            )
    for x in config.scales:
        if (
            isinstance(x, bool)
            or not isinstance(x, int | float)
            or not (math.isfinite(x) and x >= 0)
        ):
            raise ValueError(
                f"optimizer.scales must be finite numbers >= 0, got {tuple(config.scales)}"
            )


__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "default_optimizer_config",
    "make_schedule",
    "make_optimizer",
    "scale_by_path",
    "freeze_labels",
    "frozen_paths",
    "ParamsEmaState",
    "params_ema",
    "ema_params",
    "param_path",
    "NONFINITE_MODES",
    "validate_optimizer_config",
]
