"""Per-variable rules: `Partition({regex on variable.path: rule})`, `Frozen`, and freezing by mask."""

import re

import keras

from ._backends import current as backend
from ._base import Rule, Transform, _current_variables, _lead_rate, _step_variables, _track_once, _versioned
from ._identity import _same, _set_cache
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
    """A rule per group of variables, chosen by a regular expression on `variable.path`.

    Each variable goes to the first rule whose pattern `re.search`es its path (Keras paths
    look like `"dense_1/kernel"`, inside a model sometimes with the model's name in front, which a
    loaded model may lack: match layer names, not the start of the path); Δᵢ = rule_k(gᵢ) for variable i in group k, each rule with its
    own slots for its own variables only. A variable no pattern matches is refused at `build`
    with an error naming it: write a catch-all such as `".*"` last to route the rest.

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
        rules: `{pattern: rule}` in priority order (a dict, or a list of (pattern, rule) pairs).
            A rule is a keras_optx rule, transform, `Optimiser`, `Partition` or `Frozen()`.
        **kwargs: any `keras.optimizers.Optimizer` keyword, and `Rule`'s `shard_state`, `state_dtype`
            and `rounding` (one for all groups, at the Partition's write; its rules refuse it).

    Example:
        >>> opt = keras_optx.Partition({
        ...     r"(bias|norm)": keras_optx.ADAM(1e-3),                      # no decay on biases and norms
        ...     r"head/": keras_optx.ADAMW(1e-2, decay=1e-2),                # a higher rate for the head
        ...     r".*": keras_optx.ADAMW(1e-3, decay=1e-2),
        ... })
        >>> w, b = keras.Variable([1.0], name="kernel"), keras.Variable([1.0], name="bias")
        >>> opt.apply([np.ones(1, "float32"), np.ones(1, "float32")], [w, b])
        >>> _ = opt.freeze("kernel")  # no update until opt.thaw("kernel"); its slots are kept
        >>> opt.apply([np.ones(1, "float32"), np.ones(1, "float32")], [w, b])
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
        self.patterns = []
        for pattern, rule in pairs:
            if not isinstance(pattern, str):
                raise TypeError(f"Partition patterns must be strings (regular expressions); received {pattern!r}.")
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"Partition pattern {pattern!r} is not a valid regular expression: {error}.") from None
        self.rules = tuple(_target(rule, pattern) for pattern, rule in pairs)
        for rule in self.rules:
            rule._claim(self)
        self._leads = _lead_rate(self, self.rules, any(r._rate_variables() for r in self.rules))
        for rule in self.rules:
            for v in rule._rate_variables():
                _track_once(self, v)
        self._mask = None
        self._pending = []  # freeze/thaw calls made before build, applied to the mask at build
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
            path = _path(v)
            k = next((k for k, p in enumerate(self.patterns) if p.search(path)), None)
            if k is None:
                unmatched.append(path)
            routes.append(k)
        if unmatched:
            raise ValueError(
                f"Partition: no pattern matches the variable(s) {unmatched}; patterns: "
                f"{[p.pattern for p in self.patterns]}. Add a pattern for them, or a catch-all \".*\" last."
            )
        return routes

    def _groups(self, variables):
        """[positions of `variables` routed to rule k, per k], cached for the last list seen."""
        cache = self.__dict__.get("_group_cache")
        if cache is not None and _same(cache.variables, variables):
            return cache.groups
        routes = self._route(variables)
        groups = [[i for i, r in enumerate(routes) if r == k] for k in range(len(self.rules))]
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
        made = self._build_hyper()
        for rule, positions in zip(self.rules, self._groups(variables)):
            made += rule._build_state([variables[i] for i in positions])
        if self._mask is None:
            self._mask = self.add_variable(
                shape=(len(variables),), dtype="float32", initializer="zeros", name="frozen", aggregation="none"
            )
            _set_cache(self, "_mask_for", variables=list(variables), index={id(v): i for i, v in enumerate(variables)})
            for freeze, pattern in self._pending:
                self._set_frozen(pattern, freeze)
            self._pending = []
        return made + [self._mask]

    # Freezing ---------------------------------------------------------------------
    def freeze(self, pattern):
        """Stop updating the variables whose path `re.search`es `pattern`, from the next step.

        Their values and slots stay as they are until `thaw`. Returns the optimizer."""
        return self._freeze(pattern, True)

    def thaw(self, pattern):
        """Resume updating the variables whose path `re.search`es `pattern`, from the next step."""
        return self._freeze(pattern, False)

    def _freeze(self, pattern, freeze):
        if not isinstance(pattern, str):
            raise TypeError(f"`pattern` must be a string (a regular expression); received {pattern!r}.")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"`pattern` {pattern!r} is not a valid regular expression: {error}.") from None
        if self._mask is None:
            self._pending.append((freeze, pattern))
        else:
            self._set_frozen(pattern, freeze)
        return self

    def _set_frozen(self, pattern, freeze):
        variables = self.__dict__["_mask_for"].variables
        hits = [i for i, v in enumerate(variables) if re.search(pattern, _path(v))]
        if not hits:
            raise ValueError(
                f"`pattern` {pattern!r} matches no variable of this optimizer; paths: {[_path(v) for v in variables]}."
            )
        mask = keras.ops.convert_to_numpy(self._mask.value).copy()
        mask[hits] = 1.0 if freeze else 0.0
        self._mask.assign(mask)

    @property
    def frozen(self):
        """The paths of the variables frozen now (by `freeze`), in build order."""
        if self._mask is None:
            return []
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
        config["rules"] = [[p.pattern, keras.saving.serialize_keras_object(r)] for p, r in zip(self.patterns, self.rules)]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config, version = _versioned(cls, config)
        rules = [
            (p, keras.saving.deserialize_keras_object(r, custom_objects=custom_objects)) for p, r in config.pop("rules")
        ]
        partition = cls(rules, **config)
        partition._saved_format_version = version
        return partition

    def __repr__(self):
        return f"{type(self).__name__}({{{', '.join(f'{p.pattern!r}: {r!r}' for p, r in zip(self.patterns, self.rules))}}})"


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


def _path(variable):
    return getattr(variable, "path", None) or variable.name


def _zeros(like):
    return keras.ops.zeros_like(like)


def _pick(condition, if_true, if_false):
    if isinstance(condition, bool):
        return if_true if condition else if_false
    return keras.ops.where(condition, if_true, if_false)
