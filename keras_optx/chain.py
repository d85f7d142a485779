"""Flux's composition `Optimiser(r₁, r₂, …)`: a left fold of gradient transformations."""

import keras

from ._backends import current as backend
from ._base import Rule, _lead_rate, _track_once, _versioned
from ._transform import Transform
from ._tensors import Many

_register = keras.saving.register_keras_serializable(package="keras_optx")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


class _Scaled(Rule):
    """A schedule as a chain member (Flux's ExpDecay/InvDecay): Δ = schedule(n)·g."""

    has_learning_rate = False

    def __init__(self, schedule):
        super().__init__(1.0)
        self.schedule = schedule

    def _transform(self, g, x, state, t, step):
        return g * backend.scalar(self.schedule(step)), {}


@_register
class Optimiser(Rule):
    """Flux's composition: each member transforms the output of the one before.

    Δ = rₙ(… r₂(r₁(g)) …), each member with its own slots (owned by the chain).

    Members are keras_optx rules and transforms, nested `Optimiser`s, and learning-rate
    schedules such as `ExpDecay`/`InvDecay` (which scale the running Δ, as in Flux).
    The chain is a Keras optimizer: compile it, `fit` with it, save it.

    Its `learning_rate` is that of its last member that has one, so Keras callbacks
    (`ReduceLROnPlateau`, `LearningRateScheduler`) steer the chain's main rule; a rate that is
    a schedule reads as its value at the chain's update count (the next update's rate).

    Args:
        *rules: the members, in order.
        **kwargs: any `keras.optimizers.Optimizer` keyword, and `Rule`'s `shard_state`, `state_dtype`
            and `rounding` (how the chain's one write rounds into float16/bfloat16 variables; a member
            refuses it, as it refuses Keras's keywords).

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.ClipNorm(1.0), keras_optx.WeightDecay(1e-4), keras_optx.ADAM(1e-3))
        >>> len(opt), opt[0]  # a sequence of members, as in Flux; opt[1:] is a new chain of copies
        (3, ClipNorm(thresh=1.0))
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt.apply([np.array([30.0, -40.0], "float32")], [x])  # clipped, decayed, then ADAM
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))
        [0.999 2.001]

    A member belongs to one chain (it keeps that chain's state); reusing one raises.
    Flux.jl `Optimiser` (Innes 2018, arXiv:1811.01457); optax `chain`.
    """

    has_learning_rate = False

    def __init__(self, *rules, **kwargs):
        super().__init__(1.0, **kwargs)
        self.rules = tuple(rules)
        for i, rule in enumerate(rules):
            if isinstance(rule, Rule) and any(rule is other for other in rules[:i]):
                raise ValueError(
                    f"Optimiser member {i} ({rule!r}) is the same object as an earlier member; a member keeps its "
                    "own state, so give each position its own instance."
                )
        self._members = tuple(_member(r, i) for i, r in enumerate(rules))
        for member in self._members:
            member._claim(self)
        self._leads = _lead_rate(self, self._members, any(m._rate_variables() or m.has_learning_rate for m in self._members))
        for member in self._members:
            for v in member._rate_variables():
                _track_once(self, v)
        self._check_state_dtype()

    def _parts(self):
        return getattr(self, "_members", ())

    def _steers_rate(self):
        return self._leads

    @property
    def slots(self):
        return {f"{i}_{name}": init for i, m in enumerate(self._members) for name, init in m.slots.items()}

    def _slot_owners(self, variables):
        return {
            f"{i}_{name}": spec for i, m in enumerate(self._members) for name, spec in m._slot_owners(variables).items()
        }

    def _build_state(self, variables):
        return self._build_hyper() + [v for m in self._members for v in m._build_state(variables)]

    def _transform(self, g, x, state, t, step):
        return self._fold(self._members, g, x, state, t, step)

    @staticmethod
    def _fold(members, g, x, state, t, step):
        """Apply `members` (a prefix of the chain's) in order; slots are keyed `<position>_<name>`."""
        new_state = {}
        for i, member in enumerate(members):
            g, updated = member._transform(g, x, _own(state, i), t, step)
            new_state.update({f"{i}_{k}": v for k, v in updated.items()})
        return g, new_state

    def _rate_variables(self):
        return [v for m in self._members for v in m._rate_variables()]

    # A sequence of members, as in Flux --------------------------------------------
    def __getitem__(self, index):
        if isinstance(index, slice):
            return Optimiser(*(_copy(r) for r in self.rules[index]))
        return self.rules[index]

    def __len__(self):
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    def get_config(self):
        config = super().get_config()
        config["rules"] = [keras.saving.serialize_keras_object(r) for r in self.rules]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config, version = _versioned(cls, config)
        rules = [keras.saving.deserialize_keras_object(r, custom_objects=custom_objects) for r in config.pop("rules")]
        chain = cls(*rules, **config)
        chain._saved_format_version = version
        return chain

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.rules))})"


def _member(rule, position):
    if isinstance(rule, _Schedule):
        return _Scaled(rule)
    if isinstance(rule, Transform) and rule.optimizer is not None:
        raise ValueError(
            f"Optimiser member {position} ({rule!r}) wraps a Keras optimizer; inside a chain use the bare "
            f"transform and put the rule after it, e.g. Optimiser({type(rule).__name__}(...), ADAM())."
        )
    if isinstance(rule, Rule):
        return rule
    hint = ""
    if isinstance(rule, keras.optimizers.Optimizer):
        hint = " To clip or decay for a Keras optimizer, wrap it instead: ClipNorm(1.0, keras.optimizers.Adam())."
    raise TypeError(
        f"Optimiser member {position} must be a keras_optx rule, transform, Optimiser or LearningRateSchedule; "
        f"received {rule!r} ({type(rule).__name__}).{hint}"
    )


def _own(state, position):
    """A member's slots out of its chain's, with the `<position>_` prefix removed."""
    prefix = f"{position}_"
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _copy(rule):
    return type(rule).from_config(rule.get_config())
