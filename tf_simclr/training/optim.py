"""Optimisers and learning-rate schedules for SimCLR.

- `LARS`: the layer-wise adaptive rate scaling optimiser of the SimCLR reference (momentum,
  trust coefficient eta, weight decay added to the gradient). Variables matching the exclusion
  patterns get no weight decay / no trust scaling; this is decided per variable in `build()`,
  because inside a distributed update the variable no longer carries its Keras path.
- `SGDL2`, `AdamL2`: Keras SGD (momentum, optional Nesterov) and Adam with *coupled* L2 weight
  decay (g <- g + wd * w, the gradient of wd/2 * ||w||^2: what the reference's L2 loss term does).
- `AdamWExclude`: Keras AdamW (decoupled decay w <- w - lr * wd * w) with the same exclusions.
- `WarmupCosineDecay`: linear warmup then cosine decay to zero: Keras' CosineDecay with its
  warmup, in the reference's terms (base rate, warmup and total steps).
- `PlannedWarmupCosineDecay` on `ScheduleSteps`: the same schedule, its warmup and total steps
  tf.Variables assigned while training (a time budget, tf_simclr.training.budget).
- `scale_learning_rate`, `build_optimizer`.

Exclusion patterns are regular expressions searched (`re.search`) in the variable's Keras path
(e.g. "simclr/head_supervised/dense/kernel"), falling back to its name for plain tf.Variables.
"""

from __future__ import annotations

import math
import numbers
import re

import keras
import tensorflow as tf

from tf_simclr.choices import LR_SCALINGS, OPTIMIZERS

# Batch-norm parameters and biases: no weight decay, no trust scaling (SimCLR paper / reference).
# Keras 3 names BN variables "gamma"/"beta" (and moving stats, which are not trainable) inside a
# layer named "batch_normalization*" by default; "bn" catches layers named like "conv1_bn", "bn2".
NORM_AND_BIAS_PATTERNS = (
    "batch_normalization",
    r"(?:^|[/_])bn\d*(?:[/_]|$)",
    "bias",
    "beta",
    "gamma",
)
# The supervised (linear-eval) head trained on stop_gradient(h) during pretraining.
HEAD_PATTERNS = ("head_supervised",)
DEFAULT_EXCLUDE = NORM_AND_BIAS_PATTERNS + HEAD_PATTERNS


def variable_path(variable) -> str:
    """The Keras path of a variable ("layer/.../name"), or its name for a plain tf.Variable."""
    path = getattr(variable, "path", None)
    return path if path else variable.name


def matches_any(variable, patterns) -> bool:
    """True when any regex in `patterns` is found in the variable's path."""
    path = variable_path(variable)
    return any(re.search(p, path) for p in (patterns or ()))


def _check_patterns(patterns, arg):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns)
    for p in patterns:
        try:
            re.compile(p)
        except (re.error, TypeError) as e:
            raise ValueError(f"{arg} must be regular expressions; {p!r} is not ({e}).") from e
    return patterns


def _check_float(value, arg, low=0.0, high=None, *, open_low=False, open_high=False):
    """`value` as a float if it is a finite number within the bounds, else a ValueError naming
    `arg` and the range (open_low / open_high exclude the bound itself)."""
    if high is None:
        allowed = f"a finite number {'>' if open_low else '>='} {low:g}"
    else:
        allowed = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{arg} must be {allowed}, got {value!r}.")
    value = float(value)
    too_low = value <= low if open_low else value < low
    too_high = high is not None and (value >= high if open_high else value > high)
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{arg} must be {allowed}, got {value}.")
    return value


def _as_lr(learning_rate):
    """A checked learning rate: a float > 0 (Keras rejects ints, so they become floats), or a
    LearningRateSchedule / callable, which Keras evaluates itself."""
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) or callable(
        learning_rate
    ):
        return learning_rate
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise ValueError(
            "learning_rate must be a finite number > 0 or a "
            f"keras.optimizers.schedules.LearningRateSchedule, got {learning_rate!r}."
        )
    return _check_float(learning_rate, "learning_rate", open_low=True)


def _dense(gradient):
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


