"""Hyperparameters as state: every numeric hyperparameter of a rule (ρ, β, ϵ, decay, thresholds…)
takes a number, a `LearningRateSchedule` or a callable, and a number assigned during training acts
at the next step, inside compiled steps too.

How: each hyperparameter of `Rule.hyperparameters` is a data descriptor (`_Hyper`). Outside a step
it reads and writes what the user set (a number, a tuple, a schedule). Inside a step (the formulas
read `self.rho`):

- jax/tensorflow: a number is read from a non-trainable optimizer variable (one float32 vector per
  rule, created at build and saved with the model), so a compiled step sees a new value without
  retracing; assigning `opt.rho = 0.5` writes the variable.
- torch (an eager step, `backend.EAGER`): a number stays a Python float (fused kernels take floats; no device read per step); the
  variable is written on assignment only, so saved files are alike on every backend.
- a schedule is called with the step the rate's schedule sees (0-based, counting updates); a
  callable is called with no argument (as Keras calls a callable rate).

A hyperparameter keeps its kind once the optimizer is built: a number may be replaced by another
number, but a schedule, a callable or a number in place of one is part of the compiled step and is
refused after build (set it before training starts).
"""

import contextlib
import contextvars
import numbers
import weakref

import keras
import numpy as np

from . import _checks as check
from ._backends import current as backend
from ._identity import _set_cache

_Schedule = keras.optimizers.schedules.LearningRateSchedule
_STEP_OWNER = contextvars.ContextVar("keras_optx_step_owner", default=None)


@contextlib.contextmanager
def _in_step(owner):
    """Formulas run: hyperparameters read as the step reads them (variables, scheduled values)."""
    token = _STEP_OWNER.set(owner)
    try:
        yield
    finally:
        _STEP_OWNER.reset(token)


def _is_scheduled(value):
    return isinstance(value, _Schedule) or (callable(value) and not isinstance(value, (numbers.Number, tuple)))


def _is_number(value):
    return isinstance(value, float)  # checks turn numbers into floats; flags (bool) and counts (int) stay static


def _entries(value):
    """The numeric layout of a value: a list of its scalar entries (numbers or schedules), or None
    for a static value (flag, count)."""
    if _is_number(value) or _is_scheduled(value):
        return [value]
    if isinstance(value, tuple) and value and all(_is_number(v) or _is_scheduled(v) for v in value):
        return list(value)
    return None


def _validated(rule, name, value):
    """`value` checked by the hyperparameter's check; schedules and callables (whole, or as elements
    of a tuple whose check names its element checks, one per position, in `check.element`) pass as
    they are: the numbers among the elements are checked each by its position's check."""
    check = rule.hyperparameters[name]
    if _is_scheduled(value):
        if getattr(check, "numeric", False):
            return value
        raise TypeError(f"`{name}` takes no schedule or callable; received {value!r}.")
    if isinstance(value, (tuple, list)) and any(_is_scheduled(v) for v in value):
        element = getattr(check, "element", None)
        if element is None:
            raise TypeError(f"`{name}` takes no schedule or callable among its elements; received {value!r}.")
        if len(value) != len(element):
            raise ValueError(f"`{name}` must have {len(element)} elements; received {name}={tuple(value)!r}.")
        return tuple(v if _is_scheduled(v) else each(f"{name}[{i}]", v) for i, (each, v) in enumerate(zip(element, value)))
    return check(name, value)


