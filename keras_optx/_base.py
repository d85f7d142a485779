"""`Rule`: the one Keras optimizer class every keras_optx rule, transform and chain shares.

A subclass states its hyperparameters (with their checks), its slots (with their
initial values) and `delta`, the update as a formula. Everything Keras-shaped lives
here, once: validation, slot variables, the update step on each backend, writing
the results back (distribution-aware on TensorFlow, multi-tensor on torch),
config and serialization.
"""

import collections
import contextlib
import contextvars
import copy
import functools
import itertools
import operator
import weakref

import keras

from . import _checks as check
from . import _scale
from ._tensors import Many, _TORCH, ops

if _TORCH:
    import torch

    try:  # Keras internals that `_values` needs to skip `.value`'s per-variable checks safely
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        from keras.src.backend.common.variables import get_autocast_scope
        from keras.src.backend.torch.core import Variable as _TorchVariable
        from keras.src.backend.torch.core import get_device as _torch_device
    except ImportError:  # another Keras layout: `_values` reads `.value`
        _TorchVariable = None

_BACKEND = keras.backend.backend()
_Schedule = keras.optimizers.schedules.LearningRateSchedule
_LOW_PRECISION = ("float16", "bfloat16")
_FUSED_DTYPES = (torch.float32, torch.float64) if _TORCH else ()
_TORCH_VALUE = _TorchVariable.value if _TORCH and _TorchVariable is not None else None  # what `_values` inlines
EPSILON = 1e-8
# The layout of a keras_optx optimizer's saved config and variables, written to every config as
# "format_version". Raise it when a change adds, removes or reorders an optimizer's variables or
# renames a config key, and teach `Rule._migrate_config`/`_migrate_variables` to read the old one:
# tests/fixtures/checkpoints (files saved by earlier versions) must keep loading.
FORMAT_VERSION = 1


class State(dict):
    """A rule's slots for all variables, read as attributes: `s.m`, `s.v`."""

    __getattr__ = dict.__getitem__


