"""Rules by name (`adam:0.01`, `clipnorm+adam`) and the rules a comparison runs, checked.

A name is what `--rules` and `compare(..., rules=[...])` take; `_entries` turns names,
optimizer objects and factories into `_Entry`s: a label, a maker of fresh optimizers, the
default rate and whether the search can set it.
"""

import importlib.util
import inspect

import keras

import keras_optx as ox
from keras_optx._catalog import EXTRA_RULES, FLUX_RULES, MATRIX_RULES, TORCH_RULES, TRANSFORMS, UP_TO_RANK_TWO  # every rule by name: one list

DEFAULT_RULES = tuple(FLUX_RULES)


class UsageError(Exception):
    """A bad command-line value: reported in one line, exit status 2."""


def _torch_rules_available():
    return importlib.util.find_spec("keras_optx.torch") is not None


def known_names():
    """Every name `--rules` accepts (besides `+` chains of them)."""
    names = list(FLUX_RULES) + list(EXTRA_RULES) + list(TRANSFORMS) + ["lookahead", "cautious"]
    if _torch_rules_available():
        names += list(TORCH_RULES)
    return names


def _rank_at_most_two(variable):
    return len(variable.shape) <= 2


def _rate_holder(spec):
    """`holder(optimizer)`: the part of `build_optimizer(spec)` whose rate is the spec's η. For a routed rule
    (`muon`, `soap`, last in the spec) that is the rule inside its Partition, whose own rate would be the
    catch-all ADAMW's; otherwise the optimizer itself (a chain's rate is its last rate-bearing member's)."""
    last = spec.split("+")[-1].partition(":")[0].strip().lower()
    routed = {**FLUX_RULES, **EXTRA_RULES}.get(last)
    if routed not in MATRIX_RULES + UP_TO_RANK_TWO:
        return lambda optimizer: optimizer

    def holder(optimizer):
        while not isinstance(optimizer, ox.Partition):  # through Lookahead, Cautious and chains to the Partition
            optimizer = list(optimizer)[-1] if isinstance(optimizer, ox.Optimiser) else optimizer.optimizer
        return next(rule for rule in optimizer.rules if type(rule).__name__ == routed)

    return holder


def _member(part):
    """One `NAME[:X]` → a keras_optx object (rule, transform, torch rule or schedule)."""
    name, _, value = part.partition(":")
    key = name.strip().lower()
    args = ()
    if value:
        try:
            args = (float(value),)
        except ValueError:
            raise UsageError(f"bad number {value!r} in rule {part!r}; write NAME:X, e.g. adam:0.01") from None
    if key in FLUX_RULES or key in EXTRA_RULES:
        name = {**FLUX_RULES, **EXTRA_RULES}[key]
        # A rule for some ranks only gets those and ADAMW the rest (its η is the one tuned: `_rate_holder`).
        if name in MATRIX_RULES:
            return ox.Partition({ox.matrices(): getattr(ox, name)(*args), ".*": ox.ADAMW()})
        if name in UP_TO_RANK_TWO:
            return ox.Partition({_rank_at_most_two: getattr(ox, name)(*args), ".*": ox.ADAMW()})
        return getattr(ox, name)(*args)
    if key in TRANSFORMS:
        cls, default = TRANSFORMS[key]
        return getattr(ox, cls)(*(args or (default,)))
    if key in TORCH_RULES and _torch_rules_available():
        import keras_optx.torch as ox_torch

        return getattr(ox_torch, TORCH_RULES[key])(*args)
    raise UsageError(f"unknown rule {name.strip()!r}; choose from {', '.join(known_names())} (chains as a+b)")


def build_optimizer(spec):
    """The Keras optimizer named by `spec` (`adam`, `adam:0.01`, `clipnorm+adam`, …).

    Raises `UsageError` (one line) for an unknown name, a bad number or a value the
    rule refuses (e.g. `adadelta:1.5`).
    """
    parts = spec.split("+")
    if not spec.strip():
        raise UsageError("empty rule name: give a name such as adam, or a chain such as clipnorm+adam")
    for position, part in enumerate(parts, 1):
        if not part.strip():
            raise UsageError(
                f"empty rule name at position {position} of the chain {spec!r} (each member between '+' needs a name)"
            )
    head, _, value = parts[0].partition(":")
    if head.strip().lower() == "lookahead":  # `lookahead[:k]+<rule or chain>`: Lookahead around the rest
        if len(parts) == 1:
            raise UsageError(f"{spec!r} wraps a rule; write it before one, e.g. lookahead+adam")
        try:
            args = (float(value),) if value else ()
        except ValueError:
            raise UsageError(f"bad number {value!r} in {parts[0]!r}; write lookahead:K, e.g. lookahead:5+adam") from None
        try:
            return ox.Lookahead(build_optimizer("+".join(parts[1:])), *args)
        except (ValueError, TypeError) as error:
            raise UsageError(f"rule {spec!r}: {error}") from None
    if head.strip().lower() == "cautious":  # `cautious+<rule or chain>`: Cautious around the rest
        if len(parts) == 1 or value:
            raise UsageError(f"{spec!r}: cautious takes no number and wraps a rule; write it before one, e.g. cautious+lion")
        return ox.Cautious(build_optimizer("+".join(parts[1:])))
    try:
        members = [_member(p) for p in parts]
        if len(members) == 1:
            if isinstance(members[0], keras.optimizers.schedules.LearningRateSchedule):
                raise UsageError(f"{spec!r} is a schedule; chain it with a rule, e.g. {spec}+descent")
            if isinstance(members[0], ox.Transform):
                raise UsageError(f"{spec!r} only transforms gradients; chain it with a rule, e.g. {spec}+adam")
            return members[0]
        return ox.Optimiser(*members)
    except (ValueError, TypeError) as error:
        raise UsageError(f"rule {spec!r}: {error}") from None


