"""torch param groups' parts (keras_optx.torch): what a group's "params" holds and how it is
saved, and `ParamGroup`, the live view `optimizer.param_groups` returns."""

import re
from collections.abc import Mapping, MutableMapping

import keras
import numpy as np

from ._hyper import attach

_NOTHING = "(?!)"  # a group of variables routes by their paths, known at build


class _Positions(tuple):
    """A saved group's variables: positions in the list the optimizer is built with."""


def _params_spec(params, i):
    """A group's "params": a regex (the string), a tuple of variables, or `_Positions` (saved)."""
    if isinstance(params, str):
        try:
            re.compile(params)
        except re.error as error:
            raise ValueError(f"`param_groups[{i}]['params']` {params!r} is not a valid regular expression: {error}.") from None
        return params
    if isinstance(params, _Positions):
        return params
    if isinstance(params, dict) and set(params) == {"positions"}:
        positions = params["positions"]
        if not isinstance(positions, (list, tuple)) or not positions or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in positions
        ):
            raise ValueError(f"`param_groups[{i}]['params']['positions']` must be a non-empty list of integers ≥ 0; received {positions!r}.")
        return _Positions(positions)
    if isinstance(params, keras.Variable):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        params = None
    if not params or not all(isinstance(v, keras.Variable) for v in params):
        raise TypeError(
            f"`param_groups[{i}]['params']` must be a regex on variable.path or a non-empty list of "
            f"keras.Variable; received {params!r}."
        )
    return tuple(params)


def _path(variable):
    return getattr(variable, "path", None) or variable.name


def _chosen(params, variables, i):
    """The variables of a group given as variables or positions, among those built."""
    if isinstance(params, _Positions):
        if max(params) >= len(variables):
            raise ValueError(
                f"`param_groups[{i}]` holds the variables at positions {list(params)} of the list the optimizer was "
                f"saved with; it is built with {len(variables)} variables. Build it with the model it was saved with."
            )
        return [variables[p] for p in params]
    missing = [_path(v) for v in params if not any(v is b for b in variables)]
    if missing:
        raise ValueError(f"`param_groups[{i}]` names variables the optimizer is not built with: {missing}.")
    return list(params)


def _group_value(rule, key):
    """A group's value of `key` as its step uses it: "lr" as a number (or its schedule), others as set."""
    if key != "lr":
        return getattr(rule, key)
    rate = rule._learning_rate
    if isinstance(rate, keras.Variable):
        attach(rule)  # jax mid-epoch: the trainer holds the value
        return float(str(np.float32(keras.ops.convert_to_numpy(rate.value))))
    return rate


class ParamGroup(MutableMapping):
    """One of `optimizer.param_groups`: a live view of a group's values (torch's group dict).

    `g["lr"]`, `g["weight_decay"]`, `g["betas"]`, … read the value the group's step uses; setting one
    is `opt.<name> = …` on that group (checked, refused before any write, acting at the next step,
    saved). The last group (the variables no group matches) holds the optimizer's own values: setting
    one there sets the optimizer's, which reaches every group without its own, as `opt.<name> = …` does.
    "params" (the regex or variables given) is read-only; keys cannot be added or removed."""

    def __init__(self, optimizer, index):
        self._optimizer, self._index = optimizer, index

    def _rule(self):
        return self._optimizer if self._index is None else self._optimizer._partition.rules[self._index]

    def _keys(self):
        return ["params", "lr", *self._optimizer.hyperparameters]

    def __getitem__(self, key):
        if key == "params":
            return ".*" if self._index is None else self._optimizer._group_specs[self._index]["params"]
        if key not in self._keys():
            raise KeyError(key)
        return _group_value(self._rule(), key)

    def __setitem__(self, key, value):
        if key == "params":
            raise TypeError("A param group's \"params\" are fixed at construction; pass other `param_groups=` to a new optimizer.")
        if key not in self._keys():
            raise KeyError(f"{type(self._optimizer).__name__}'s param groups have the keys {self._keys()}; received {key!r}.")
        setattr(self._rule(), "learning_rate" if key == "lr" else key, value)

    def __delitem__(self, key):
        raise TypeError(f"The keys of a param group cannot be removed (received {key!r}); set a value instead.")

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def __eq__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        def plain(group):
            return {k: tuple(map(id, v)) if k == "params" and not isinstance(v, str) else v for k, v in group.items()}
        return plain(self) == plain(other)

    __hash__ = None

    def __repr__(self):
        return repr(dict(self))
