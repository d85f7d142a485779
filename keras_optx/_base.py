"""`Rule`: the one Keras optimizer class every keras_optx rule, transform and chain shares.

A subclass states its hyperparameters (with their checks), its slots (with their
initial values) and `delta`, the update as a formula. Everything Keras-shaped lives
here and beside it, once: validation, slot variables and the update step here; config,
loading and format migration in `_saving`; the gradients' checks in `_gradients`;
`Transform` (no rate, wraps a Keras optimizer) in `_transform`.
What differs per backend (replica sums and cross-replica writes on TensorFlow, kernels
and packed buffers on torch) is in `keras_optx._backends`, behind one small interface.
"""

import contextlib
import contextvars
import weakref

import keras

from . import _checks as check
from . import _rounding, _scale
from ._backends import current as backend
from ._frozen import FreezingMixin
from ._gradients import _checked_gradients
from ._hyper import HyperMixin, _checked_rate, _hyper_owners, _in_step, attach
from ._identity import _same, _set_cache
from ._saving import FORMAT_VERSION, SavingMixin, _versioned  # noqa: F401  (re-exported: the modules below read them here)
from ._tensors import Many, ops
from ._variables import _track_once, _variable_path

_Schedule = keras.optimizers.schedules.LearningRateSchedule
_LOW_PRECISION = ("float16", "bfloat16")
EPSILON = 1e-8


