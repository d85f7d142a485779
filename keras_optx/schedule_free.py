"""Schedule-free training (Defazio et al. 2024): `ScheduleFreeAdamW`, `ScheduleFreeSGD`, the
`ScheduleFreeEval` callback and `recompute_batchnorm`.

Three sequences: z (the base optimizer's iterate, a slot), x (the weighted average of z, where
to evaluate) and y = (1−β)·z + β·x (where gradients are taken). As in the `schedulefree`
package, the model's variables hold y while training; x is not stored but recovered from y and z
(x = y + (1 − 1/β)·(z − y)). `opt.eval()` writes x into the variables and `opt.train()` writes y
back, with a mode flag (an optimizer variable, saved) that says which they hold.

The slot keeps z as its offset from y, u = z − y (starting at 0: z starts at y, as the package's
z = clone(y) at a variable's first update). A variable that has not been updated yet (no gradient
so far) then has no offset, and eval and train leave it as it is, as the package skips parameters
without a z.
"""

import numbers

import keras

from . import _checks as check
from ._backends import current as backend
from ._base import Rule, _lead_rate, _plus_decay, _track_once
from ._tensors import ops
from .torch import _may_decay, _WeightDecay

_register = keras.saving.register_keras_serializable(package="keras_optx")


def _averaging_beta(name, value):
    """β ∈ (0, 1): eval divides by it (x = y + (1 − 1/β)·(z − y))."""
    value = check._number(name, value)
    if not 0 < value < 1:
        raise ValueError(f"`{name}` must be in (0, 1) (x = y + (1 − 1/{name})·(z − y)); received {name}={value}.")
    return value


