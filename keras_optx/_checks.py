"""Validation of hyperparameters: a clear error naming the argument, never a silent bad update."""

import numbers

import keras

_Schedule = keras.optimizers.schedules.LearningRateSchedule


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; received {value!r} ({type(value).__name__}).")
    return float(value)


def nonnegative(name, value):
    """A real number ≥ 0."""
    value = _number(name, value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number ≥ 0; received {name}={value}.")
    return value


def positive(name, value):
    """A real number > 0."""
    value = _number(name, value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a finite number > 0; received {name}={value}.")
    return value


def unit(name, value):
    """A decay factor in [0, 1)."""
    value = _number(name, value)
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1); received {name}={value}.")
    return value


def closed_unit(name, value):
    """A factor in [0, 1]."""
    value = _number(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be in [0, 1]; received {name}={value}.")
    return value


def betas(name, value):
    """A pair (β₁, β₂), each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a pair (β₁, β₂); received {value!r}.")
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a pair (β₁, β₂) of length 2; received {name}={tuple(value)}.")
    return tuple(unit(f"{name}[{i}]", b) for i, b in enumerate(value))


def positive_int(name, value):
    """An integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"`{name}` must be an integer ≥ 1; received {value!r}.")
    if value < 1:
        raise ValueError(f"`{name}` must be an integer ≥ 1; received {name}={value}.")
    return int(value)


def nonnegative_int(name, value):
    """An integer ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer ≥ 0; received {value!r}.")
    if value < 0:
        raise ValueError(f"`{name}` must be an integer ≥ 0; received {name}={value}.")
    return int(value)


def flag(name, value):
    """A bool."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False; received {value!r}.")
    return value


def learning_rate(value):
    """A rate ≥ 0, a `LearningRateSchedule`, or a callable returning the rate."""
    if isinstance(value, _Schedule) or callable(value):
        return value
    return nonnegative("learning_rate", value)


# Which checks take schedules and callables (hyperparameters as state, keras_optx/_hyper.py):
# a scalar check takes them whole (`numeric`), a pair check per element through its element
# checks, one per position (`element`).
for _check in (nonnegative, positive, unit, closed_unit):
    _check.numeric = True
betas.element = (unit, unit)