class Rule(keras.optimizers.Optimizer):
    """Base class of every keras_optx rule: a Keras optimizer whose update is `delta`.

    Subclasses define:

    - `hyperparameters`: `{name: check}`; each value given to `__init__` is validated
      by its check, stored as an attribute and written to `get_config()`.
    - `slots`: `{name: initial value}`; one variable per slot and model variable.
    - `delta(ops, g, x, s, t, lr)`: returns `(Δ, new_slots)` for the update `x ← x − Δ`.
      `g`, `x` and each `s.<slot>` hold every variable's tensor at once (`Many`),
      `t` = 1, 2, … counts the updates, `lr` is the current learning rate, and
      `ops` offers `sqrt`, `abs`, `maximum`, `minimum`, `clip`, `where`, `norm`
      and `global_norm`. Arithmetic works as on tensors.
    - `has_learning_rate = False` for transforms that take no rate.

    Example, Flux's documented custom Momentum:

    ```python
    @keras.saving.register_keras_serializable("my_rules")
    class MyMomentum(keras_optx.Rule):
        hyperparameters = {"rho": keras_optx.checks.unit}
        slots = {"velocity": 0.0}

        def __init__(self, learning_rate=0.01, rho=0.9, **kwargs):
            super().__init__(learning_rate, rho=rho, **kwargs)

        def delta(self, ops, g, x, s, t, lr):
            v = self.rho * s.velocity - lr * g
            return -v, {"velocity": v}
    ```

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

    >>> opt = keras_optx.ADAM(1e-3, state_dtype="bfloat16", shard_state=True)
    """

    hyperparameters = {}
    slots = {}
    has_learning_rate = True
    # Optional torch fast path `_torch_fused(xs, gs, slots, t, lr) -> bool` (True when it
    # applied the update). Used only when the rule is the optimizer itself or a chain's last
    # member, every variable is float32/float64 with a matching gradient, and no subclass
    # redefined the formula below the hook (see `_fast_path`). With `_torch_weight_decay`, the
    # hook also takes `weight_decay=λ`: coupled decay g + λ·x inside the kernel, so a chain's
    # WeightDecay right before the rule costs no pass of its own.
    _torch_fused = None
    _torch_weight_decay = False
    # `{slot: dtypes}`: the slots that may be stored in bfloat16/float16 (`state_dtype`), and in
    # which. A rule whose state is unsound in low precision lists none and says why in
    # `low_precision_refusal`; `state_dtype` is then refused.
    low_precision_slots = {}
    low_precision_refusal = None

    def __init__(self, learning_rate=1.0, *, shard_state=False, state_dtype=None, **kwargs):
        hyper = {k: kwargs.pop(k) for k in list(kwargs) if k in self.hyperparameters}
        if self.has_learning_rate:
            learning_rate = check.learning_rate(learning_rate)
        shard_state = _scale.check_shard_state(shard_state)
        state_dtype = _scale.check_state_dtype(state_dtype)
        super().__init__(learning_rate=learning_rate, **kwargs)
        for name, value in hyper.items():
            setattr(self, name, self.hyperparameters[name](name, value))
        self._owner = None
        self.shard_state = shard_state
        self.state_dtype = state_dtype
        if self._parts() is None:  # a chain or Partition checks once its members are known
            self._check_state_dtype()

    def _parts(self):
        """The rules whose slots this one owns, keyed `<position>_<slot>` (a chain's members, a
        Partition's rules); None for a rule that owns only its own `slots`."""
        return None

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
        return _scalar(rate)

    # Keras glue -------------------------------------------------------------------
    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._slot_variables = {}
        low = self._slot_dtypes()
        self._low_precision_state = any(low.values())
        for name, (initial, has) in self._slot_owners(variables).items():
            # Each slot laid out like its variable (sharded like it under keras.distribution);
            # None where a variable keeps no such slot (a Partition's rule holds state for its variables only).
            self._slot_variables[name] = [
                _scale.slot_variable(
                    self, v, f"{_variable_path(v)}_{name}", initial, low.get(name) or _state_dtype(v.dtype), self.shard_state
                )
                if own
                else None
                for v, own in zip(variables, has)
            ]
            if _TORCH:
                _pack([s for s in self._slot_variables[name] if s is not None])
        for v in self._build_state(variables):
            _track_once(self, v)

    def _slot_owners(self, variables):
        """`{slot name: (initial value, [whether each of `variables` keeps it])}`; every variable by default."""
        return {name: (initial, [True] * len(variables)) for name, initial in self.slots.items()}

    def _build_state(self, variables):
        """Create variables other than slots at build (a Partition's freeze mask); returns them
        for the optimizer that owns this rule to track and save. None by default."""
        return []

    def apply(self, grads, trainable_variables=None):
        # Keras zips grads with variables: an extra gradient or a wrong shape would be
        # dropped silently or fail half-way through the writes. Refuse before any write.
        grads, trainable_variables = _checked_gradients(self, grads, trainable_variables)
        return super().apply(grads, trainable_variables)

    def _backend_update_step(self, grads, variables, learning_rate):
        if _BACKEND == "tensorflow":
            grads, variables = _tf_reduce_and_densify(self, grads, variables)
        if _TORCH:
            # `isinstance` is what keras.ops.is_tensor tests on torch, without two calls per gradient.
            grads = [g if isinstance(g, torch.Tensor) else keras.ops.convert_to_tensor(g) for g in grads]
            _torch_update(self, grads, variables)
        else:
            grads = [g if keras.ops.is_tensor(g) else keras.ops.convert_to_tensor(g) for g in grads]
            self._update(grads, variables)

    def _check_variables_are_known(self, variables):
        # Keras looks up every variable's id on every step; the list is nearly always the one
        # it checked last time. The cache holds those variables, so their ids stay theirs.
        cache = self.__dict__.get("_known_cache")
        if cache is not None and cache.source is self._trainable_variables_indices and _same(cache.variables, variables):
            return
        super()._check_variables_are_known(variables)
        _set_cache(self, "_known_cache", source=self._trainable_variables_indices, variables=list(variables))

    def _update(self, grads, variables):
        with _step_variables(variables):
            self._update_step(grads, variables)

    def _update_step(self, grads, variables):
        slots = self._slot_lists(variables)
        # torch kernels read and write float32/64 slots: low-precision state runs the formula.
        fused = _fast_path(self, "_torch_fused") if _TORCH and not self._low_precision_state else None
        if fused is not None:
            # A torch fused kernel that computes this very rule (tested against `delta`).
            xs = _values(variables)
            if _fusable(self, grads, xs):
                t, step = self._step_numbers()
                if fused(xs, list(grads), {n: _values(vs) for n, vs in slots.items()}, t, self._rate(step)):
                    return
        dtypes = [_state_dtype(v.dtype) for v in variables]
        g = Many(_cast(gi, dt) for gi, dt in zip(grads, dtypes))
        x = Many(_cast(value, dt) for value, dt in zip(_values(variables), dtypes))
        state = {name: Many(_values(vs)) for name, vs in slots.items()}
        if self._low_precision_state:  # the math in float32; `_write` stores the slots in their dtype
            state = {name: Many(_state_value(s) for s in many.items) for name, many in state.items()}
        t, step = self._step_numbers()
        delta, new_state = self._transform(g, x, state, t, step)
        writes = [(s, new) for name, vs in slots.items() for s, new in zip(vs, new_state[name].items)]
        _write(self, writes, variables, delta)

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
        if _TORCH:
            step = int(self._iterations.value) // (self.gradient_accumulation_steps or 1)
            return step + 1, step
        t = keras.ops.cast(self.iterations + 1, "float32")
        return t, self.iterations

    def get_config(self):
        config = super().get_config()
        if not self.has_learning_rate:
            config.pop("learning_rate")
        for name in self.hyperparameters:
            config[name] = getattr(self, name)
        config["shard_state"] = self.shard_state
        config["state_dtype"] = self.state_dtype
        config["format_version"] = FORMAT_VERSION
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras's from_config deserializes the schedule in place; keep the caller's dict intact.
        config, version = _versioned(cls, config)
        optimizer = super().from_config(config, custom_objects=custom_objects)
        optimizer._saved_format_version = version
        return optimizer

    # Saved-format migration ----------------------------------------------------------
    @classmethod
    def _migrate_config(cls, config, version):
        """Return `config` (a dict saved with format `version` < FORMAT_VERSION) in today's form.

        Version 0 is a file written before format versions existed; it has today's layout."""
        return config

    def _migrate_variables(self, arrays, version):
        """Return the saved variable values (`arrays`, a list in saved order, format `version` <
        FORMAT_VERSION) in the order and number of today's `self.variables`."""
        return arrays

    def load_own_variables(self, store):
        arrays = [store[str(i)] for i in range(len(store.keys()))]
        version = getattr(self, "_saved_format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            arrays = self._migrate_variables(arrays, version)
        variables = self.variables
        if not variables and arrays:
            return super().load_own_variables(store)  # not built: Keras warns and builds later
        if len(arrays) != len(variables):
            # Keras only warns and leaves the state at zero: a resumed run would silently restart
            # its moments. Refuse instead.
            raise ValueError(
                f"Cannot load the saved state of optimizer {self.name!r}: it has {len(arrays)} variables, this "
                f"{type(self).__name__} has {len(variables)}. Load it with the same optimizer configuration "
                f"it was saved with (saved format version {version}, this keras_optx reads {FORMAT_VERSION})."
            )
        for variable, value in zip(variables, arrays):
            variable.assign(value)

    def _claim(self, owner):
        """Mark this rule as a member of `owner`: one rule, one chain, one set of slots."""
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

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.hyperparameters)
        rate = ""
        if self.has_learning_rate:
            lr = self._learning_rate
            rate = f"learning_rate={float(f'{float(lr.numpy()):.7g}') if isinstance(lr, keras.Variable) else lr!r}"
        return f"{type(self).__name__}({', '.join(p for p in (rate, args) if p)})"