def _beta_pair(name, value):
    """(β₁, β₂): β₁ ∈ (0, 1), β₂ ∈ [0, 1). Numbers only: eval and train read β₁ outside the step."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a pair (β₁, β₂); received {value!r}.")
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a pair (β₁, β₂) of length 2; received {name}={tuple(value)}.")
    return _averaging_beta(f"{name}[0]", value[0]), check.unit(f"{name}[1]", value[1])


def _ratio(a, b):
    """a / b, 0 where b = 0 (the package's ZeroDivisionError branch: lr = 0 throughout)."""
    if isinstance(b, numbers.Number):
        return a / b if b else 0.0
    positive = b > 0
    return keras.ops.where(positive, a / keras.ops.where(positive, b, 1.0), 0.0)


class _ScheduleFree(Rule):
    """The schedule-free step around a base direction d (`_direction`):

    sched = min(t/warmup_steps, 1) (1 without warm-up);  ηₜ = η·sched;  η_max ← max(η_max, ηₜ)
    wₜ = tʳ · η_max^p (p = weight_lr_power);  W ← W + wₜ;  cₜ = wₜ/W
    y ← (1−cₜ)·y + cₜ·z − ηₜ·(1 − β·(1−cₜ))·d;   z ← z − ηₜ·d
    kept as u = z − y:  Δ = ηₜ·(1 − β(1−cₜ))·d − cₜ·u;  u ← (1−cₜ)·(u − ηₜ·β·d)
    """

    slots = {"z_offset": 0.0}
    low_precision_refusal = "x and y are recovered from z − y, which must keep the weights' precision"
    weight_decay = _WeightDecay("weight_decay")  # the rule's own, in the attribute Keras keeps its decay in

    # Keras glue ---------------------------------------------------------------
    def _build_state(self, variables):
        made = super()._build_state(variables)

        def scalar(name, value):
            return self.add_variable(
                shape=(), dtype="float32", initializer=keras.initializers.Constant(value), name=name, aggregation="none"
            )

        # The package's lr_max starts at −1 (any rate ≥ 0 replaces it); train_mode 1: model.fit trains from the start.
        self._lr_max, self._weight_sum, self._train_mode = scalar("lr_max", -1.0), scalar("weight_sum", 0.0), scalar("train_mode", 1.0)
        self._train_mode_host = True
        if "weight_decay" in self.hyperparameters:  # a decay of 0 at build: steps without a decay term (as keras_optx.torch)
            self.__dict__["_decay_term"] = _may_decay(self._static("weight_decay"))
        return made + [self._lr_max, self._weight_sum, self._train_mode]

    def _hyper_check(self, name, value):
        if name == "weight_decay" and self.__dict__.get("_decay_term") is False and _may_decay(value):
            raise ValueError(
                f"`weight_decay` was 0 when the optimizer was built, so its steps have no decay term; it cannot "
                f"become {value!r} now. Construct it with the weight_decay (or a schedule) to adjust during training."
            )

    def _apply_weight_decay(self, variables):
        """Keras's own decoupled decay: never (`weight_decay` is the rule's, applied at y in the step)."""

    def _claim(self, owner):
        raise ValueError(
            f"{type(self).__name__} keeps the averaged weights of the variables it steps, so it cannot be a member "
            f"of {type(owner).__name__}; use it as the model's optimizer (clip gradients with its `clipnorm=` keyword)."
        )

    def apply(self, grads, trainable_variables=None):
        if self.built and not self._train_mode_host:
            raise RuntimeError(
                f"{type(self).__name__} is in eval mode (the variables hold the averaged weights x); call "
                "`optimizer.train()` before training, as schedulefree's optimizers require (or pass "
                "`keras_optx.ScheduleFreeEval()` to `model.fit`, which switches for you)."
            )
        return super().apply(grads, trainable_variables)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._sync_mode()

    def set_weights(self, weights):
        super().set_weights(weights)
        self._sync_mode()

    def _sync_mode(self):
        if self.built:
            self._train_mode_host = bool(keras.ops.convert_to_numpy(self._train_mode.value) > 0.5)

    # Train and eval weights ---------------------------------------------------------
    @property
    def training(self):
        """True when the variables hold y (train mode), False when they hold x (after `eval()`)."""
        return self._train_mode_host if self.built else True

    def eval(self):
        """Put the averaged weights x into the variables: x = y + (1 − 1/β)·(z − y) (the package's
        `p.lerp_(z, 1 − 1/β)`); nothing to do in eval mode already. Steps are refused until `train()`."""
        self._switch(train=False)

    def train(self):
        """Put the gradient point y back into the variables: y = x + (1 − β)·(z − x) (the package's
        `p.lerp_(z, 1 − β)`); nothing to do in train mode already."""
        self._switch(train=True)

    def _switch(self, train):
        if not self.built or self._train_mode_host == train:
            return  # unbuilt: no step was taken, x = y
        # x = y + (1 − 1/β)·u and y = x − (1 − 1/β)·u, u = z − y (0 for a variable not updated yet)
        weight = 1.0 - 1.0 / self._averaging_beta()
        weight = -weight if train else weight
        for variable, offset in zip(self._trainable_variables, self._slot_variables["z_offset"]):
            value = keras.ops.cast(variable.value, offset.dtype)
            variable.assign(keras.ops.cast(value + weight * offset.value, variable.dtype))
        self._train_mode.assign(1.0 if train else 0.0)
        self._train_mode_host = train

    # The step -------------------------------------------------------------------------
    def _transform(self, g, x, state, t, step):
        sched, lr_t, c = self._averaging(t, self._base_rate(step))
        d, scale, slots = self._direction(g, x, state, t, step, lr_t, sched)  # the z step ηₜ·d = scale·d
        beta = self._averaging_beta()
        u = state["z_offset"]  # z − y
        # Δ = y − y_new with y_new = (1−c)·y + c·z − ηₜ·(1 − β(1−c))·d;  z_new − y_new = (1−c)·(u − ηₜ·β·d)
        delta = (scale * (1 - beta * (1 - c))) * d - c * u
        return delta, {"z_offset": (1 - c) * (u - (scale * beta) * d), **slots}

    def _averaging(self, t, lr):
        """(sched, ηₜ, cₜ) at update t and rate η, from η_max and W, whose new values `_update_step`
        writes after the step (the formula's and the torch kernels' one source of them)."""
        warmup = self.warmup_steps
        sched = ops.minimum(t / warmup, 1.0) if warmup else 1.0
        lr_t = lr * sched
        old_max, old_sum = (backend.scalar(v) for v in backend.values([self._lr_max, self._weight_sum]))
        lr_max = ops.maximum(lr_t, old_max)
        weight = t**self.r * lr_max**self.weight_lr_power
        weight_sum = old_sum + weight
        self.__dict__["_scalar_writes"] = [(self._lr_max, lr_max), (self._weight_sum, weight_sum)]
        return sched, lr_t, _ratio(weight, weight_sum)

    def _base_rate(self, step):
        """η, the rate the warm-up multiplies and the average weights by."""
        return self._rate(step)

    def _update_step(self, grads, variables):
        super()._update_step(grads, variables)
        backend.assign(self, [(v, keras.ops.convert_to_tensor(value, "float32")) for v, value in self.__dict__.pop("_scalar_writes")])

    def _decayed(self, d, y):
        """d + λ·y (the package's weight decay, at y), for the variables that decay."""
        if not self.__dict__.get("_decay_term", True):
            return d
        return _plus_decay(d, y, self.weight_decay, self._decay_mask())


@_register
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-Free AdamW, as `schedulefree.AdamWScheduleFree` (Defazio et al. 2024).

    v ← β₂·v + (1−β₂)·g²;  d = g / (√(v/(1−β₂ᵗ)) + ϵ) + λ·y  (λ = weight_decay, at y)
    sched = min(t/warmup_steps, 1);  ηₜ = η·sched;  η_max ← max(η_max, ηₜ)
    wₜ = tʳ · η_max^p;  W ← W + wₜ;  cₜ = wₜ/W  (p = weight_lr_power)
    z ← z − ηₜ·d  (z starts at y);   y ← (1−cₜ)·y + cₜ·z_old − ηₜ·(1 − β₁(1−cₜ))·d
    x = y + (1 − 1/β₁)·(z − y)  (the average, where to evaluate: `eval()`)

    The model's variables hold y while training. `opt.eval()` puts x into them and
    `opt.train()` puts y back; a step in eval mode is refused. `keras_optx.ScheduleFreeEval()`
    in `model.fit(callbacks=…)` does the switching: validation, a later `model.evaluate` and
    `model.save` see x. The mode is an optimizer variable (saved): a model saved in eval mode
    loads in eval mode, and after `train()` resumes the uninterrupted run exactly. State: the
    slots `z_offset` (u = z − y, so z starts at y for each variable at its first update, as the
    package's copy) and `v`; the scalars η_max, W and the mode.

    Args:
        learning_rate: η ≥ 0, default 0.0025 (a number, schedule or callable; the warm-up multiplies it).
        beta: (β₁, β₂), default (0.9, 0.999); β₁ ∈ (0, 1) is the interpolation (eval divides by it),
            β₂ ∈ [0, 1). Numbers (no schedules: eval and train read β₁).
        epsilon: ϵ ≥ 0, default 1e-8, outside the square root.
        weight_decay: λ ≥ 0, default 0: the package's decay, added to the normalised gradient at y
            (so it enters z and y scaled by ηₜ). Keras's `weight_decay=` keyword (decoupled,
            x ← x − η·λ·x before the step) shares the name and is not available on this class:
            the argument is always this λ. `exclude_from_weight_decay` applies to it.
        warmup_steps: an integer ≥ 0, default 0: ηₜ rises linearly over the first steps.
        r: ≥ 0, default 0: polynomial weighting tʳ of the average.
        weight_lr_power: p ≥ 0, default 2: the average weights each step by η_max^p.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay` (`clipnorm`, …).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ScheduleFreeAdamW(0.1, warmup_steps=2)
        >>> for _ in range(3): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))  # y, the gradient point
        [0.81 2.19]
        >>> opt.eval(); print(np.round(keras.ops.convert_to_numpy(x), 4))  # x, the average
        [0.8167 2.1833]
        >>> opt.train()

    Differs from `keras.optimizers.ScheduleFreeAdamW`: Keras averages uniformly (cₜ = 1/t; the
    same as here without warm-up and r = 0, different during warm-up), its `weight_decay` is
    Keras's decoupled decay, and it has no eval/train swap (its variables always hold y). Differs
    from `optax.contrib.schedule_free_adamw`: optax's warm-up starts the z step at rate 0 and has no
    r; it returns y and gives x by `schedule_free_eval_params`. docs/schedule-free.md shows each.
    Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky 2024, "The Road Less Scheduled",
    arXiv:2405.15682.
    """

    hyperparameters = {
        "beta": _beta_pair,
        "epsilon": check.nonnegative,
        "weight_decay": check.nonnegative,
        "warmup_steps": check.nonnegative_int,
        "r": check.nonnegative,
        "weight_lr_power": check.nonnegative,
    }
    slots = {"z_offset": 0.0, "v": 0.0}

    def __init__(self, learning_rate=0.0025, beta=(0.9, 0.999), epsilon=1e-8, weight_decay=0.0, warmup_steps=0,
                 r=0.0, weight_lr_power=2.0, **kwargs):
        super().__init__(learning_rate, beta=beta, epsilon=epsilon, weight_decay=weight_decay,
                         warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power, **kwargs)

    def _averaging_beta(self):
        return self.beta[0]

    def _direction(self, g, y, s, t, step, lr_t, sched):
        b2 = self.beta[1]
        v = b2 * s["v"] + (1 - b2) * g * g
        d = g / (ops.sqrt(v / ops.one_minus_pow(b2, t)) + self.epsilon)
        return self._decayed(d, y), lr_t, {"v": v}


@_register
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-Free SGD, as `schedulefree.SGDScheduleFree` (Defazio et al. 2024).

    d = g + λ·y  (λ = weight_decay, at y)
    sched = min(t/warmup_steps, 1);  ηₜ = η·sched;  η_max ← max(η_max, ηₜ)
    wₜ = tʳ · η_max^p;  W ← W + wₜ;  cₜ = wₜ/W  (p = weight_lr_power)
    z ← z − ηₜ·d  (z starts at y);   y ← (1−cₜ)·y + cₜ·z_old − ηₜ·(1 − μ(1−cₜ))·d
    x = y + (1 − 1/μ)·(z − y)  (the average, where to evaluate: `eval()`)

    Train and eval weights, the mode and saving as `ScheduleFreeAdamW`.

    Args:
        learning_rate: η ≥ 0, default 1.0 (the package's; a number, schedule or callable).
        momentum: μ ∈ (0, 1), default 0.9: the interpolation y = (1−μ)·z + μ·x (a number).
        weight_decay: λ ≥ 0, default 0: L2 added to the gradient at y, as the package. Keras's
            `weight_decay=` keyword (decoupled) is not available on this class.
        warmup_steps: an integer ≥ 0, default 0: linear warm-up of η.
        r: ≥ 0, default 0: polynomial weighting tʳ of the average.
        weight_lr_power: p ≥ 0, default 2: the average weights each step by η_max^p.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay`.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ScheduleFreeSGD(0.1, momentum=0.9)
        >>> for _ in range(3): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))
        [0.79 2.21]
        >>> opt.eval(); print(np.round(keras.ops.convert_to_numpy(x), 4))
        [0.8 2.2]

    Keras has no schedule-free SGD; `optax.contrib.schedule_free_sgd` differs in its warm-up as
    for AdamW (its z step starts at rate 0) and gives x by `schedule_free_eval_params`.
    Defazio et al. 2024, "The Road Less Scheduled", arXiv:2405.15682.
    """

    hyperparameters = {
        "momentum": _averaging_beta,
        "weight_decay": check.nonnegative,
        "warmup_steps": check.nonnegative_int,
        "r": check.nonnegative,
        "weight_lr_power": check.nonnegative,
    }

    def __init__(self, learning_rate=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0, r=0.0,
                 weight_lr_power=2.0, **kwargs):
        super().__init__(learning_rate, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         r=r, weight_lr_power=weight_lr_power, **kwargs)

    def _averaging_beta(self):
        return self.momentum

    def _direction(self, g, y, s, t, step, lr_t, sched):
        return self._decayed(g, y), lr_t, {}


@_register
class ScheduleFree(_ScheduleFree):
    """Schedule-free around any keras_optx rule or chain (`optax.contrib.schedule_free(base, …)`).

    The base's update Δ_b (with its own rate η and state) is the z step, scaled by the warm-up:
    sched = min(t/warmup_steps, 1);  ηₜ = η·sched;  η_max ← max(η_max, ηₜ)
    wₜ = tʳ · η_max^p;  W ← W + wₜ;  cₜ = wₜ/W
    z ← z − sched·Δ_b;   y ← (1−cₜ)·y + cₜ·z_old − (1 − β(1−cₜ))·sched·Δ_b
    The base is evaluated at y; give it no momentum (the interpolation replaces it).

    The named cases, step for step:
    `ScheduleFreeSGD(η, μ, weight_decay=λ)` = `ScheduleFree(Optimiser(WeightDecay(λ), Descent(η)), μ)`;
    `ScheduleFreeAdamW(η, (β₁, β₂), ϵ, λ)` = `ScheduleFree(Optimiser(ADAM(1.0, (0.0, β₂), ϵ),
    WeightDecay(λ), Descent(η)), β₁)` (Adam without momentum is the normalised gradient).
    Train and eval weights, the mode and saving as `ScheduleFreeAdamW`.

    Args:
        base: a keras_optx rule or chain with a learning rate (η: `learning_rate` reads and
            sets the base's, so Keras callbacks steer it).
        beta: β ∈ (0, 1), default 0.9: the interpolation y = (1−β)·z + β·x (a number).
        warmup_steps: an integer ≥ 0, default 0.
        r: ≥ 0, default 0: polynomial weighting tʳ of the average.
        weight_lr_power: p ≥ 0, default 2.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay` (decay goes in
            the base: `Optimiser(WeightDecay(λ), …)` decays at y, as the package).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ScheduleFree(keras_optx.Descent(0.1), beta=0.9)  # = ScheduleFreeSGD(0.1, 0.9)
        >>> for _ in range(3): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))
        [0.79 2.21]

    optax's `schedule_free` takes the rate schedule apart from the base and warms up from 0 (see
    `ScheduleFreeAdamW`). Defazio et al. 2024, "The Road Less Scheduled", arXiv:2405.15682.
    """

    hyperparameters = {
        "beta": _averaging_beta,
        "warmup_steps": check.nonnegative_int,
        "r": check.nonnegative,
        "weight_lr_power": check.nonnegative,
    }
    has_learning_rate = False
    weight_decay = None  # Keras's keyword, refused below (the named classes' own λ does not apply here)

    def __init__(self, base, beta=0.9, warmup_steps=0, r=0.0, weight_lr_power=2.0, **kwargs):
        if isinstance(base, dict):  # from_config
            base = keras.optimizers.deserialize(base)
        if not isinstance(base, Rule) or isinstance(base, _ScheduleFree):
            raise TypeError(f"`base` must be a keras_optx rule or chain (not schedule-free itself); received {base!r}.")
        if not base._steers_rate():
            raise ValueError(f"`base` must have a learning rate (η, which the warm-up and the average use); {base!r} has none.")
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "ScheduleFree takes no Keras `weight_decay=`: put the decay in the base, "
                "ScheduleFree(Optimiser(WeightDecay(λ), rule)), which decays at y as schedulefree does."
            )
        super().__init__(1.0, beta=beta, warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power, **kwargs)
        self.base = base
        base._claim(self)
        _lead_rate(self, [base], drop_own=True)
        for v in base._rate_variables():
            _track_once(self, v)

    def _parts(self):
        base = self.__dict__.get("base")
        return None if base is None else (base,)

    @property
    def slots(self):
        return {"z_offset": 0.0, **{f"0_{k}": v for k, v in self.base.slots.items()}}

    def _slot_owners(self, variables):
        own = {"z_offset": (0.0, [True] * len(variables))}
        return {**own, **{f"0_{k}": spec for k, spec in self.base._slot_owners(variables).items()}}

    def _build_state(self, variables):
        return super()._build_state(variables) + self.base._build_state(variables)

    def _steers_rate(self):
        return True

    def _rate_variables(self):
        return self.base._rate_variables()

    def _averaging_beta(self):
        return self.beta

    def _base_rate(self, step):
        return self.base._rate(step)

    def _direction(self, g, y, s, t, step, lr_t, sched):
        base_state = {k[2:]: v for k, v in s.items() if k.startswith("0_")}
        d, new = self.base._transform(g, y, base_state, t, step)
        return d, sched, {f"0_{k}": v for k, v in new.items()}

    def get_config(self):
        config = super().get_config()
        config["base"] = keras.optimizers.serialize(self.base)
        return config

    def __repr__(self):
        return f"ScheduleFree({self.base!r}, beta={self.beta!r})"


class ScheduleFreeEval(keras.callbacks.Callback):
    """`model.fit(..., callbacks=[keras_optx.ScheduleFreeEval()])`: training steps see y, validation,
    a later `model.evaluate`/`predict` and `model.save` see the averaged weights x.

    At the start of training it calls `optimizer.train()`; around each validation `eval()` then
    `train()`; at the end of training `eval()`, so the model holds x. Passed to
    `model.evaluate(callbacks=…)` it evaluates at x and restores the mode it found. To train again
    after `fit`, pass it again (or call `model.optimizer.train()`).

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(keras_optx.ScheduleFreeAdamW(0.01), "mse")
        >>> data = np.ones((8, 2), "float32"), np.zeros((8, 1), "float32")
        >>> _ = model.fit(*data, epochs=2, validation_data=data, callbacks=[keras_optx.ScheduleFreeEval()], verbose=0)
        >>> model.optimizer.training  # the model now holds x, ready to evaluate and save
        False
    """

    def _optimizer(self):
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # a LossScaleOptimizer's
        if not isinstance(opt, _ScheduleFree):
            raise TypeError(
                f"ScheduleFreeEval needs a schedule-free optimizer (keras_optx.ScheduleFreeAdamW, ScheduleFreeSGD); "
                f"the model's is {type(opt).__name__}."
            )
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()  # jax: the variables hold the latest state before they are switched
        return opt

    def on_train_begin(self, logs=None):
        self._optimizer().train()

    def on_test_begin(self, logs=None):
        opt = self._optimizer()
        self._restore = opt.training
        opt.eval()

    def on_test_end(self, logs=None):
        if getattr(self, "_restore", False):
            self._optimizer().train()
        self._restore = False

    def on_train_end(self, logs=None):
        self._optimizer().eval()


def recompute_batchnorm(model, data, steps=None):
    """Recompute every BatchNormalization layer's moving mean and variance at the model's current
    weights: the average of the batch statistics over `data` (the package's advice: statistics
    gathered during training belong to y; after `optimizer.eval()` they must be recomputed at x).

    Each layer's momentum becomes i/(i+1) at batch i, so after n batches its moving statistics are
    the mean of the n batches' statistics; momentum is restored after. Only forward passes run
    (`model(inputs, training=True)`); no trainable weight changes.

    Args:
        model: a built Keras model; call `optimizer.eval()` first.
        data: an iterable of input batches, or of `(inputs, targets, …)` tuples (targets ignored),
            e.g. a `tf.data.Dataset` or a list of arrays.
        steps: the number of batches to use, default None: all of `data`.

    Returns:
        The number of batches used.

    Example:
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        >>> batches = [np.full((4, 3), float(i), "float32") for i in range(3)]
        >>> keras_optx.schedule_free.recompute_batchnorm(model, batches)
        3
        >>> print(keras.ops.convert_to_numpy(model.layers[0].moving_mean))  # mean of 0, 1, 2
        [1. 1. 1.]
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be None or an integer ≥ 1; received steps={steps!r}.")
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        raise ValueError("recompute_batchnorm: the model has no BatchNormalization layer.")
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for batch in data:
            if steps is not None and count >= steps:
                break
            inputs = batch[0] if isinstance(batch, tuple) else batch
            for layer in layers:
                layer.momentum = count / (count + 1)
            model(inputs, training=True)
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("recompute_batchnorm: `data` gave no batch.")
    return count
