"""The write x ← x − Δ into float16/bfloat16 variables, rounded once: `rounding=` of every rule.

The update Δ of a low-precision variable is computed in float32 (its slots and gradient are read
as float32, `_base.Rule._update_step`); here x − Δ is formed in float32 and rounded once to the
variable's dtype, in one of three ways:

- "nearest": round to nearest, ties to even. An update below half a unit in the last place of x
  (2⁻⁹·|x| in bfloat16) is lost, every step: with a small rate, training stalls.
- "kahan": compensated summation, as torch-optimi's `kahan_sum` (Kahan 1965): a slot c per
  low-precision variable, in its dtype, holds what the last rounding dropped:
  c ← ⌊c − Δ⌉;  x' ← ⌊x + c⌉;  c ← ⌊c + ⌊x − x'⌉⌉   (⌊·⌉: round to the variable's dtype).
  A zero Δ (a frozen variable) writes nothing.
- "stochastic": round up or down with probabilities by distance, so E[⌊y⌉ₛ] = y (Gupta et al.
  2015, arXiv:1502.02551): bfloat16 adds 16 uniform random bits below the 16 bits it keeps of y's
  float32 pattern, then truncates them; float16 does the same with 13 bits in its normal range
  (|y| ≥ 2⁻¹⁴), and below it on |y| + 2⁻¹⁴, whose float32 bits below 2⁻²⁴ are float16's
  subnormal grid (exact in distribution there up to float32's rounding of that sum, 2⁻³⁸). The
  random bits come from a `keras.random.SeedGenerator` held as optimizer state: reproducible under
  `keras.utils.set_random_seed`, saved, resumed exactly, traced under jit.

float32 and float64 variables are written as before (x − Δ in their dtype) whatever the mode.
"""

import keras

from . import _scale
from ._variables import _track_once, _variable_path

MODES = ("nearest", "kahan", "stochastic")
LOW_PRECISION = ("float16", "bfloat16")
_DROPPED_BITS = {"bfloat16": 16, "float16": 13}  # float32 mantissa bits below the dtype's
_FLOAT16_NORMAL = 2.0**-14  # float16's smallest normal number


def check(rounding):
    """`rounding` if it is one of `MODES`; else a ValueError naming them."""
    if not isinstance(rounding, str) or rounding not in MODES:
        raise ValueError(f"`rounding` must be one of {list(MODES)}; received rounding={rounding!r}.")
    return rounding


def _low(dtype):
    return keras.backend.standardize_dtype(dtype) in LOW_PRECISION


def build(rule, variables):
    """Make the state `rule.rounding` needs for `variables` (after its slots): "kahan": one
    compensation slot per low-precision variable, in its dtype, laid out like it; "stochastic": a
    seed generator, when some variable is low-precision. Nothing for "nearest" or float32 models."""
    rule._compensation = None
    rule._rounding_seed = None
    low = [_low(v.dtype) for v in variables]
    if rule.rounding == "kahan" and any(low):
        rule._compensation = [
            _scale.slot_variable(rule, v, f"{_variable_path(v)}_kahan", 0.0, v.dtype, rule.shard_state) if is_low else None
            for v, is_low in zip(variables, low)
        ]
    elif rule.rounding == "stochastic" and any(low):
        rule._rounding_seed = keras.random.SeedGenerator(name="rounding_seed")
        _track_once(rule, rule._rounding_seed.state)


def random_bits(shape, dtype, seed):
    """The uniform integers in [0, 2ᵏ) stochastic rounding to `dtype` adds (k = 16 for bfloat16,
    13 for float16), drawn from `seed` (a SeedGenerator, which advances)."""
    return keras.random.randint(shape, 0, 2 ** _DROPPED_BITS[dtype], dtype="int32", seed=seed)


def round_stochastic(y, dtype, bits):
    """float32 `y` rounded to `dtype` (bfloat16 or float16) up or down, using `bits` from `random_bits`."""
    ops = keras.ops
    y = ops.cast(y, "float32")
    if dtype == "float16":  # float16's subnormals: a fixed grid of 2⁻²⁴, which |y| + 2⁻¹⁴ puts in float32's low bits
        size = ops.abs(y)
        tiny = size < _FLOAT16_NORMAL
        shifted = _truncate(ops.where(tiny, size + _FLOAT16_NORMAL, size), bits, 13)
        rounded = ops.where(tiny, shifted - _FLOAT16_NORMAL, shifted)
        rounded = ops.where(y < 0, -rounded, rounded)
    else:
        rounded = _truncate(y, bits, 16)
    # NaN stays NaN (its bits could carry into the sign); ±inf is unchanged by the truncation.
    return ops.cast(ops.where(ops.isnan(y), y, rounded), dtype)


def _truncate(y, bits, dropped):
    """float32 `y` with `bits` added to its bit pattern, then its low `dropped` bits cleared: rounded up
    with probability (the dropped part)/2^dropped, else down (towards zero)."""
    pattern = keras.ops.view(y, "int32")
    return keras.ops.view(keras.ops.bitwise_and(pattern + bits, -(1 << dropped)), "float32")


def updates(rule, variables, deltas):
    """`[(variable, new value)]` for x ← x − Δ of each of `variables` (`deltas`: Δ per variable):
    float32/64 variables in their dtype, low-precision ones in float32 and rounded once by
    `rule.rounding` (with "kahan", each compensation slot's new value too)."""
    ops = keras.ops
    out = []
    for variable, delta in zip(variables, deltas):
        dtype = keras.backend.standardize_dtype(variable.dtype)
        x = variable.value
        if dtype not in LOW_PRECISION:
            out.append((variable, ops.cast(x - ops.cast(delta, dtype), dtype)))
            continue
        y = ops.cast(x, "float32") - ops.cast(delta, "float32")
        if rule.rounding == "stochastic":
            out.append((variable, round_stochastic(y, dtype, random_bits(ops.shape(x), dtype, rule._rounding_seed))))
        elif rule.rounding == "kahan":
            slot = rule._compensation[rule._get_variable_index(variable)]
            out += _kahan(variable, slot, x, delta, dtype)
        else:
            out.append((variable, ops.cast(y, dtype)))
    return out


def _kahan(variable, slot, x, delta, dtype):
    """torch-optimi's compensated write, each operation in float32 and rounded once to `dtype`."""
    ops = keras.ops

    def low(value):
        return ops.cast(value, dtype)

    def wide(value):
        return ops.cast(value, "float32")

    delta = wide(delta)
    c = slot.value
    carried = low(wide(c) - delta)  # c − Δ
    new_x = low(wide(x) + wide(carried))  # x + c
    new_c = low(wide(carried) + wide(low(wide(x) - wide(new_x))))  # c + (x − x')
    unmoved = delta == 0
    return [(variable, ops.where(unmoved, x, new_x)), (slot, ops.where(unmoved, c, new_c))]