class Transform(Rule):
    """A gradient transformation without a learning rate (weight decay, clipping).

    It is a chain member, and also wraps any Keras optimizer: `ClipNorm(1.0,
    keras.optimizers.Adam())` transforms each gradient, then hands it to Adam.
    Subclasses pass `optimizer` through and define `delta` (ignoring `lr`).

    Example, a transform that flips the gradient's sign (signSGD's direction, Bernstein et al.
    2018, arXiv:1802.04434):

    ```python
    class Sign(keras_optx.Transform):
        def __init__(self, optimizer=None, **kwargs):
            super().__init__(optimizer, **kwargs)

        def delta(self, ops, g, x, s, t, lr):
            return ops.sign(g), {}
    ```
    """

    has_learning_rate = False

    def __init__(self, optimizer=None, **kwargs):
        super().__init__(1.0, **kwargs)
        if isinstance(optimizer, dict):  # from_config; Keras rewrites the dict it deserializes
            optimizer = keras.optimizers.deserialize(copy.deepcopy(optimizer))
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"`optimizer` must be a Keras optimizer (keras.optimizers.Optimizer) or None; received {optimizer!r}."
            )
        if optimizer is not None and self.shard_state:
            raise ValueError(
                f"{type(self).__name__} wrapping {type(optimizer).__name__} keeps no state of its own; "
                f"`shard_state=True` cannot reach {type(optimizer).__name__}'s slots. Use a keras_optx chain, "
                f"e.g. Optimiser({type(self).__name__}(...), ADAM(), shard_state=True)."
            )
        self.optimizer = optimizer
        if optimizer is not None:
            _adopt_rate(self, optimizer._learning_rate)
            for v in optimizer.variables:
                _track_once(self, v)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.optimizer is not None:
            self.optimizer.build(variables)
            for v in self.optimizer.variables:
                _track_once(self, v)

    def _update_step(self, grads, variables):
        if self.optimizer is None:
            return super()._update_step(grads, variables)
        t, step = self._step_numbers()
        delta, _ = self._transform(Many(grads), Many(v.value for v in variables), {}, t, step)
        # On TensorFlow the base handed us the dense gradient summed over replicas (a norm of
        # per-replica or IndexedSlices gradients is wrong); the wrapped optimizer sums over
        # replicas again, so each replica passes its 1/n share.
        replicas = self._distribution_strategy.num_replicas_in_sync if _BACKEND == "tensorflow" else 1
        self.optimizer.apply([d / replicas for d in delta.items] if replicas > 1 else delta.items, variables)

    def get_config(self):
        config = super().get_config()
        if self.optimizer is not None:
            config["optimizer"] = keras.optimizers.serialize(self.optimizer)
        return config

    def __repr__(self):
        inner = "" if self.optimizer is None else f", {type(self.optimizer).__name__}"
        return super().__repr__()[:-1] + inner + ")"


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