# Keras optimizer keywords that change the update, with their defaults, and keras_optx's `rounding`
# (of the write). A chain member's update is its formula only (the chain applies these), so a member
# refuses them (`Rule._claim`).
_KERAS_UPDATE_KEYWORDS = {
    "rounding": "nearest",
    "weight_decay": None,
    "clipnorm": None,
    "global_clipnorm": None,
    "clipvalue": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


class Slot:
    """A slot whose shape is a function of its variable's shape, for `Rule.slots`: e.g. a Kronecker
    factor `Slot(lambda shape: (shape[0], shape[0]))`. `initial`: its value everywhere (default 0).

    Such a slot is laid out replicated (under `keras.distribution`), never split by `shard_state`,
    and kept out of torch's kernels and packed-buffer fast paths (they pair slots with variables).

    Example:
        A rule keeping a running average of g·gᵀ per matrix (Shampoo's left factor):

        >>> class LeftFactor(keras_optx.Rule):
        ...     slots = {"L": keras_optx.Slot(lambda shape: (shape[0], shape[0]))}
        ...
        ...     def delta(self, ops, g, x, s, t, lr):
        ...         factors = [0.9 * f + 0.1 * keras.ops.matmul(gi, keras.ops.transpose(gi)) for f, gi in zip(s.L.items, g.items)]
        ...         return lr * g, {"L": type(g)(factors)}  # a `Many`, one tensor per variable
        >>> opt, x = LeftFactor(0.1), keras.Variable(np.zeros((2, 3), "float32"))
        >>> opt.apply([np.ones((2, 3), "float32")], [x])
        >>> [tuple(v.shape) for v in opt.variables if v.path.endswith("_L")]
        [(2, 2)]
    """

    def __init__(self, shape, initial=0.0):
        if not callable(shape):
            raise TypeError(f"`Slot(shape)` takes a function of the variable's shape; received {shape!r}.")
        self.shape, self.initial = shape, initial

    def shape_for(self, variable_shape):
        return tuple(int(d) for d in self.shape(tuple(int(d) for d in variable_shape)))


def _has_shaped_slots(owners):
    """Whether any slot of `owners` (a `_slot_owners` answer) is a `Slot` of its own shape."""
    return any(isinstance(initial, Slot) for initial, _ in owners.values())


class State(dict):
    """A rule's slots for all variables, read as attributes: `s.m`, `s.v`."""

    __getattr__ = dict.__getitem__


class Rule(SavingMixin, HyperMixin, FreezingMixin, keras.optimizers.Optimizer):
    """Base class of every keras_optx rule: a Keras optimizer whose update is `delta`.

    Subclasses define:

    - `hyperparameters`: `{name: check}`; each value given to `__init__` is validated
      by its check, stored as an attribute and written to `get_config()`.
    - `slots`: `{name: initial value}`; one variable per slot and model variable, of its shape,
      or of another shape where the value is a `Slot` (a function of the variable's shape).
    - `delta(ops, g, x, s, t, lr)`: returns `(Δ, new_slots)` for the update `x ← x − Δ`.
      `g`, `x` and each `s.<slot>` hold every variable's tensor at once (`Many`),
      `t` = 1, 2, … counts the updates, `lr` is the current learning rate, and
      `ops` offers `sqrt`, `abs`, `maximum`, `minimum`, `clip`, `where`, `norm`
      and `global_norm`. Arithmetic works as on tensors.
    - `has_learning_rate = False` for transforms that take no rate.

    Example:
        Flux's documented custom Momentum, a new class: it runs the formula on every backend.

        >>> @keras.saving.register_keras_serializable("my_rules")
        ... class MyMomentum(keras_optx.Rule):
        ...     hyperparameters = {"rho": keras_optx.checks.unit}
        ...     slots = {"velocity": 0.0}
        ...
        ...     def __init__(self, learning_rate=0.01, rho=0.9, **kwargs):
        ...         super().__init__(learning_rate, rho=rho, **kwargs)
        ...
        ...     def delta(self, ops, g, x, s, t, lr):
        ...         v = self.rho * s.velocity - lr * g
        ...         return -v, {"velocity": v}
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = MyMomentum(0.1, 0.9)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # as keras_optx.Momentum(0.1, 0.9)
        [0.71 2.29]

    The design follows Optimisers.jl and optax: a rule is a gradient transformation
    (Flux.jl, Innes 2018, arXiv:1811.01457).

    Every Keras optimizer keyword (`weight_decay`, `clipnorm`, `use_ema`,
    `gradient_accumulation_steps`, `loss_scale_factor`, `name`, …) is accepted, and two of
    keras_optx's own, about where the state lives (each slot is always created with its
    variable's layout, so under `keras.distribution` it is sharded like its variable):

    - `shard_state=False`: with True, under a data-parallel `keras.distribution` on JAX each
      slot is also split over the data axis, on its first dimension that divides (ZeRO stage 1,
      Rajbhandari et al. 2020, arXiv:1910.02054): ~1/N of the state per device, the same
      update. Where it cannot apply (torch, TensorFlow, no distribution) it warns once.
    - `state_dtype=None`: `"bfloat16"` or `"float16"` stores the slots listed in the rule's
      `low_precision_slots` (with the dtypes each takes) in that dtype; the update is computed
      in float32. A rule that cannot keep its state so (`low_precision_refusal`) refuses it.
    - `rounding="nearest"`: how x − Δ (formed in float32) is rounded into a float16/bfloat16
      variable, once per step: `"nearest"`, `"kahan"` (a compensation slot per such variable, in
      its dtype, carries the rounding error into the next write, as torch-optimi's `kahan_sum`) or
      `"stochastic"` (up or down with probability by distance, from a seed kept as optimizer
      state). float32 variables are untouched by it. A chain or Partition takes it (its members
      refuse it). See `keras_optx/_rounding.py` and docs/low-precision.md.

    >>> opt = keras_optx.ADAM(1e-3, state_dtype="bfloat16", shard_state=True, rounding="kahan")
    """

    hyperparameters = {}
    slots = {}
    has_learning_rate = True
    # `{slot: dtypes}`: the slots that may be stored in bfloat16/float16 (`state_dtype`), and in
    # which. A rule whose state is unsound in low precision lists none and says why in
    # `low_precision_refusal`; `state_dtype` is then refused.
    low_precision_slots = {}
    low_precision_refusal = None

    def __init__(self, learning_rate=1.0, *, shard_state=False, state_dtype=None, rounding="nearest", **kwargs):
        hyper = {k: kwargs.pop(k) for k in list(kwargs) if k in self.hyperparameters}
        rounding = _rounding.check(rounding)
        if self.has_learning_rate:
            learning_rate = check.learning_rate(learning_rate)
        shard_state = _scale.check_shard_state(shard_state)
        state_dtype = _scale.check_state_dtype(state_dtype)
        super().__init__(learning_rate=learning_rate, **kwargs)
        for name, value in hyper.items():
            setattr(self, name, value)  # validated by its `_Hyper` descriptor (keras_optx/_hyper.py)
        self._owner = None
        # Set past the properties, whose checks are for changes after construction (tf's tracking
        # skips an assignment of the value a getter already returns).
        object.__setattr__(self, "_shard_state", shard_state)
        object.__setattr__(self, "_state_dtype", state_dtype)
        object.__setattr__(self, "_rounding", rounding)
        if self._parts() is None:  # a chain or Partition checks once its members are known
            self._check_state_dtype()

    def _parts(self):
        """The rules whose slots this one owns, keyed `<position>_<slot>` (a chain's members, a
        Partition's rules); None for a rule that owns only its own `slots`."""
        return None

    @property
    def shard_state(self):
        return self.__dict__.get("_shard_state", False)

    @shard_state.setter
    def shard_state(self, value):
        # After construction: the constructor's checks, and only before build.
        value = _scale.check_shard_state(value)
        self._refuse_layout_change("shard_state", value)
        owner = self._owners()[1] if len(self._owners()) > 1 else None
        if value and owner is not None and not owner.shard_state:
            raise ValueError(
                f"{self!r} is a member of {owner.name}, which keeps its state: set shard_state=True on the "
                f"{type(owner).__name__} instead."
            )
        if value and getattr(self, "optimizer", None) is not None and not self.slots:
            raise ValueError(
                f"{type(self).__name__} wrapping {type(self.optimizer).__name__} keeps no state of its own; "
                "`shard_state=True` cannot reach its slots. Use a keras_optx chain instead."
            )
        object.__setattr__(self, "_shard_state", value)

    @property
    def state_dtype(self):
        return self.__dict__.get("_state_dtype")

    @state_dtype.setter
    def state_dtype(self, value):
        value = _scale.check_state_dtype(value)
        self._refuse_layout_change("state_dtype", value)
        old = self.__dict__["_state_dtype"]
        object.__setattr__(self, "_state_dtype", value)
        try:
            for rule in self._owners():  # this rule's refusal, and its owners' (a chain holding it)
                rule._check_state_dtype()
        except ValueError:
            object.__setattr__(self, "_state_dtype", old)
            raise

    @property
    def rounding(self):
        return self.__dict__.get("_rounding", "nearest")

    @rounding.setter
    def rounding(self, value):
        # After construction: the constructor's check, and only before build (the write's state is made then).
        value = _rounding.check(value)
        self._refuse_layout_change("rounding", value)
        object.__setattr__(self, "_rounding", value)

    def _refuse_layout_change(self, name, value):
        root = self._root()
        if root.built and getattr(self, name) != value:
            raise ValueError(
                f"`{name}` of {self.name} cannot change once {root.name} is built: its slots already exist "
                f"(with {name}={getattr(self, name)!r}). Set {name}={value!r} when constructing the optimizer."
            )

    def _check_state_dtype(self):
        """Refuse a `state_dtype` that no slot of this rule may take (by the rule's name and why)."""
        dtype = self.state_dtype
        if dtype is None:
            return
        for part in self._parts() or ():
            if part.state_dtype not in (None, dtype):
                raise ValueError(f"{part!r} has state_dtype={part.state_dtype!r}, its owner state_dtype={dtype!r}; set one.")
            refusal = part._state_dtype_refusal(dtype) if any(True for _ in part._slot_dtypes(dtype)) else None
            if refusal:
                raise ValueError(f"{refusal} Give `state_dtype` to the members that take it instead.")
        refusal = self._state_dtype_refusal(dtype)
        if refusal:
            raise ValueError(refusal)

    def _state_dtype_refusal(self, dtype):
        if any(self._slot_dtypes(dtype).values()):
            return None
        why = self.low_precision_refusal or (
            "it keeps no state" if not self._slot_dtypes(dtype) else
            "its slots hold squared gradients, which underflow in float16 for |g| < 2.4e-4; use 'bfloat16'"
        )
        return f"{type(self).__name__} does not take state_dtype={dtype!r}: {why}."

    def _slot_dtypes(self, inherited=None):
        """`{slot: its low-precision dtype, or None (the variable's)}` under `state_dtype` (or its owner's)."""
        dtype = self.state_dtype or inherited
        parts = self._parts()
        if parts is not None:
            return {f"{i}_{k}": d for i, part in enumerate(parts) for k, d in part._slot_dtypes(dtype).items()}
        return {name: dtype if dtype in self.low_precision_slots.get(name, ()) else None for name in self.slots}

    # The update, as a formula ----------------------------------------------------
    def delta(self, ops, g, x, s, t, lr):
        raise NotImplementedError(f"{type(self).__name__} must define `delta(ops, g, x, s, t, lr)`.")

    def _transform(self, g, x, state, t, step):
        """(Δ, new slots) of this rule at update `t` (1-based) and optimizer step `step` (0-based)."""
        return self.delta(ops, g, x, State(state), t, self._rate(step))

    def _rate(self, step):
        rate = self._learning_rate
        if isinstance(rate, _Schedule):
            rate = rate(step)
        elif isinstance(rate, keras.Variable):
            rate = rate.value
        elif callable(rate):
            rate = rate()
        return backend.scalar(rate)

    # Keras glue -------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        self._refuse_if_member("build")
        self._check_routes(variables)  # before any variable is made: a refused routing leaves no half-built state
        super().build(variables)
        self._slot_variables = {}
        low = self._slot_dtypes()
        self._low_precision_state = any(low.values())
        owners = self._slot_owners(variables)
        # Kernels and packed buffers (torch) pair each slot with its variable: not for `Slot`s of their own shape.
        self._shaped_slots = _has_shaped_slots(owners)
        for name, (initial, has) in owners.items():
            # Each slot laid out like its variable (sharded like it under keras.distribution);
            # None where a variable keeps no such slot (a Partition's rule holds state for its variables only).
            spec = initial if isinstance(initial, Slot) else None
            self._slot_variables[name] = [
                _scale.slot_variable(
                    self, v, f"{_variable_path(v)}_{name}", spec.initial if spec else initial,
                    low.get(name) or _state_dtype(v.dtype), self.shard_state, spec.shape_for(v.shape) if spec else None,
                )
                if own
                else None
                for v, own in zip(variables, has)
            ]
            if spec is None:
                backend.prepare_slots([s for s in self._slot_variables[name] if s is not None])
        for v in self._build_state(variables):
            _track_once(self, v)
        _rounding.build(self, variables)  # after every other variable: files without it keep their layout

    def _slot_owners(self, variables):
        """`{slot name: (initial value, [whether each of `variables` keeps it])}`; every variable by default."""
        return {name: (initial, [True] * len(variables)) for name, initial in self.slots.items()}

    def _build_state(self, variables):
        """Create variables other than slots at build (a Partition's freeze mask); returns them
        for the optimizer that owns this rule to track and save: its hyperparameter vector."""
        return self._build_hyper()

    def apply(self, grads, trainable_variables=None):
        # Keras zips grads with variables: an extra gradient or a wrong shape would be
        # dropped silently or fail half-way through the writes. Refuse before any write.
        self._refuse_if_member("apply")
        grads, trainable_variables = _checked_gradients(self, grads, trainable_variables)
        return super().apply(grads, trainable_variables)

    def _refuse_if_member(self, what):
        owner = self._owner() if self._owner is not None else None
        if owner is not None:
            raise ValueError(
                f"{self.name} is a member of {owner.name}, which keeps its state; it cannot also {what} on its "
                "own. Use the chain, or a fresh instance for training on its own."
            )

    @property
    def learning_rate(self):
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        # The constructor's check, so a negative rate set later (by hand or a callback) is refused too.
        value = _checked_rate(value)
        attach(self)
        keras.optimizers.Optimizer.learning_rate.fset(self, value)
        from ._hyper import _walk

        for rule in _walk(self):  # this rate's owner inside (a chain's is its last member's) passes it on
            if getattr(rule, "_learning_rate", None) is self._learning_rate and hasattr(rule, "_follow_rate"):
                rule._follow_rate(value)

    def _follow_rate(self, value):
        """The rate was set to `value`: pass it to what follows it (torch param groups without their own)."""

    def _get_current_learning_rate(self):
        # A schedule reads the update count of the optimizer that runs the steps: a chain member's or
        # Partition rule's own `iterations` never advance.
        rate = self._learning_rate
        if isinstance(rate, _Schedule):
            return rate(self._root().iterations)
        return super()._get_current_learning_rate()

    def _root(self):
        """The optimizer that runs the steps: the outermost owner of this rule (itself if none)."""
        return self._owners()[-1]

    def _owners(self):
        """This rule, then the chain or Partition holding it, and so on outwards."""
        rules = [self]
        while getattr(rules[-1], "_owner", None) is not None and rules[-1]._owner() is not None:
            rules.append(rules[-1]._owner())
        return rules

    def _steers_rate(self):
        """Whether `learning_rate` is a rate this rule's update uses (a chain or Partition reads the
        last member for which it is, as its own)."""
        return self.has_learning_rate

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude variables from weight decay: Keras's `weight_decay=` keyword, `WeightDecay`
        members (also when called on the chain holding them), `ADAMW`'s decay and `keras_optx.torch`'s
        `weight_decay`.

        `var_list`: variables; `var_names`: regular expressions searched in `variable.name`
        (Keras's rule), e.g. `["bias", "norm"]`. Unlike Keras's, it may also be called after
        `build`: it acts from the next step (a compiled `model.fit` step traced before the call keeps
        the earlier choice; call it before `fit`).

        Example:
            >>> opt = keras_optx.Optimiser(keras_optx.WeightDecay(1e-4), keras_optx.ADAM())
            >>> opt.exclude_from_weight_decay(var_names=["bias"])
        """
        if var_names is not None and (isinstance(var_names, str) or not all(isinstance(n, str) for n in var_names)):
            raise TypeError(f"`var_names` must be a list of strings (regular expressions); received {var_names!r}.")
        built, self.built = self.built, False  # Keras's refuses once built; the choice is read each step here
        try:
            super().exclude_from_weight_decay(var_list=var_list, var_names=var_names)
        finally:
            self.built = built

    def _decay_mask(self):
        """For the variables of the step in progress: whether each decays (not excluded by this rule
        or any chain holding it); None when every one does."""
        excluding = [r for r in self._owners() if getattr(r, "_exclude_from_weight_decay", None)
                     or getattr(r, "_exclude_from_weight_decay_pattern", None) is not None]
        if not excluding:
            return None
        variables = _STEP_VARIABLES.get() or []
        # Keras makes a new cache dict on each exclude call: their identities name the current choice.
        keys = [r.__dict__.get("_exclude_from_weight_decay_cache") for r in excluding]
        cache = self.__dict__.get("_mask_cache")
        if cache is None or not _same(cache.variables, variables) or not _same(cache.keys, keys):
            mask = [all(r._use_weight_decay(v) for r in excluding) for v in variables]
            cache = _set_cache(self, "_mask_cache", variables=list(variables), keys=keys, mask=mask)
        return None if all(cache.mask) else cache.mask

    def _backend_update_step(self, grads, variables, learning_rate):
        backend.update_step(self, grads, variables)  # ends in `self._update`

    def _check_variables_are_known(self, variables):
        # Keras looks up every variable's id on every step; the list is nearly always the one
        # it checked last time. The cache holds those variables, so their ids stay theirs.
        cache = self.__dict__.get("_known_cache")
        if cache is not None and cache.source is self._trainable_variables_indices and _same(cache.variables, variables):
            return
        super()._check_variables_are_known(variables)
        _set_cache(self, "_known_cache", source=self._trainable_variables_indices, variables=list(variables))

    def _update(self, grads, variables):
        if backend.EAGER:  # the torch step reads Python numbers: those of a restored vector
            for rule in _hyper_owners(self):
                rule._refresh_hyper()
        with _step_variables(variables), _in_step(self):
            self._update_step(grads, variables)

    def _update_step(self, grads, variables):
        slots = self._slot_lists(variables)
        # Kernels read and write float32/64 slots: low-precision state runs the formula.
        if not self._low_precision_state and backend.apply_kernel(self, grads, variables, slots):
            return  # a kernel of exactly this class (torch)
        dtypes = [_state_dtype(v.dtype) for v in variables]
        g = Many(_cast(gi, dt) for gi, dt in zip(grads, dtypes))
        x = Many(_cast(value, dt) for value, dt in zip(backend.values(variables), dtypes))
        state = {name: Many(backend.values(vs)) for name, vs in slots.items()}
        if self._low_precision_state:  # the math in float32; `backend.write` stores the slots in their dtype
            state = {name: Many(_state_value(s) for s in many.items) for name, many in state.items()}
        t, step = self._step_numbers()
        delta, new_state = self._transform(g, x, state, t, step)
        writes = [(s, new) for name, vs in slots.items() for s, new in zip(vs, new_state[name].items)]
        backend.write(self, writes, variables, delta)

    def _slot_lists(self, variables):
        """`{slot name: [its variable for each of `variables`]}`, cached for the last list seen.

        Looking up 200 variable indices costs ~25 µs a step, and the list is the same every
        step. The cache holds the variables themselves (so their ids cannot be reused) and the
        slot dict it was built from (a rebuild makes a new one)."""
        cache = self.__dict__.get("_slot_cache")
        if cache is not None and cache.source is self._slot_variables and _same(cache.variables, variables):
            return cache.slots
        index = [self._get_variable_index(v) for v in variables]
        slots = {name: [vs[i] for i in index if vs[i] is not None] for name, vs in self._slot_variables.items()}
        _set_cache(self, "_slot_cache", source=self._slot_variables, variables=list(variables), slots=slots)
        return slots

    def _step_numbers(self):
        """t = 1, 2, … and the 0-based step for schedules, both counting updates applied
        (`iterations`), so with gradient accumulation a schedule advances once per update."""
        return backend.step_numbers(self)

    def _claim(self, owner):
        """Mark this rule as a member of `owner`: one rule, one chain, one set of slots."""
        given = [
            k for k, default in _KERAS_UPDATE_KEYWORDS.items()
            if k not in self.hyperparameters and getattr(self, k, default) != default  # the rule's own (torch's weight_decay)
        ]
        if given:
            settings = ", ".join(f"{k}={getattr(self, k)!r}" for k in given)
            raise ValueError(
                f"{self.name} is given {settings} as a member of {owner.name}; a chain applies Keras's keywords "
                f"once, for the whole update, so its members take none. Put them on the chain: "
                f"{type(owner).__name__}(..., {settings})."
            )
        current = self._owner() if self._owner is not None else None
        if current is not None and current is not owner:
            raise ValueError(
                f"{self.name} is already a member of {current.name}; a rule keeps state for the chain "
                "that owns it, so give each chain its own instance."
            )
        if self.built:
            raise ValueError(f"{self.name} was already used to train on its own; pass a fresh instance to the chain.")
        if self.shard_state and not owner.shard_state:
            raise ValueError(
                f"{self!r} has shard_state=True, but a chain keeps its members' state: set "
                f"shard_state=True on the {type(owner).__name__} instead."
            )
        # A weak reference: Keras's loader walks attributes and recurses forever on a cycle.
        self._owner = weakref.ref(owner)

    def _rate_variables(self):
        """The learning-rate variables a chain must save for this member."""
        return [self._learning_rate] if self.has_learning_rate and isinstance(self._learning_rate, keras.Variable) else []

    def adjust(self, **values):
        """Set hyperparameters here and in every rule inside (chain members, Partition rules):
        `opt.adjust(rho=0.5)`. See `keras_optx.adjust`."""
        from ._hyper import adjust

        return adjust(self, **values)

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyperparameters)
        rate = ""
        if self.has_learning_rate:
            lr = self._learning_rate
            rate = f"learning_rate={float(f'{float(lr.numpy()):.7g}') if isinstance(lr, keras.Variable) else lr!r}"
        return f"{type(self).__name__}({', '.join(p for p in (rate, args) if p)})"


# Helpers ---------------------------------------------------------------------------
_STEP_VARIABLES = contextvars.ContextVar("keras_optx_step_variables", default=None)


@contextlib.contextmanager
def _step_variables(variables):
    """Name the variables the running step updates, in its order (a Partition routes by them)."""
    token = _STEP_VARIABLES.set(list(variables))
    try:
        yield
    finally:
        _STEP_VARIABLES.reset(token)


def _current_variables():
    variables = _STEP_VARIABLES.get()
    if variables is None:
        raise RuntimeError("A Partition's update needs its variables; it runs inside an optimizer's `apply`.")
    return variables


def _adopt_rate(optimizer, rate):
    """Make `optimizer.learning_rate` read and set `rate` (a member's or wrapped optimizer's)."""
    own = optimizer._learning_rate
    if isinstance(own, keras.Variable):
        optimizer._untrack_variable(own)
    optimizer._learning_rate = rate


def _lead_rate(owner, members, drop_own):
    """Make `owner.learning_rate` that of the last of `members` that steers one (`Rule._steers_rate`);
    returns whether one does. `drop_own`: untrack the owner's own (placeholder) rate variable; a
    chain or Partition keeps it where files of format ≤ 2 saved it."""
    lead = next((m for m in reversed(members) if m._steers_rate()), None)
    if lead is not None and drop_own:
        _adopt_rate(owner, lead._learning_rate)
    elif lead is not None:
        owner._learning_rate = lead._learning_rate
    return lead is not None


def _plus_decay(a, x, factor, mask):
    """a + factor·x (each a `Many`) for the variables that decay (`mask`, from `Rule._decay_mask`;
    None: all); a as it is for the others."""
    if mask is None:
        return a + factor * x
    return Many(ai + factor * xi if decays else ai for ai, xi, decays in zip(a.items, x.items, mask))


def _state_dtype(dtype):
    """Slots and the update math run in float32 for float16/bfloat16 variables."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in _LOW_PRECISION else dtype


def _state_value(value):
    """A slot's value for the update math: float32 where it is stored in float16/bfloat16."""
    return keras.ops.cast(value, "float32") if keras.backend.standardize_dtype(value.dtype) in _LOW_PRECISION else value


def _cast(tensor, dtype):
    if keras.backend.standardize_dtype(tensor.dtype) == dtype:
        return tensor
    return keras.ops.cast(tensor, dtype)