@keras.saving.register_keras_serializable(package="tf_simclr")
class LARS(keras.optimizers.Optimizer):
    """LARS (You et al. 2017) as used by SimCLR.

    For each variable w with gradient g (after the strategy's gradient all-reduce):
        g <- g + weight_decay * w                    unless excluded from weight decay
        trust = eta * ||w|| / ||g||                  (1 if a norm is 0 or w is excluded from
                                                      layer adaptation)
        v <- momentum * v + lr * trust * g
        w <- w - v                                   (Nesterov: w <- w - (momentum*v + lr*trust*g))
    With classic_momentum=False the trust ratio is computed on the momentum update instead
    (v <- m*v + g; w <- w - lr * eta*||w||/||v|| * v), as the reference's second variant.

    Args:
        learning_rate: float > 0 or a LearningRateSchedule.
        momentum: in [0, 1).
        weight_decay: coupled L2 coefficient (>= 0).
        eta: trust coefficient (> 0).
        exclude_from_weight_decay: regexes of variable paths that get no weight decay.
        exclude_from_layer_adaptation: regexes of variable paths that get no trust scaling;
            None means the same as exclude_from_weight_decay (the reference's default).
        nesterov, classic_momentum: variants of the momentum update.
        **kwargs: Keras optimizer arguments (clipnorm, loss_scale_factor, name, ...).
            Keras' own decoupled `weight_decay` is not used.
    """

    def __init__(
        self,
        learning_rate=0.001,
        momentum=0.9,
        weight_decay=0.0,
        eta=0.001,
        exclude_from_weight_decay=DEFAULT_EXCLUDE,
        exclude_from_layer_adaptation=None,
        nesterov=False,
        classic_momentum=True,
        name="LARS",
        **kwargs,
    ):
        super().__init__(
            learning_rate=_as_lr(learning_rate), weight_decay=None, name=name, **kwargs
        )
        self.momentum = _check_float(momentum, "momentum", 0.0, 1.0, open_high=True)
        self.lars_weight_decay = _check_float(weight_decay, "weight_decay")
        self.eta = _check_float(eta, "eta", open_low=True)
        self.exclude_from_weight_decay_patterns = _check_patterns(
            exclude_from_weight_decay, "exclude_from_weight_decay"
        )
        if exclude_from_layer_adaptation is None:
            self.exclude_from_layer_adaptation_patterns = self.exclude_from_weight_decay_patterns
        else:
            self.exclude_from_layer_adaptation_patterns = _check_patterns(
                exclude_from_layer_adaptation, "exclude_from_layer_adaptation"
            )
        self._layer_adaptation_given = exclude_from_layer_adaptation is not None
        self.nesterov = bool(nesterov)
        self.classic_momentum = bool(classic_momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Python flags per variable index: update_step only sees an anonymous per-replica
        # variable under tf.distribute, so the path lookup has to happen here.
        self._use_decay_flags = tuple(
            not matches_any(v, self.exclude_from_weight_decay_patterns) for v in variables
        )
        self._use_adaptation_flags = tuple(
            not matches_any(v, self.exclude_from_layer_adaptation_patterns) for v in variables
        )

    def uses_weight_decay(self, variable) -> bool:
        """Whether `variable` (one the optimizer was built with) gets weight decay."""
        return self._use_decay_flags[self._get_variable_index(variable)]

    def momentum_variable(self, variable):
        """The momentum slot v of `variable` (one the optimizer was built with)."""
        return self.momentums[self._get_variable_index(variable)]

    def uses_layer_adaptation(self, variable) -> bool:
        """Whether `variable` (one the optimizer was built with) gets trust scaling."""
        return self._use_adaptation_flags[self._get_variable_index(variable)]

    def _trust_ratio(self, w, u):
        w_norm = tf.norm(w, ord=2)
        u_norm = tf.norm(u, ord=2)
        ratio = self.eta * w_norm / tf.where(u_norm > 0, u_norm, tf.ones_like(u_norm))
        return tf.where((w_norm > 0) & (u_norm > 0), ratio, tf.ones_like(ratio))

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        momentum = tf.cast(self.momentum, dtype)
        g = tf.cast(_dense(gradient), dtype)
        w = tf.convert_to_tensor(variable)
        v = self.momentums[index]

        if self._use_decay_flags[index] and self.lars_weight_decay > 0:
            g = g + tf.cast(self.lars_weight_decay, dtype) * w
        adapt = self._use_adaptation_flags[index]

        if self.classic_momentum:
            scaled_lr = lr * self._trust_ratio(w, g) if adapt else lr
            next_v = momentum * v + scaled_lr * g
            update = momentum * next_v + scaled_lr * g if self.nesterov else next_v
            self.assign(v, next_v)
            self.assign_sub(variable, update)
        else:
            next_v = momentum * v + g
            update = momentum * next_v + g if self.nesterov else next_v
            scaled_lr = lr * self._trust_ratio(w, update) if adapt else lr
            self.assign(v, next_v)
            self.assign_sub(variable, scaled_lr * update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.lars_weight_decay,
                "eta": self.eta,
                "exclude_from_weight_decay": list(self.exclude_from_weight_decay_patterns),
                "exclude_from_layer_adaptation": (
                    list(self.exclude_from_layer_adaptation_patterns)
                    if self._layer_adaptation_given
                    else None
                ),
                "nesterov": self.nesterov,
                "classic_momentum": self.classic_momentum,
            }
        )
        return config