def _versioned(cls, config):
    """`config` without its "format_version" (migrated by `cls._migrate_config`), and that version."""
    config = dict(config)
    version = config.pop("format_version", 0)
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"{cls.__name__}: saved `format_version` must be an integer ≥ 0; received {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{cls.__name__} was saved by a newer keras_optx (format version {version}); this one reads format "
            f"versions ≤ {FORMAT_VERSION}. Upgrade keras_optx to load it."
        )
    if version < FORMAT_VERSION:
        config = cls._migrate_config(config, version)
    return config, version


def _adopt_rate(optimizer, rate):
    """Make `optimizer.learning_rate` read and set `rate` (a member's or wrapped optimizer's)."""
    own = optimizer._learning_rate
    if isinstance(own, keras.Variable):
        optimizer._untrack_variable(own)
    optimizer._learning_rate = rate


if _TORCH:

    @torch.compiler.disable
    def _torch_update(optimizer, grads, variables):
        # Under `jit_compile=True` (torch.compile) the step runs eagerly: it is foreach/fused
        # kernels already, and dynamo cannot trace its Python-side step and rate logic.
        with torch.no_grad():
            optimizer._update(grads, variables)


def _checked_gradients(optimizer, grads, trainable_variables):
    """`grads` and the variables as lists, refused (before any write) on a length or shape mismatch."""
    grads = list(grads)
    if trainable_variables is not None:
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"`grads` and `trainable_variables` must have the same length; received "
                f"{len(grads)} gradients for {len(trainable_variables)} variables."
            )
    targets = trainable_variables if trainable_variables is not None else getattr(optimizer, "_trainable_variables", [])
    # The variables' shapes, cached for the last list seen (reading 200 `.shape` properties
    # costs more than comparing them); `shape != expected` first, as a torch.Size equals a tuple.
    cache = optimizer.__dict__.get("_shape_cache")
    if cache is None or not _same(cache.variables, targets):
        cache = _set_cache(optimizer, "_shape_cache", variables=list(targets), shapes=[v.shape for v in targets])
    for i, (g, shape) in enumerate(zip(grads, cache.shapes)):
        if g is not None and g.shape != shape and tuple(g.shape) != tuple(shape):
            v = targets[i]
            raise ValueError(
                f"Gradient {i} has shape {tuple(g.shape)} but its variable {_variable_path(v)} has shape "
                f"{tuple(v.shape)}; `grads` must follow the order of `trainable_variables`."
            )
    return grads, trainable_variables