def display_name(spec):
    """`clipnorm+adam:0.01` → `ClipNorm+ADAM(0.01)`."""
    names = {**FLUX_RULES, **EXTRA_RULES, "lookahead": "Lookahead", "cautious": "Cautious", **{k: v[0] for k, v in TRANSFORMS.items()}, **{k: f"torch.{v}" for k, v in TORCH_RULES.items()}}
    out = []
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        shown = names.get(name.strip().lower(), name.strip())
        out.append(f"{shown}({value})" if value else shown)
    return "+".join(out)


class _Entry:
    """A rule to compare: its name, a maker of fresh optimizers, its default rate (or why it has none)."""

    def __init__(self, label, make, default_rate, why_not, rebuild=False, holder=lambda optimizer: optimizer):
        self.label, self.make, self.default_rate, self.why_not = label, make, default_rate, why_not
        self.rebuild = rebuild  # a factory taking the rate: each rate tried needs its own optimizer
        self.holder = holder  # holder(optimizer): what `learning_rate = η` is set on

    def set_rate(self, optimizer, rate):
        self.holder(optimizer).learning_rate = rate


def _settable_rate(optimizer):
    """(rate, None) when `optimizer.learning_rate = r` changes its steps, else (None, the reason)."""
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None, "not tuned: its rate is a schedule"
    if callable(rate) and not isinstance(rate, keras.Variable):
        return None, "not tuned: its rate is a callable"
    if isinstance(optimizer, ox.Rule) and not optimizer.has_learning_rate and not optimizer._rate_variables():
        if not isinstance(optimizer, ox.Transform) or getattr(optimizer, "optimizer", None) is None:
            return None, "not tuned: no member has a learning rate"
    if not isinstance(rate, keras.Variable):
        return None, "not tuned: no settable learning rate"
    return float(keras.ops.convert_to_numpy(rate.value)), None


def _label(rule):
    """A display name for an optimizer object: `ClipNorm+ADAM`, `torch.Adam`, `keras.Adam`, `Lookahead(RADAM)`."""
    if isinstance(rule, ox.Optimiser):
        return "+".join(_label(member) for member in rule)
    name = type(rule).__name__
    inner = getattr(rule, "optimizer", None)
    if isinstance(rule, keras.optimizers.Optimizer) and isinstance(inner, keras.optimizers.Optimizer):
        return f"{name}({_label(inner)})"  # a wrapper: Lookahead(RADAM), ClipNorm(keras.Adam)
    module = type(rule).__module__
    if module.startswith("keras_optx.torch") or module.startswith("keras_optx._backends.torch"):
        return f"torch.{name}"
    if module.startswith("keras.") or module == "keras":
        return f"keras.{name}"
    return name


def _fresh(optimizer):
    """A new, unbuilt optimizer equal to `optimizer` (an optimizer trains one model)."""
    return type(optimizer).from_config(optimizer.get_config())


def _entries(rules):
    """`rules` (names, optimizers, factories; a list or a {label: rule} dict) → `_Entry`s, checked."""
    if isinstance(rules, (str, keras.optimizers.Optimizer)) or callable(rules) and not isinstance(rules, dict):
        rules = [rules]
    items = list(rules.items()) if isinstance(rules, dict) else [(None, r) for r in rules]
    if not items:
        raise ValueError("rules: give at least one rule (a name such as 'adam', an optimizer or a factory)")
    entries, seen = [], {}
    for position, (label, rule) in enumerate(items, 1):
        rebuild, holder = False, lambda optimizer: optimizer
        where = f"rules[{position - 1}]" if label is None else f"rules[{label!r}]"
        if isinstance(rule, str):
            try:
                probe = build_optimizer(rule)
            except UsageError as error:
                raise ValueError(f"{where}: {error}") from None
            holder = _rate_holder(rule)
            make = _with_rate(lambda _spec=rule: build_optimizer(_spec), holder)
            name = label or display_name(rule)
        elif isinstance(rule, keras.optimizers.Optimizer):
            probe = _fresh(rule)
            make = _with_rate(lambda _rule=rule: _fresh(_rule))
            name = label or _label(rule)
        elif callable(rule):
            try:
                probe = rule()
            except TypeError as error:
                raise TypeError(
                    f"{where}: a factory is called with no argument for the default rate and with the rate to "
                    f"try, e.g. `lambda lr=1e-3: Optimiser(ClipNorm(1.0), ADAM(lr))`; calling {rule!r}() "
                    f"raised: {error}"
                ) from None
            if not isinstance(probe, keras.optimizers.Optimizer):
                raise TypeError(f"{where}: the factory returned {type(probe).__name__}, not a Keras optimizer")
            takes_rate = _takes_argument(rule)
            if takes_rate:
                def make(rate=None, _factory=rule):
                    return _factory() if rate is None else _factory(rate)
            else:
                make = _with_rate(rule)

            name = label or _label(probe)
            rebuild = takes_rate
        else:
            raise TypeError(
                f"{where} must be a rule name (e.g. 'adam'), a Keras optimizer or a factory returning one; "
                f"received {rule!r} ({type(rule).__name__})"
            )
        rate, why_not = _settable_rate(holder(probe))
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        entries.append(_Entry(name, make, rate, why_not, rebuild, holder))
    return entries


def _with_rate(factory, holder=lambda optimizer: optimizer):
    """`make(rate=None)`: a new optimizer from `factory()`, with its (`holder`'s) learning rate set to `rate` when given."""

    def make(rate=None):
        optimizer = factory()
        if rate is not None:
            holder(optimizer).learning_rate = rate
        return optimizer

    return make


def _takes_argument(factory):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