class _ExcludeByPath:
    """Mixin: Keras weight-decay exclusion decided from variable paths at build time, plus an
    optional coupled L2 term (g <- g + l2 * w) for the non-excluded variables."""

    def _setup_exclusion(self, exclude_from_weight_decay, l2):
        self.exclude_from_weight_decay_patterns = _check_patterns(
            exclude_from_weight_decay, "exclude_from_weight_decay"
        )
        self.l2 = _check_float(l2, "weight_decay")

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._use_decay_flags = tuple(
            not matches_any(v, self.exclude_from_weight_decay_patterns) for v in variables
        )

    def _use_weight_decay(self, variable):
        # Called by Keras' decoupled decay (AdamW), possibly with a per-replica variable.
        return self._use_decay_flags[self._get_variable_index(variable)]

    def uses_weight_decay(self, variable) -> bool:
        """Whether `variable` (one the optimizer was built with) gets weight decay."""
        return self._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 > 0 and self._use_weight_decay(variable):
            gradient = tf.cast(_dense(gradient), variable.dtype)
            gradient = gradient + tf.cast(self.l2, variable.dtype) * tf.convert_to_tensor(variable)
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="tf_simclr")
class SGDL2(_ExcludeByPath, keras.optimizers.SGD):
    """Keras SGD (momentum, optional Nesterov) with coupled L2 weight decay `weight_decay`
    (g <- g + weight_decay * w) on variables not matching `exclude_from_weight_decay`."""

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=0.0,
        exclude_from_weight_decay=NORM_AND_BIAS_PATTERNS,
        name="SGDL2",
        **kwargs,
    ):
        super().__init__(
            learning_rate=_as_lr(learning_rate),
            momentum=_check_float(momentum, "momentum", 0.0, 1.0, open_high=True),
            nesterov=nesterov,
            weight_decay=None,
            name=name,
            **kwargs,
        )
        self._setup_exclusion(exclude_from_weight_decay, weight_decay)

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.l2
        config["exclude_from_weight_decay"] = list(self.exclude_from_weight_decay_patterns)
        return config


@keras.saving.register_keras_serializable(package="tf_simclr")
class AdamL2(_ExcludeByPath, keras.optimizers.Adam):
    """Keras Adam with coupled L2 weight decay (added to the gradient before the moments)."""

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.0,
        exclude_from_weight_decay=NORM_AND_BIAS_PATTERNS,
        name="AdamL2",
        **kwargs,
    ):
        super().__init__(
            learning_rate=_as_lr(learning_rate), weight_decay=None, name=name, **kwargs
        )
        self._setup_exclusion(exclude_from_weight_decay, weight_decay)

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.l2
        config["exclude_from_weight_decay"] = list(self.exclude_from_weight_decay_patterns)
        return config


@keras.saving.register_keras_serializable(package="tf_simclr")
class AdamWExclude(_ExcludeByPath, keras.optimizers.AdamW):
    """Keras AdamW (decoupled decay w <- w - lr * weight_decay * w, applied before the Adam
    step) on variables not matching `exclude_from_weight_decay`."""

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        exclude_from_weight_decay=NORM_AND_BIAS_PATTERNS,
        name="AdamWExclude",
        **kwargs,
    ):
        super().__init__(
            learning_rate=_as_lr(learning_rate),
            weight_decay=_check_float(weight_decay, "weight_decay"),
            name=name,
            **kwargs,
        )
        self._setup_exclusion(exclude_from_weight_decay, 0.0)

    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay"] = list(self.exclude_from_weight_decay_patterns)
        return config