def _track_once(optimizer, variable):
    """Track a variable unless already tracked (Keras also tracks Variables set as attributes)."""
    if not any(v is variable for v in optimizer._variables):
        optimizer._track_variable(variable)


def _variable_path(variable):
    return getattr(variable, "path", variable.name).replace("/", "_").replace(":", "_")


def _state_dtype(dtype):
    """Slots and the update math run in float32 for float16/bfloat16 variables."""
    dtype = keras.backend.standardize_dtype(dtype)
    return "float32" if dtype in _LOW_PRECISION else dtype


def _state_value(value):
    """A slot's value for the update math: float32 where it is stored in float16/bfloat16."""
    return keras.ops.cast(value, "float32") if keras.backend.standardize_dtype(value.dtype) in _LOW_PRECISION else value


def _fast_path(rule, name):
    """`rule`'s torch fast path `name`, or None where a subclass redefines the formula
    (`delta`, `_transform` or ADAM's `moments`) below the class that wrote the hook: the hook computes its
    own class's formula, not the subclass's."""
    if name in vars(rule):  # set on the instance (tests swap hooks this way)
        return vars(rule)[name]
    return getattr(rule, name) if _hook_is_current(type(rule), name) else None


@functools.cache
def _hook_is_current(cls, name):
    mro = cls.__mro__
    owner = next((i for i, c in enumerate(mro) if name in vars(c)), None)
    if owner is None or vars(mro[owner])[name] is None:
        return False
    formula = min(next((i for i, c in enumerate(mro) if f in vars(c)), len(mro)) for f in ("delta", "_transform", "moments"))
    return owner <= formula


def _fusable(owner, grads, xs):
    """Whether torch fused kernels may run on variable values `xs`: float32/64 (no float16
    casting), dense contiguous gradients of the same dtype, one device, not under torch.compile.

    Runs every step on fresh gradients, so it reads as few tensor attributes as it can
    (~50 ns each): `dtype` objects are singletons (`is`), shapes were checked by `apply`, and
    the values' own checks are skipped when they are the very tensors `owner` last passed."""
    if not xs or torch.compiler.is_compiling():
        return False
    device = xs[0].device
    if not _same(getattr(owner, "_torch_fusable_for", ()), xs):
        if any(x.dtype not in _FUSED_DTYPES or x.device != device or not x.is_contiguous() for x in xs):
            return False
        object.__setattr__(owner, "_torch_fusable_for", list(xs))  # past Keras's variable tracking
    # The device's index (-1: CPU) is ~3x cheaper to read than comparing `device`s; a process
    # has one kind of accelerator, so the index names the device.
    index, strided = xs[0].get_device(), torch.strided
    for g, x in zip(grads, xs):
        if (
            not isinstance(g, torch.Tensor)
            or g.dtype is not x.dtype
            or g.layout is not strided
            or g.get_device() != index
            or not g.is_contiguous()
        ):
            return False
    return True


def _values(variables):
    """The variables' values, as `[v.value for v in variables]`; on torch, fast.

    `.value` costs ~2 µs (stateless-scope, autocast-scope and meta-device checks, per
    variable); outside those scopes it is `v._value`, so read that directly when every
    variable's class uses Keras's torch `value` property."""
    if _TORCH_VALUE is None or in_stateless_scope() or get_autocast_scope() is not None or str(_torch_device()) == "meta":
        return [v.value for v in variables]
    if any(getattr(kind, "value", None) is not _TORCH_VALUE for kind in set(map(type, variables))):
        return [v.value for v in variables]  # a Variable class with its own `value`
    xs = [v._value for v in variables]
    if any(map(operator.is_, xs, itertools.repeat(None))):  # uninitialized: `.value` makes a placeholder
        return [v.value for v in variables]
    return xs