class _Hyper:
    """The descriptor of one hyperparameter (see the module docstring)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, rule, owner=None):
        if rule is None:
            return self
        try:
            value = rule.__dict__["_hyper_values"][self.name]
        except KeyError:  # not set yet (tf's attribute tracking looks before __init__ sets it)
            raise AttributeError(self.name) from None
        if self.name in rule.__dict__["_hyper_plain"]:
            return value
        root = _STEP_OWNER.get()
        if root is None:
            if rule._refresh_hyper():  # restored by set_weights/load_weights: the variable's values
                value = rule.__dict__["_hyper_values"][self.name]
            return value
        return rule._hyper_in_step(self.name, value, root)

    def __set__(self, rule, value):
        value = _checked(rule, self.name, value)
        values = rule.__dict__.setdefault("_hyper_values", {})
        plain = rule.__dict__.setdefault("_hyper_plain", set())
        entries = _entries(value)
        # Read as set inside a step too: static values (flags, counts), and constants on torch.
        if entries is None or backend.EAGER and not any(map(_is_scheduled, entries)):
            plain.add(self.name)
        else:
            plain.discard(self.name)
        if self.name in rule.__dict__.get("_hyper_layout", {}):
            attach(rule)  # before anything is set: a write that cannot reach the step is refused
        values[self.name] = value
        if self.name in rule.__dict__.get("_hyper_layout", {}):
            rule._write_hyper_variable()


def _checked(rule, name, value):
    """`value` as `rule.<name>` takes it, or an error before anything is set: validated and, once
    the rule is built, of the kind it had at build and allowed by the rule's structure (`_hyper_check`).
    What assignment, `adjust` and torch's param groups check before any write."""
    value = _validated(rule, name, value)
    layout = rule.__dict__.get("_hyper_layout")
    if layout is not None:
        if name in layout:
            _check_kind(name, rule.__dict__["_hyper_values"][name], value)
        rule._hyper_check(name, value)
    return value


def attach(optimizer):
    """Make the optimizer's variables the values the next step reads, before a write outside the step.

    On jax, inside `fit`'s epoch Keras's trainer keeps the variables' values in its own state (the
    variables are emptied, and written back at the epoch's end, over any write made meanwhile).
    Here the trainer hands them back (`jax_state_sync`, as a callback's `self.model` does), so it
    re-reads them at its next step and the write acts there. Elsewhere: nothing to do."""
    if keras.backend.backend() != "jax":
        return
    root = optimizer._root() if hasattr(optimizer, "_root") else optimizer
    if not any(getattr(v, "_value", 0) is None for v in root.variables):
        return
    for model in _models_training(root):
        model.jax_state_sync()
    if any(getattr(v, "_value", 0) is None for v in root.variables):
        raise RuntimeError(
            f"The variables of {root.name} are held by a jax trainer mid-epoch and no model training with it was "
            "found to hand them back; set the value through a callback's `self.model.optimizer` (which syncs "
            "them), or between epochs."
        )


def _models_training(optimizer):
    """The models whose `optimizer` is `optimizer` or a wrapper of it (`LossScaleOptimizer`): found
    by who refers to it (the optimizer keeps no reference to its model)."""
    import gc

    found, seen, frontier = [], {id(optimizer)}, [optimizer]
    while frontier:
        target = frontier.pop()
        for ref in gc.get_referrers(target):
            owners = [ref]
            if isinstance(ref, dict):
                owners = [o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref]
            for owner in owners:
                if id(owner) in seen:
                    continue
                if isinstance(owner, keras.Model) and hasattr(owner, "jax_state_sync") and getattr(owner, "optimizer", None) is target:
                    seen.add(id(owner))
                    found.append(owner)
                elif isinstance(owner, keras.optimizers.Optimizer) and getattr(owner, "inner_optimizer", None) is target:
                    seen.add(id(owner))
                    frontier.append(owner)
    return found


def _check_kind(name, old, new):
    old_entries, new_entries = _entries(old), _entries(new)
    same = (
        old_entries is not None
        and new_entries is not None
        and len(old_entries) == len(new_entries)
        and all(not _is_scheduled(a) and not _is_scheduled(b) or a is b for a, b in zip(old_entries, new_entries))
    )
    if not same:
        raise ValueError(
            f"`{name}` was {old!r} when the optimizer was built and cannot become {new!r}: a schedule or callable is "
            "part of the compiled step. Assign numbers to hyperparameters that were numbers at build; set schedules "
            "before training starts."
        )