@keras.saving.register_keras_serializable(package="tf_simclr")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warmup then cosine decay to zero (the SimCLR reference schedule):

        step < warmup_steps:  lr = base * step / warmup_steps
        otherwise:            lr = base * 0.5 * (1 + cos(pi * min(step - warmup, T) / T)),
                              T = total_steps - warmup_steps
    so lr(0) = 0, lr(warmup_steps) = base, lr(step >= total_steps) = 0. With warmup_steps = 0
    there is no warmup; with total_steps == warmup_steps the rate drops to 0 after the warmup.
    `base_learning_rate` (> 0) is the already scaled rate (see `scale_learning_rate`).

    Keras' CosineDecay (from 0, `warmup_target` = base) computes it; this class checks the
    arguments, keeps the reference's terms in its config and adds the case without decay
    (Keras needs decay_steps > 0). Against the schedule it replaced (the formula above written
    out) and the reference's float32 formula, over whole schedules up to 31,282 steps, it
    differs by at most 2 ulps of the base rate (9.5e-7 at base 4.8), as those two differ from
    each other: float32 round-off of cos near pi, no closer to or further from float64.
    """

    def __init__(self, base_learning_rate, warmup_steps, total_steps, name="WarmupCosineDecay"):
        base_learning_rate = _check_float(base_learning_rate, "base_learning_rate", open_low=True)
        for arg, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{arg} must be an integer >= 0, got {value!r}.")
        if total_steps < warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps}): "
                "shorten the warmup or train longer."
            )
        super().__init__(
            initial_learning_rate=0.0,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=base_learning_rate,
            warmup_steps=int(warmup_steps),
            name=name,
        )
        self.base_learning_rate = base_learning_rate
        self.total_steps = int(total_steps)

    def __call__(self, step):
        learning_rate = super().__call__(step)
        if self.total_steps > self.warmup_steps:
            return learning_rate
        after_warmup = tf.cast(step, learning_rate.dtype) >= float(self.warmup_steps)
        return tf.where(after_warmup, tf.zeros_like(learning_rate), learning_rate)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }


class ScheduleSteps:
    """The warmup and total steps of schedules laid out while training (--train_minutes: the
    steps that fit are known only once the first loops are timed). They are tf.Variables that
    `PlannedWarmupCosineDecay` reads at every step, so `assign` changes the schedule of an
    already traced training function. Schedules built on one ScheduleSteps change together."""

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        _check_schedule_steps(warmup_steps, total_steps)
        make = lambda value, name: tf.Variable(  # noqa: E731
            value, dtype=tf.int64, trainable=False, name=name
        )
        self.warmup_steps = make(warmup_steps, "schedule_warmup_steps")
        self.total_steps = make(total_steps, "schedule_total_steps")
        self.decay_steps = make(max(total_steps - warmup_steps, 1), "schedule_decay_steps")

    def assign(self, warmup_steps: int, total_steps: int) -> None:
        """Lay the schedules out over `total_steps`, the first `warmup_steps` warming up."""
        _check_schedule_steps(warmup_steps, total_steps)
        self.warmup_steps.assign(warmup_steps)
        self.total_steps.assign(total_steps)
        self.decay_steps.assign(max(total_steps - warmup_steps, 1))

    def values(self) -> tuple[int, int]:
        """(warmup_steps, total_steps) as numbers."""
        return int(self.warmup_steps.numpy()), int(self.total_steps.numpy())


def _check_schedule_steps(warmup_steps, total_steps) -> None:
    for arg, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{arg} must be an integer >= 0, got {value!r}.")
    if total_steps < warmup_steps:
        raise ValueError(
            f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps}): "
            "shorten the warmup or train longer."
        )


@keras.saving.register_keras_serializable(package="tf_simclr")
class PlannedWarmupCosineDecay(WarmupCosineDecay):
    """`WarmupCosineDecay` whose warmup and total steps are read from `steps` (a
    `ScheduleSteps`) at every step: the same values as WarmupCosineDecay(base, warmup, total)
    for the steps last assigned, computed by the same Keras CosineDecay."""

    def __init__(self, base_learning_rate, steps: ScheduleSteps, name="WarmupCosineDecay"):
        warmup, total = steps.values()
        super().__init__(base_learning_rate, warmup, total, name=name)
        self.steps = steps
        # Keras' CosineDecay.__call__ casts these two at every call: the variables, not numbers.
        self.warmup_steps = steps.warmup_steps
        self.decay_steps = steps.decay_steps
        self.total_steps = steps.total_steps

    def __call__(self, step):
        learning_rate = keras.optimizers.schedules.CosineDecay.__call__(self, step)
        # WarmupCosineDecay's case without decay (total == warmup): 0 after the warmup.
        no_decay = self.steps.total_steps <= self.steps.warmup_steps
        after_warmup = tf.cast(step, tf.int64) >= self.steps.warmup_steps
        return tf.where(no_decay & after_warmup, tf.zeros_like(learning_rate), learning_rate)

    def get_config(self):
        warmup, total = self.steps.values()
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": warmup,
            "total_steps": total,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        steps = ScheduleSteps(config["warmup_steps"], config["total_steps"])
        return cls(config["base_learning_rate"], steps, name=config["name"])


def scale_learning_rate(base, batch_size, scaling="linear") -> float:
    """SimCLR learning-rate scaling: base * B / 256 ("linear") or base * sqrt(B) ("sqrt")."""
    base = _check_float(base, "learning_rate", open_low=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if scaling == "linear":
        return base * batch_size / 256.0
    if scaling == "sqrt":
        return base * math.sqrt(batch_size)
    raise ValueError(
        f"Unknown learning_rate_scaling {scaling!r}; use one of {LR_SCALINGS} "
        "('linear': base*B/256, 'sqrt': base*sqrt(B))."
    )


def _given_or(value, default):
    return default if value is None else value


def build_optimizer(
    name="lars",
    learning_rate=0.3,
    momentum=0.9,
    weight_decay=0.0,
    *,
    eta=0.001,
    nesterov=False,
    exclude_from_weight_decay=None,
    exclude_from_layer_adaptation=None,
    mixed_precision=None,
    **kwargs,
) -> keras.optimizers.Optimizer:
    """Builds the optimiser `name` with weight decay handled consistently.

    - "lars": `LARS` with its own defaults: batch-norm parameters, biases and the supervised
      head ("head_supervised") get no weight decay and no trust scaling, the reference's list.
      The reference regularises the head's kernel with an L2 term in the loss instead:
      `SimCLRModel(head_weight_decay=...)` adds it (tf_simclr's training loop does).
    - "momentum": `SGDL2` (momentum, `nesterov`), coupled L2 decay.
    - "adam": `AdamL2`, coupled L2 decay.  "adamw": `AdamWExclude`, decoupled decay.
    For the last three, batch-norm parameters and biases are excluded from decay (the
    reference L2 loss excluded only batch norm). Pass `exclude_*` to override (regexes).
    `mixed_precision="mixed_float16"` wraps the result in a Keras LossScaleOptimizer (needed in
    custom loops; `model.compile` does it by itself). Other kwargs go to the Keras optimiser.
    Arguments are checked as the command line checks its flags: `learning_rate` > 0 and finite
    (or a LearningRateSchedule), `momentum` in [0, 1), `weight_decay` >= 0, `eta` > 0.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; use one of {OPTIMIZERS}.")
    if mixed_precision not in (None, "float32", "mixed_float16", "mixed_bfloat16"):
        raise ValueError(
            f"mixed_precision must be None, 'float32', 'mixed_float16' or 'mixed_bfloat16', "
            f"got {mixed_precision!r}."
        )
    if name == "lars":
        decay_excl = _given_or(exclude_from_weight_decay, DEFAULT_EXCLUDE)
        opt = LARS(
            learning_rate=learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            exclude_from_weight_decay=decay_excl,
            exclude_from_layer_adaptation=_given_or(exclude_from_layer_adaptation, decay_excl),
            nesterov=nesterov,
            **kwargs,
        )
    else:
        if exclude_from_layer_adaptation is not None:
            raise ValueError("exclude_from_layer_adaptation only applies to optimizer='lars'.")
        common = dict(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=_given_or(exclude_from_weight_decay, NORM_AND_BIAS_PATTERNS),
            **kwargs,
        )
        if name == "momentum":
            opt = SGDL2(momentum=momentum, nesterov=nesterov, **common)
        else:
            opt = {"adam": AdamL2, "adamw": AdamWExclude}[name](**common)
    if mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