def _same(a, b):
    """Whether lists `a` and `b` hold the very same objects (identity, not `==`)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


class _Cache:
    """A plain attribute holder, invisible to Keras's variable tracking."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _set_cache(optimizer, name, **fields):
    """Store a `_Cache` on `optimizer`, past Keras's `__setattr__` (whose tracker would adopt
    a list of variables as the optimizer's own)."""
    cache = _Cache(**fields)
    object.__setattr__(optimizer, name, cache)
    return cache


def _step_tensors(t, xs):
    """The per-variable step counts torch's fused kernels read (one shared float tensor)."""
    return [torch.tensor(float(t), dtype=torch.float32, device=xs[0].device)] * len(xs)


def _scratch(owner, xs, count=1):
    """`count` buffer lists shaped like `xs`, kept by `owner` between steps.

    Torch fast paths write their temporaries here: on CPU a fresh large buffer costs page
    faults on every step, often more than the arithmetic. Each list is views of one packed
    buffer where it can be (see `_whole`). Zeros when first made (one-time cost): no kernel
    ever reads non-finite garbage from them."""
    buffers = getattr(owner, "_torch_scratch", [])
    made_for = getattr(owner, "_torch_scratch_for", ())
    if len(buffers) < count or not (_same(made_for, xs) or _like(buffers[0], xs)):
        buffers = owner._torch_scratch = [_packed(xs) or [torch.zeros_like(x) for x in xs] for _ in range(count)]
    # The tensors last checked: next step's are nearly always the same ones (identity is ~20x cheaper to check).
    object.__setattr__(owner, "_torch_scratch_for", list(xs))
    return buffers[:count]


def _like(buffers, xs):
    return len(buffers) == len(xs) and all(
        b.shape == x.shape and b.dtype == x.dtype and b.device == x.device for b, x in zip(buffers, xs)
    )


# Packed buffers (torch). A foreach op costs ~1.3 µs of dispatch per tensor on CPU: over 200
# variables of 10k elements that is more than its arithmetic. So each slot's variables (and each
# kept scratch list) are views of one contiguous buffer, and a step that touches only slots and
# scratch runs as one op on the buffers (`_whole`); steps that read gradients or write the
# variables stay per tensor. The views are what the Keras variables hold, so saving, loading and
# `assign` work on them as before. In the buffer, tensors of one size lie side by side (sizes in
# first-seen order, then variable order; every pack of one list of shapes alike), so a per-tensor
# reduction over them is one op on a (count, size) view (`_Pack.runs`: ClipNorm's norms).
_PACK = "_keras_optx_pack"  # set on each view: a `_Pack`


class _Pack:
    """A packed buffer and how its tensors lie in it."""

    def __init__(self, whole, views, order, runs):
        self.whole = whole  # the buffer
        self.views = views  # one per tensor, in the list's order
        self.order = order  # the list's positions in buffer order
        self.runs = runs  # [(a (count, size) view of the buffer, the count)] in buffer order


def _packed(like, values=None, parameters=False):
    """Zero tensors shaped like `like` (or copies of `values`), views of one contiguous buffer;
    None where `like` is empty or mixes dtypes or devices."""
    first = like[0] if like else None
    if first is None or any(t.dtype != first.dtype or t.device != first.device for t in like):
        return None
    sizes = [t.numel() for t in like]
    counts = collections.Counter(sizes)  # keeps first-seen order
    rank = {size: k for k, size in enumerate(counts)}
    order = sorted(range(len(like)), key=lambda i: rank[sizes[i]])
    whole = torch.zeros(sum(sizes), dtype=first.dtype, device=first.device)
    views = [None] * len(like)
    for piece, i in zip(torch.split(whole, [sizes[i] for i in order]), order):
        views[i] = piece.view(like[i].shape)
    runs = [(block.view(count, size), count) for block, (size, count) in
            zip(torch.split(whole, [size * count for size, count in counts.items()]), counts.items())]
    if values is not None:
        torch._foreach_copy_(views, values)
    if parameters:  # what Keras's torch Variable holds; a Parameter made from a view shares its memory
        views = [torch.nn.Parameter(v, requires_grad=False) for v in views]
    pack = _Pack(whole, views, order, runs)
    for view in views:
        setattr(view, _PACK, pack)
    return views


