"""Per-variable rules: `Partition({regex on variable.path, or predicate: rule})`, `Frozen`, freezing by mask,
and `matrices`, a saveable predicate."""

import re

import keras
import numpy as np

from ._backends import current as backend
from ._base import Rule, _current_variables, _lead_rate, _step_variables, _track_once, _versioned
from ._transform import Transform
from ._frozen import _either_frozen
from ._identity import _same, _set_cache
from ._hyper import attach
from ._tensors import Many

_register = keras.saving.register_keras_serializable(package="keras_optx")


@_register
class Frozen(Transform):
    """No update and no state: a `Partition` target for variables that must not train.

    Δ = 0. Inside a `Partition` its variables are skipped altogether (no slot, no write);
    to freeze and thaw during training without rebuilding, use `Partition.freeze`/`thaw`.

    Example:
        >>> w, b = keras.Variable([1.0], name="kernel"), keras.Variable([1.0], name="bias")
        >>> opt = keras_optx.Partition({"bias": keras_optx.Frozen(), ".*": keras_optx.Descent(0.1)})
        >>> opt.apply([np.ones(1, "float32"), np.ones(1, "float32")], [w, b])
        >>> print(keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(b))
        [0.9] [1.]

    Optimisers.jl `freeze!`; optax `set_to_zero`.
    """

    def __init__(self, **kwargs):
        super().__init__(None, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return Many(keras.ops.zeros_like(a) for a in x.items), {}


@_register
class Partition(Rule):
    """A rule per group of variables, chosen by a regular expression on `variable.path` or a predicate.

    Each variable goes to the first rule whose key matches it: a string `re.search`es its path (Keras paths
    look like `"dense_1/kernel"`, inside a model sometimes with the model's name in front, which a
    loaded model may lack: match layer names, not the start of the path); a callable
    `variable -> bool` (such as `keras_optx.matrices()`) is called on the variable.
    Δᵢ = rule_k(gᵢ) for variable i in group k, each rule with its own slots for its own variables only.

    Refused at `build`, naming the key: a variable no key matches (write a catch-all such as
    `".*"` last to route the rest); a key that routes no variable, because it matches none or
    because earlier keys take every variable it matches (first match wins:
    `{".*": Descent(), "bias": Frozen()}` would train the bias). A catch-all `".*"` last may
    route nothing. Refused at construction: one rule object under two keys (join the patterns,
    `"a|b"`, or give each its own instance). A predicate key is saved with the model when it is a
    registered Keras serializable (`keras_optx.matrices` is); saving a Partition with any other
    callable (a lambda) is refused.

    A Partition is a Keras optimizer on its own and a chain member:
    `Optimiser(ClipGlobalNorm(1.0), Partition(…))` clips over all variables, then routes.

    Freezing: `Frozen()` as a target keeps no state and never updates its variables.
    `freeze(pattern)` / `thaw(pattern)` stop and restart the updates of the matching variables
    at the next step, inside compiled steps too (a 0/1 mask variable, saved with the model, not
    Python state): a frozen variable's value and slots stay as they are; the step count t of
    bias corrections keeps counting all updates, as for every rule.

    Learning rate: `learning_rate` (what Keras callbacks such as `ReduceLROnPlateau` read and
    set, and what they log) is the rate of the last rule that has one, usually the catch-all's;
    the other rules keep their own rates (steer them by giving them schedules or through
    `partition.rules`). A rate that is a schedule reads as its value at the Partition's update
    count (`iterations`), the rate of the next update, as for a Keras optimizer; so does each
    rule's `learning_rate`.

    Args:
        rules: `{key: rule}` in priority order (a dict, or a list of (key, rule) pairs); a key is a
            regular expression on `variable.path` or a callable `variable -> bool`.
            A rule is a keras_optx rule, transform, `Optimiser`, `Partition` or `Frozen()`.
        **kwargs: any `keras.optimizers.Optimizer` keyword, and `Rule`'s `shard_state`, `state_dtype`
            and `rounding` (one for all groups, at the Partition's write; its rules refuse it).

    Example:
        >>> opt = keras_optx.Partition({
        ...     r"(bias|norm)": keras_optx.ADAM(1e-3),                      # no decay on biases and norms
        ...     r"head": keras_optx.ADAMW(1e-2, decay=1e-2),                 # a higher rate for the head
        ...     r".*": keras_optx.ADAMW(1e-3, decay=1e-2),
        ... })
        >>> w, b = keras.Variable([1.0], name="kernel"), keras.Variable([1.0], name="bias")
        >>> h = keras.Variable([1.0], name="head_kernel")
        >>> opt.apply([np.ones(1, "float32")] * 3, [w, b, h])
        >>> _ = opt.freeze("^kernel")  # no update until opt.thaw("^kernel"); its slots are kept
        >>> opt.apply([np.ones(1, "float32")] * 3, [w, b, h])
        >>> print(np.round(keras.ops.convert_to_numpy(w), 4), np.round(keras.ops.convert_to_numpy(b), 4), opt.frozen)
        [0.989] [0.998] ['kernel']

    optax `multi_transform` / `partition`; Optimisers.jl per-leaf rules and `freeze!`/`thaw!`;
    discriminative fine-tuning (Howard & Ruder 2018, arXiv:1801.06146).
    """

    has_learning_rate = False

    def __init__(self, rules, **kwargs):
        super().__init__(1.0, **kwargs)
        pairs = list(rules.items()) if isinstance(rules, dict) else _pairs(rules)
        if not pairs:
            raise ValueError("`rules` must name at least one {pattern: rule}; received an empty mapping.")
        self.patterns = [_key(pattern) for pattern, _ in pairs]  # compiled regexes and predicates
        self.rules = tuple(_target(rule, pattern) for pattern, rule in pairs)
        for i, rule in enumerate(self.rules):
            earlier = next((k for k in range(i) if self.rules[k] is rule), None)
            if earlier is not None:
                raise ValueError(
                    f"Partition rule for {_describe(self.patterns[i])} ({rule!r}) is the same object as the rule for "
                    f"{_describe(self.patterns[earlier])}; a rule keeps state for its own variables, so give each key "
                    "its own instance, or join the patterns into one (\"a|b\")."
                )
        for rule in self.rules:
            rule._claim(self)
        self._leads = _lead_rate(self, self.rules, any(r._rate_variables() for r in self.rules))
        for rule in self.rules:
            for v in rule._rate_variables():
                _track_once(self, v)
        self._mask = None
        self._pending = []  # freeze/thaw calls made before build, applied to the mask at build
        # keras_optx.torch's param_groups: the keys' name in errors, and the keys (groups given as variable
        # lists, as torch's) no variable may be in two of
        self._key_name, self._disjoint = None, ()
        self._check_state_dtype()

    def _parts(self):
        return getattr(self, "rules", ())

    def _steers_rate(self):
        return self._leads

    # Routing ----------------------------------------------------------------------
    def _route(self, variables):
        """[rule index per variable], refusing unmatched variables by name."""
        routes, unmatched = [], []
        for v in variables:
            k = next((k for k, p in enumerate(self.patterns) if _matches(p, v)), None)
            if k is None:
                unmatched.append(_path(v))
            routes.append(k)
        if unmatched:
            raise ValueError(
                f"Partition: no pattern matches the variable(s) {unmatched}; patterns: "
                f"{[_describe(p) for p in self.patterns]}. Add a pattern for them, or a catch-all \".*\" last."
            )
        return routes

    def _check_routes(self, variables):
        """Refuse a key that routes no variable: one that matches none, or whose every match an
        earlier key takes (a catch-all \".*\" last may route none); with `_disjoint`, a variable two
        keys match; then the rules' own routing, each on its variables."""
        if self._disjoint:
            for v in variables:
                keys = [k for k in self._disjoint if _matches(self.patterns[k], v)]
                if len(keys) > 1:
                    raise ValueError(
                        f"Variable {_path(v)} is in {' and '.join(self._name(k) for k in keys)}; as in torch, a "
                        "parameter may be in one group only."
                    )
        routes = self._route(variables)
        for k, key in enumerate(self.patterns):
            if k in routes or (k == len(self.patterns) - 1 and _catch_all(key)):
                continue
            matched = [i for i, v in enumerate(variables) if _matches(key, v)]
            if not matched:
                raise ValueError(
                    f"Partition: {self._name(k)} matches no variable, so its rule ({type(self.rules[k]).__name__}) would never "
                    f"apply; the paths are {_shown([_path(v) for v in variables])}. Fix the key or remove it."
                )
            earlier = sorted({routes[i] for i in matched})
            raise ValueError(
                f"Partition: {self._name(k)} is shadowed: every variable it matches "
                f"({_shown([_path(variables[i]) for i in matched])}) is routed by the earlier "
                f"{', '.join(self._name(j) for j in earlier)} (the first match wins), so its rule "
                f"({type(self.rules[k]).__name__}) would never apply. Put it before them, or remove it."
            )
        for rule, positions in zip(self.rules, _positions(routes, len(self.rules))):
            rule._check_routes([variables[i] for i in positions])
        self.__dict__["_routes_checked"] = True

    def _name(self, k):
        if self._key_name:
            return f"{self._key_name}[{k}] (params {_describe(self.patterns[k])})"
        return f"pattern {_describe(self.patterns[k])}"

    def _groups(self, variables):
        """[positions of `variables` routed to rule k, per k], cached for the last list seen."""
        cache = self.__dict__.get("_group_cache")
        if cache is not None and _same(cache.variables, variables):
            return cache.groups
        groups = _positions(self._route(variables), len(self.rules))
        _set_cache(self, "_group_cache", variables=list(variables), groups=groups)
        return groups

    def _slot_owners(self, variables):
        owners = {}
        for k, (rule, positions) in enumerate(zip(self.rules, self._groups(variables))):
            for name, (initial, has) in rule._slot_owners([variables[i] for i in positions]).items():
                flags = [False] * len(variables)
                for i, own in zip(positions, has):
                    flags[i] = own
                owners[f"{k}_{name}"] = (initial, flags)
        return owners

    def _build_state(self, variables):
        if not self.__dict__.get("_routes_checked"):  # an owner that does not list this Partition in `_parts`
            self._check_routes(variables)
        made = self._build_hyper()
        for rule, positions in zip(self.rules, self._groups(variables)):
            made += rule._build_state([variables[i] for i in positions])
        if self._mask is None:
            # freeze/thaw calls made before build set the initial value: no variable is read (a
            # `fit` builds inside a traced step on tensorflow, where a read cannot give numbers).
            initial = np.zeros(len(variables), "float32")
            for freeze, pattern in self._pending:
                initial[self._hits(variables, pattern)] = 1.0 if freeze else 0.0
            self._mask = self.add_variable(
                shape=(len(variables),), dtype="float32", initializer=lambda shape, dtype: initial, name="frozen",
                aggregation="none",
            )
            _set_cache(self, "_mask_for", variables=list(variables), index={id(v): i for i, v in enumerate(variables)})
            self._pending = []
        return made + [self._mask]

    # Freezing ---------------------------------------------------------------------
    def freeze(self, pattern):
        """Stop updating the variables whose path `re.search`es `pattern` (or for which a callable
        `pattern(variable)` is True), from the next step.

        Their values and slots stay as they are until `thaw`. Returns the optimizer."""
        return self._freeze(pattern, True)

    def thaw(self, pattern):
        """Resume updating the variables whose path `re.search`es `pattern`, from the next step."""
        return self._freeze(pattern, False)

    def _freeze(self, pattern, freeze):
        pattern = _key(pattern, "`pattern`")
        if self._mask is None:
            self._pending.append((freeze, pattern))
        else:
            self._set_frozen(pattern, freeze)
        return self

    @staticmethod
    def _hits(variables, pattern):
        hits = [i for i, v in enumerate(variables) if _matches(pattern, v)]
        if not hits:
            raise ValueError(
                f"`pattern` {_describe(pattern)} matches no variable of this optimizer; paths: {[_path(v) for v in variables]}."
            )
        return hits

    def _set_frozen(self, pattern, freeze):
        hits = self._hits(self.__dict__["_mask_for"].variables, pattern)
        attach(self)  # jax mid-epoch: the trainer hands the mask back, and re-reads it at its next step
        mask = keras.ops.convert_to_numpy(self._mask.value).copy()
        mask[hits] = 1.0 if freeze else 0.0
        self._mask.assign(mask)

    @property
    def frozen(self):
        """The paths of the variables frozen now (by `freeze`), in build order."""
        if self._mask is None:
            return []
        attach(self)
        mask = keras.ops.convert_to_numpy(self._mask.value)
        return [_path(v) for v, m in zip(self.__dict__["_mask_for"].variables, mask) if m > 0]

    def _frozen_flags(self, variables):
        """Per variable: a Python bool where the step runs eagerly (torch: read once per step), a
        scalar bool tensor where it is traced (jax, tensorflow)."""
        index = self.__dict__["_mask_for"].index
        positions = [index[id(v)] for v in variables]
        if backend.EAGER:
            mask = keras.ops.convert_to_numpy(backend.values([self._mask])[0]).tolist()
            return [mask[i] > 0 for i in positions]
        mask = self._mask.value
        return [mask[i] > 0.5 for i in positions]

    def _frozen(self, variables):
        """Per variable: frozen by `freeze`, routed to `Frozen()`, or frozen by a rule inside."""
        if self._mask is None:
            return None
        flags = self._frozen_flags(variables)
        for rule, positions in zip(self.rules, self._groups(variables)):
            inner = [True] * len(positions) if isinstance(rule, Frozen) else rule._frozen([variables[i] for i in positions])
            for i, f in zip(positions, inner or ()):
                flags[i] = _either_frozen([flags[i]], [f])[0]
        return flags

    # The update -----------------------------------------------------------------------
    def _transform(self, g, x, state, t, step):
        variables = _current_variables()
        groups = self._groups(variables)
        frozen = self._frozen_flags(variables)
        gs, xs = g.items, x.items
        out = list(xs)  # placeholders, replaced below
        new_state = {}
        for k, (rule, positions) in enumerate(zip(self.rules, groups)):
            prefix = f"{k}_"
            own = {n[len(prefix):]: s for n, s in state.items() if n.startswith(prefix)}
            if not positions or isinstance(rule, Frozen) or all(frozen[i] is True for i in positions):
                for i in positions:
                    out[i] = _zeros(xs[i])
                new_state.update({prefix + n: s for n, s in own.items()})
                continue
            sub = [variables[i] for i in positions]
            # A frozen variable is absent from its rule's step: a zero gradient (so it counts in no
            # global norm), its Δ and new slots discarded below.
            sub_g = Many(_pick(frozen[i], _zeros(gs[i]), gs[i]) for i in positions)
            with _step_variables(sub):
                delta, updated = rule._transform(sub_g, Many(xs[i] for i in positions), own, t, step)
            owners = rule._slot_owners(sub)
            for j, (i, d) in enumerate(zip(positions, delta.items)):
                out[i] = _pick(frozen[i], _zeros(d), d)
            for name, values in updated.items():
                keeps = [frozen[i] for i, has in zip(positions, owners[name][1]) if has]
                new_state[prefix + name] = Many(
                    _pick(f, old, new) for f, old, new in zip(keeps, own[name].items, values.items)
                )
        return Many(out), new_state

    def _rate_variables(self):
        return [v for r in self.rules for v in r._rate_variables()]

    # Config ------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config["rules"] = [[_saved_key(p), keras.saving.serialize_keras_object(r)] for p, r in zip(self.patterns, self.rules)]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config, version = _versioned(cls, config)
        rules = [
            (p if isinstance(p, str) else keras.saving.deserialize_keras_object(p, custom_objects=custom_objects),
             keras.saving.deserialize_keras_object(r, custom_objects=custom_objects))
            for p, r in config.pop("rules")
        ]
        partition = cls(rules, **config)
        partition._saved_format_version = version
        return partition

    def __repr__(self):
        return f"{type(self).__name__}({{{', '.join(f'{_describe(p)}: {r!r}' for p, r in zip(self.patterns, self.rules))}}})"


def _pairs(rules):
    try:
        pairs = [tuple(pair) for pair in rules]
    except TypeError:
        pairs = None
    if pairs is None or any(len(pair) != 2 for pair in pairs):
        raise TypeError(f"`rules` must be a dict {{pattern: rule}} or a list of (pattern, rule) pairs; received {rules!r}.")
    return pairs


def _target(rule, pattern):
    if isinstance(rule, Transform) and rule.optimizer is not None:
        raise ValueError(
            f"Partition rule for {pattern!r} ({rule!r}) wraps a Keras optimizer; use the bare transform inside "
            f"an Optimiser chain instead, e.g. Optimiser({type(rule).__name__}(...), ADAM())."
        )
    if not isinstance(rule, Rule):
        raise TypeError(
            f"Partition rule for {pattern!r} must be a keras_optx rule, transform, Optimiser, Partition or "
            f"Frozen(); received {rule!r} ({type(rule).__name__})."
        )
    return rule


def _key(key, what="Partition patterns"):
    """A key as matched: a compiled regex for a string, the callable itself for a predicate."""
    if callable(key) and not isinstance(key, str):
        return key
    if not isinstance(key, str):
        raise TypeError(
            f"{what} must be strings (regular expressions on variable.path) or callables variable -> bool; "
            f"received {key!r}."
        )
    try:
        return re.compile(key)
    except re.error as error:
        raise ValueError(f"{what} {key!r} is not a valid regular expression: {error}.") from None


def _matches(key, variable):
    if isinstance(key, re.Pattern):
        return key.search(_path(variable)) is not None
    found = key(variable)
    if not isinstance(found, (bool, np.bool_)):
        raise TypeError(
            f"Partition predicate {key!r} must return True or False for a variable; it returned {found!r} for "
            f"{_path(variable)}."
        )
    return bool(found)


def _describe(key):
    return repr(key.pattern) if isinstance(key, re.Pattern) else repr(key)


def _catch_all(key):
    return isinstance(key, re.Pattern) and key.pattern in (".*", "")


def _saved_key(key):
    if isinstance(key, re.Pattern):
        return key.pattern
    if not hasattr(key, "get_config") and keras.saving.get_registered_name(key) == getattr(key, "__name__", None):
        raise ValueError(
            f"Partition key {key!r} is a callable Keras cannot save (a lambda or an unregistered function): the "
            "model would load without its routing. Use a saveable predicate such as keras_optx.matrices(...), a "
            "class registered with @keras.saving.register_keras_serializable() that has get_config, or a regex."
        )
    return keras.saving.serialize_keras_object(key)


def _positions(routes, count):
    """[positions routed to rule k, for each k < count]."""
    return [[i for i, r in enumerate(routes) if r == k] for k in range(count)]


def _shown(paths, limit=8):
    return str(paths[:limit])[:-1] + f", … {len(paths) - limit} more]" if len(paths) > limit else str(paths)


def _path(variable):
    path = getattr(variable, "path", None) or getattr(variable, "name", None)
    if not isinstance(path, str):
        raise TypeError(
            f"A Partition routes variables by `variable.path`; received a {type(variable).__name__} with no path "
            "or name. Pass keras.Variable objects (a model's `trainable_variables`), or use a predicate key."
        )
    return path


def _zeros(like):
    return keras.ops.zeros_like(like)


def _pick(condition, if_true, if_false):
    if isinstance(condition, bool):
        return if_true if condition else if_false
    return keras.ops.where(condition, if_true, if_false)