class HyperMixin:
    """The Rule side of hyperparameters as state (mixed into `Rule`)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("hyperparameters", {}):
            if not isinstance(getattr(cls, name, None), (_Hyper, property)):  # a base class's descriptor serves too
                setattr(cls, name, _Hyper(name))

    def _hyper_check(self, name, value):
        """Refuse a value that the built optimizer cannot take (a rule overrides; SGD's momentum)."""

    def _static(self, name):
        """The value the user set, also inside a step (for structure: which slots exist)."""
        return self.__dict__["_hyper_values"][name]

    def _build_hyper(self):
        """Create the hyperparameter variable (at build); returns it in a list, or []."""
        if "_hyper_layout" in self.__dict__:
            return [self._hyper_variable] if self._hyper_variable is not None else []
        values = self.__dict__.get("_hyper_values", {})
        layout, offset = {}, 0
        for name in self.hyperparameters:
            entries = _entries(values.get(name))
            if entries is not None:
                layout[name] = (offset, len(entries), isinstance(values[name], tuple))
                offset += len(entries)
        object.__setattr__(self, "_hyper_layout", layout)
        variable = None
        if offset:
            vector = self._hyper_vector()
            variable = self.add_variable(
                shape=(offset,),
                dtype="float32",
                # Made with its values (not assigned after): build may run inside a tf.function trace.
                initializer=lambda shape, dtype: keras.ops.convert_to_tensor(vector, dtype),
                name="hyperparameters",
                aggregation="none",
            )
            variable._keras_optx_hyperparameters = True  # what `_migrate_variables` recognises
            variable._keras_optx_owner = weakref.ref(self)  # whose values it holds (`set_weights` checks them)
        object.__setattr__(self, "_hyper_variable", variable)
        return [variable] if variable is not None else []

    def _hyper_vector(self):
        values = self.__dict__["_hyper_values"]
        vector = []
        for name in self.__dict__["_hyper_layout"]:
            vector += [0.0 if _is_scheduled(e) else float(e) for e in _entries(values[name])]
        return vector

    def _write_hyper_variable(self):
        variable = self.__dict__.get("_hyper_variable")
        if variable is not None:
            attach(self)
            variable.assign(keras.ops.convert_to_tensor(self._hyper_vector(), "float32"))
            object.__setattr__(self, "_hyper_seen", getattr(variable._value, "_version", None))

    def _hyper_from_vector(self, vector):
        """`{name: value}` that a hyperparameter vector (as saved) holds: numbers from the vector
        (the value set kept where it rounds to the same float32), schedules as they are."""
        values = self.__dict__["_hyper_values"]
        out = {}
        for name, (offset, length, is_tuple) in self.__dict__["_hyper_layout"].items():
            entries = []
            for entry, saved in zip(_entries(values[name]), vector[offset:offset + length]):
                if _is_scheduled(entry) or np.float32(entry) == np.float32(saved):
                    entries.append(entry)
                else:  # the shortest decimal that is this float32 (0.3, not 0.30000001192092896)
                    entries.append(float(str(np.float32(saved))))
            out[name] = tuple(entries) if is_tuple else entries[0]
        return out

    def _check_hyper_vector(self, vector):
        """Refuse (before any write) a vector holding a value `rule.<name> = value` would refuse."""
        for name, value in self._hyper_from_vector(vector).items():
            _checked(self, name, value)

    def _refresh_hyper(self):
        """Read the hyperparameter variable (the one home of the numbers) back into the values the
        torch step and `opt.rho` read, if it was written other than by assignment (`set_weights`,
        `load_weights`, a wrapper's load). Returns whether it read. On torch a write is seen by the
        tensor's version counter (no read per step); elsewhere the variable is read (outside steps
        only; skipped where its value is held by a trainer or traced)."""
        variable = self.__dict__.get("_hyper_variable")
        value = None if variable is None else getattr(variable, "_value", None)
        if value is None:
            return False
        version = getattr(value, "_version", None)
        if version is not None and version == self.__dict__.get("_hyper_seen"):
            return False
        try:
            vector = keras.ops.convert_to_numpy(value).tolist()
        except Exception:  # a traced value (inside a compiled step): nothing was restored there
            return False
        self.__dict__["_hyper_values"].update(self._hyper_from_vector(vector))
        object.__setattr__(self, "_hyper_seen", version)
        return True

    def _hyper_in_step(self, name, value, root):
        """`name`'s value as a step reads it (see the module docstring)."""
        layout = self.__dict__.get("_hyper_layout", {})
        if name not in layout:
            return _evaluate(value, root)
        offset, length, is_tuple = layout[name]
        entries = _entries(value)
        vector = None
        out = []
        for i, entry in enumerate(entries):
            if _is_scheduled(entry):
                out.append(_evaluate(entry, root))
            elif backend.EAGER:
                out.append(entry)
            else:
                if vector is None:
                    vector = self._hyper_variable.value
                out.append(vector[offset + i])
        return tuple(out) if is_tuple else out[0]


def _assign_checked(optimizer, variables, arrays):
    """Write `arrays` into `variables`, the hyperparameter vectors among them checked as an
    assignment checks each value, before any write; the values the step reads follow."""
    owners = []
    for variable, array in zip(variables, arrays):
        owner = getattr(variable, "_keras_optx_owner", None)
        if owner is not None and owner() is not None and tuple(array.shape) == tuple(variable.shape):  # else: refused by assign
            owner()._check_hyper_vector(keras.ops.convert_to_numpy(array).reshape(-1).tolist())
            owners.append(owner())
    attach(optimizer)
    for variable, array in zip(variables, arrays):
        variable.assign(array)
    for rule in owners:
        rule._refresh_hyper()


def _hyper_owners(optimizer):
    """The rules whose hyperparameter vectors are among `optimizer.variables`, cached per variable count."""
    cache = optimizer.__dict__.get("_hyper_owner_cache")
    count = len(optimizer._variables)
    if cache is None or cache.count != count:
        rules = [v._keras_optx_owner() for v in optimizer.variables if getattr(v, "_keras_optx_owner", None) is not None]
        cache = _set_cache(optimizer, "_hyper_owner_cache", count=count, rules=[r for r in rules if r is not None])
    return cache.rules


def _evaluate(value, root):
    if isinstance(value, tuple):
        return tuple(_evaluate(v, root) for v in value)
    if isinstance(value, _Schedule):
        return backend.scalar(value(root._step_numbers()[1]))
    if callable(value):
        return backend.scalar(value())
    return value


def serialize_value(value):
    """A hyperparameter's config entry: numbers as they are, schedules serialized."""
    if isinstance(value, tuple):
        return tuple(serialize_value(v) for v in value)
    if isinstance(value, _Schedule):
        return keras.optimizers.schedules.serialize(value)
    return value


def deserialize_value(value, custom_objects=None):
    if isinstance(value, (tuple, list)):
        return type(value)(deserialize_value(v, custom_objects) for v in value)
    if isinstance(value, dict) and "class_name" in value:
        return keras.optimizers.schedules.deserialize(value, custom_objects=custom_objects)
    return value


def _checked_rate(value):
    """A rate set after construction: the constructor's check for numbers (tensors holding one
    included, where they can be read); schedules and callables as they are."""
    if isinstance(value, keras.Variable):
        value = value.value
    if keras.ops.is_tensor(value) and not isinstance(value, (int, float)) and len(value.shape) == 0:
        try:
            number = float(keras.ops.convert_to_numpy(value))
        except Exception:  # a traced value (inside a compiled step): not readable here
            return value
        check.nonnegative("learning_rate", number)
        return value
    return check.learning_rate(value)


# adjust ------------------------------------------------------------------------------
def adjust(optimizer, **values):
    """Set hyperparameters of `optimizer` and of every rule inside it (Flux's `adjust!`).

    Each keyword sets that hyperparameter on every rule of the tree that has it: the optimizer
    itself, chain members, Partition rules, wrapped optimizers (`SkipNonFinite`, transforms
    wrapping a Keras optimizer, the `inner_optimizer` of Keras's `LossScaleOptimizer`).
    `learning_rate=` sets the rate of every rule that has one, and is refused (naming them) when
    some rule's rate is a schedule or callable. A keyword no rule has is refused, as is a value
    out of range: every value is checked before anything is set.
    Returns `optimizer`. Takes effect at the next step, also inside a compiled step.

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.WeightDecay(1e-4), keras_optx.Momentum(0.01, 0.9))
        >>> keras_optx.adjust(opt, rho=0.5, wd=0.0)   # or opt.adjust(rho=0.5, wd=0.0)
        Optimiser(WeightDecay(wd=0.0), Momentum(learning_rate=0.01, rho=0.5))
        >>> opt[1].rho
        0.5

    Optimisers.jl `adjust!` (Innes 2018, arXiv:1811.01457); optax `inject_hyperparams`.
    """
    rules = list(_walk(optimizer))
    targets, checked = {}, {}
    for name, value in values.items():
        if name == "learning_rate":
            scheduled = [r for r in rules if _rate_is_scheduled(r)]
            if scheduled:
                raise ValueError(
                    f"adjust: the learning rate of {', '.join(f'{r.name} ({type(r).__name__})' for r in scheduled)} is a schedule or callable, "
                    "part of the compiled step; a number cannot replace it. Adjust the other hyperparameters, or "
                    "give those rules a number as rate before training starts."
                )
            found = [r for r in rules if _has_rate(r)]
            checked[name] = _checked_rate(value) if found else value
        else:
            found = [r for r in rules if name in getattr(r, "hyperparameters", {}) or _settable_property(r, name)]
        if not found:
            known = sorted({n for r in rules for n in getattr(r, "hyperparameters", {})} | {"learning_rate"})
            raise ValueError(f"adjust: no rule in {optimizer!r} has a hyperparameter `{name}`; known: {known}.")
        for rule in found:
            if name != "learning_rate" and name in getattr(rule, "hyperparameters", {}):
                _checked(rule, name, value)  # all checked before any is set
        targets[name] = found
    for rule in rules:
        if getattr(rule, "built", False) or "_hyper_layout" in rule.__dict__:
            attach(rule)  # jax mid-epoch: before any write, so that none is half done
            break
    for name, found in targets.items():
        for rule in found:
            setattr(rule, name, checked.get(name, values[name]))
    return optimizer


def _walk(optimizer, seen=None):
    """The optimizer, then every rule inside: chain members, Partition rules, the optimizer a
    Transform wraps, and the `inner_optimizer` of a Keras wrapper (`LossScaleOptimizer`)."""
    seen = set() if seen is None else seen
    if id(optimizer) in seen or optimizer is None:
        return
    seen.add(id(optimizer))
    yield optimizer
    children = list(getattr(optimizer, "rules", ()) or ()) + [getattr(optimizer, "optimizer", None)]
    children.append(getattr(optimizer, "inner_optimizer", None))
    for child in children:
        if isinstance(child, keras.optimizers.Optimizer):
            yield from _walk(child, seen)


def _has_rate(rule):
    return getattr(rule, "has_learning_rate", True) and isinstance(getattr(rule, "_learning_rate", None), keras.Variable)


def _rate_is_scheduled(rule):
    rate = getattr(rule, "_learning_rate", None)
    return getattr(rule, "has_learning_rate", True) and rate is not None and not isinstance(rate, keras.Variable) and (
        isinstance(rate, _Schedule) or callable(rate)
    )


def _settable_property(rule, name):
    prop = getattr(type(rule), name, None)
    return isinstance(prop, property) and prop.fset is not None