def _pack(variables):
    """Make one slot's Keras variables hold views of one packed buffer (torch), where their class
    is Keras's own torch Variable and all are initialised, of one dtype and device."""
    if _TORCH_VALUE is None or not variables or any(type(v).value is not _TORCH_VALUE for v in variables):
        return
    values = [v._value for v in variables]
    if any(value is None for value in values):  # initialisation deferred (built in a stateless scope)
        return
    with torch.no_grad():
        views = _packed(values, values, parameters=True)
    if views is not None:
        for variable, view in zip(variables, views):
            variable._value = view


def _whole(*lists):
    """`([buffer], …)` when each list is exactly the views of one packed buffer, in order, so a
    foreach op over them is one op; else `lists` as they are (a subset of the variables, a
    stateless call's values, mixed dtypes). Lists combined in one op must be `_whole`d together."""
    wholes, order = [], None
    for tensors in lists:
        pack = _pack_of(tensors)
        # Lists shaped alike are packed alike; a guard all the same, as one op pairs their elements.
        if pack is None or (order is not None and pack.order != order):
            return lists
        order = pack.order
        wholes.append([pack.whole])
    return tuple(wholes)


def _pack_of(tensors):
    """The `_Pack` whose views `tensors` are, exactly and in order; else None."""
    pack = getattr(tensors[0], _PACK, None) if tensors else None
    return pack if pack is not None and _same(pack.views, tensors) else None


def _gather(pack, tensors):
    """Copy `tensors` (shaped like the pack's views) into the pack's buffer: one op."""
    torch.cat([tensors[i].reshape(-1) for i in pack.order], out=pack.whole)


def _into(outs, name, tensors, *args, **kwargs):
    """outs ← torch.<name>(tensors, *args, **kwargs) elementwise, in kept buffers; returns `outs`.

    An argument that is a list (or tuple) is taken per tensor (`_into(out, "add", g, xs, alpha=λ)`);
    `outs` may hold the very tensors of `tensors` (in place). No fresh tensors: on CPU, freed and
    re-allocated buffers page-fault on every step, which cost more than the arithmetic (measured:
    ~3x a fused Adam for one fresh `_foreach_add` over 200×10k). Packed lists (`_whole`): one `out=` call on the
    buffers. Tensors of ≥ 32768 elements on average: one `out=` call each; smaller ones: a
    foreach copy and the foreach in-place op (a pass over little memory costs less than a
    Python call per tensor), on the packed buffer where `outs` is one."""
    per_tensor = any(isinstance(a, (list, tuple)) for a in args)
    whole_outs, whole_tensors = _whole(outs, tensors) if not per_tensor else (outs, tensors)
    if whole_outs is not outs or _large(tensors):
        fn = getattr(torch, name)
        for i, (out, tensor) in enumerate(zip(whole_outs, whole_tensors)):
            fn(tensor, *(a[i] if isinstance(a, (list, tuple)) else a for a in args), out=out, **kwargs)
        return outs
    if not _same(outs, tensors):  # a list of the same tensors is in place too
        torch._foreach_copy_(outs, tensors)
    getattr(torch, f"_foreach_{name}_")(outs if per_tensor else _whole(outs)[0], *args, **kwargs)
    return outs


_LARGE = 1 << 15  # elements per tensor from which `_into` calls per tensor (on 200×10k both branches time alike)


def _large(tensors):
    """Whether `tensors` hold ≥ `_LARGE` elements on average: worth a call (or a cache block) each."""
    return sum(t.numel() for t in tensors) >= _LARGE * len(tensors)


def _in_blocks(owner, lists, scratch=0):
    """Yield `lists` (each a list of tensors shaped like the first), plus `scratch` kept buffer
    lists, in blocks that fit the cache: on CPU, where the tensors are large (≥ 32768 elements on
    average), contiguous and of one dtype, a block is a run of consecutive tensors of ≤ `_BLOCK` elements in
    all, or one piece of a larger tensor, taken from every list, with block-sized kept scratch;
    else the whole lists once, with `_scratch`.

    A rule's sequence of elementwise in-place ops then reads each element from memory once per
    block instead of once per op. Measured over 4×2.5M parameters (benchmarks/RESULTS.md): AdaMax
    22.9 → 14.5 ms, ADADelta 32.8 → 22.6 ms, NADAM 26.0 → 22.7 ms (medians)."""
    xs = lists[0]
    dtype = xs[0].dtype
    if (
        xs[0].device.type != "cpu"
        or not _large(xs)
        or any(x.dtype != dtype for x in xs)
        or not all(t.is_contiguous() for tensors in lists for t in tensors)  # pieces are flat views
    ):
        yield (*lists, *(_scratch(owner, xs, scratch) if scratch else ()))
        return
    kept = getattr(owner, "_torch_block_scratch", None)
    if kept is None or len(kept) < scratch or any(k.dtype != dtype or k.numel() != _BLOCK for k in kept):
        kept = owner._torch_block_scratch = [torch.zeros(_BLOCK, dtype=dtype) for _ in range(scratch)]
    kept = kept[:scratch]

    def run_block(run):  # whole tensors; their scratch: consecutive views of the kept buffers
        offsets = list(itertools.accumulate((xs[i].numel() for i in run), initial=0))
        shaped = [[k[a:b].view(xs[i].shape) for i, a, b in zip(run, offsets, offsets[1:])] for k in kept]
        return (*([tensors[i] for i in run] for tensors in lists), *shaped)

    run, filled = [], 0
    for i, x in enumerate(xs):
        size = x.numel()
        if run and (filled + size > _BLOCK or size > _BLOCK):
            yield run_block(run)
            run, filled = [], 0
        if size > _BLOCK:
            for pieces in zip(*(torch.split(tensors[i].view(-1), _BLOCK) for tensors in lists)):
                yield (*([p] for p in pieces), *([k[: pieces[0].numel()]] for k in kept))
        else:
            run.append(i)
            filled += size
    if run:
        yield run_block(run)


_BLOCK = 1 << 18  # elements per block: a few lists of 1 MiB stay in this machine's 32 MiB L3 (measured best of 2^16–2^21)


def _cast(tensor, dtype):
    if keras.backend.standardize_dtype(tensor.dtype) == dtype:
        return tensor
    return keras.ops.cast(tensor, dtype)


def _scalar(value):
    """On torch, scalars become Python floats so foreach kernels take their fast path."""
    if _TORCH and not isinstance(value, (int, float)):
        return float(value)
    return value


def _write(optimizer, slot_writes, variables, delta):
    """Store new slot values and apply x ← x − Δ (`delta` a `Many`), the fastest correct way per backend."""
    if _TORCH:
        if slot_writes:
            torch._foreach_copy_(_values([s for s, _ in slot_writes]), [new for _, new in slot_writes])
        xs = _values(variables)
        deltas, scale = delta._items, delta._scale  # a pending scale goes into `alpha`: one pass
        deltas = [d if d.dtype == x.dtype else d.to(x.dtype) for x, d in zip(xs, deltas)]
        torch._foreach_add_(xs, deltas, alpha=-1.0 if scale is None else -scale)
        return
    variable_deltas = list(zip(variables, delta.items))
    updates = [(s, _cast(new, s.dtype)) for s, new in slot_writes]
    updates += [(v, keras.ops.cast(v.value - keras.ops.cast(d, v.dtype), v.dtype)) for v, d in variable_deltas]
    if _BACKEND == "tensorflow":
        _tf_assign_all(optimizer, updates)
    else:
        for variable, value in updates:
            variable.assign(value)


def _tf_reduce_and_densify(optimizer, grads, variables):
    import tensorflow as tf

    pairs = optimizer._all_reduce_sum_gradients(list(zip(grads, [v for v in variables])))
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g, _ in pairs]
    return grads, variables


def _tf_assign_all(optimizer, updates):
    """Assign in cross-replica context so `tf.distribute` strategies update every replica."""
    import tensorflow as tf

    targets = [v.value if isinstance(v, keras.Variable) else v for v, _ in updates]
    values = [value for _, value in updates]

    def assign_all(distribution, targets, values):
        for target, value in zip(targets, values):
            distribution.extended.update(target, lambda var, val: var.assign(val), args=(value,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        assign_all, optimizer._distribution_strategy, targets, values
    )
