"""PyTorch-compatible optimizers: `torch.optim.SGD`, `Adam` and `AdamW` with torch's names.

A PyTorch line ports word for word, minus `params`:

```python
from keras_optx.torch import SGD, Adam, AdamW

torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=5e-4)
SGD(0.1, momentum=0.9, weight_decay=5e-4)           # same trajectory, as a Keras optimizer
```

These are not the Flux rules of `keras_optx` (`ADAM`, `ADAMW`, `Momentum`): the
names, arguments and the meaning of `weight_decay` are torch's. They also cover
dtorch (`dtorch.optim.SGD`/`Adam`). They run on every Keras backend; on the torch
backend each step is torch's own fused kernel (`_fused_sgd_`, `_fused_adam_`,
`_fused_adamw_`) on the same state (`keras_optx/_backends/torch/kernels.py`, tested to
equal the formulas below).

`weight_decay` has torch's meaning (coupled L2 for SGD and Adam, lr-scaled and
decoupled for AdamW), as keyword and as attribute: `opt.weight_decay` reads and sets torch's
λ, a hyperparameter like the others (a number, a schedule or a callable; assigned or
`adjust`ed, it acts at the next step). A `weight_decay` of 0 when the optimizer is built makes
steps without a decay term (a pass over the variables less) and stays 0, as torch's momentum 0
keeps no buffer: construct with λ > 0 or a schedule to change it during training. Keras's own `weight_decay` of
`keras.optimizers.Optimizer`, which shares the name, is therefore not available here: Keras's
decay never runs for these classes.

The rate is `lr` (torch) or `learning_rate` (Keras's name, used by `from_config`);
`optimizer.learning_rate` reads and sets it, so Keras callbacks and schedules work.

torch's param groups port too: `param_groups=[{"params": "bias", "weight_decay": 0.0}, …]`
("params": a regex on `variable.path` or a list of variables); first match wins, the rest
use the constructor's values; Keras callbacks steer the constructor's `lr` (the default
group's, passed to groups without their own "lr"), and a hyperparameter set on the optimizer
(`opt.weight_decay = 0.1`) reaches the groups without their own (see `SGD`'s `param_groups`).
`opt.param_groups` is live, as torch's: `for g in opt.param_groups: g["lr"] *= 0.1` acts at the
next step on every backend, and is saved.
"""

import numbers
import re

import keras

from . import _checks as check
from ._base import Rule, _plus_decay
from ._hyper import _Hyper, deserialize_value, serialize_value
from ._param_groups import _NOTHING, ParamGroup, _chosen, _group_value, _params_spec, _path, _Positions
from ._torch_methods import TorchMethods

__all__ = ["SGD", "Adam", "AdamW"]

_LR = 1e-3  # torch's default rate; compared by identity to tell "lr not given"


def _register(name):
    # "keras_optx>torch.Adam" stays distinct from the Flux rule "keras_optx>ADAM".
    return keras.saving.register_keras_serializable(package="keras_optx", name=f"torch.{name}")


class _WeightDecay(_Hyper):
    """torch's λ, a hyperparameter, in the attribute where Keras's base class keeps its own
    decay: Keras's `__init__` writes None there (its decay off), which is ignored."""

    def __set__(self, rule, value):
        if value is None and self.name not in rule.__dict__.get("_hyper_values", {}):
            return
        super().__set__(rule, value)


def _may_decay(wd):
    """Whether `weight_decay` set to `wd` makes a decay term: not for a number 0."""
    return not (isinstance(wd, (int, float)) and wd == 0)


class _TorchRule(TorchMethods, Rule):
    """torch's `lr`/`weight_decay`/`maximize` handling shared by SGD, Adam and AdamW."""

    low_precision_refusal = (
        "keras_optx.torch optimizers keep torch.optim's state, in the variables' dtype; for "
        "low-precision moments use keras_optx.ADAM or ADAMW"
    )
    weight_decay = _WeightDecay("weight_decay")

    def __init__(self, lr, learning_rate, param_groups=None, **kwargs):
        if learning_rate is not None:
            if lr is not _LR:
                raise ValueError(
                    f"Pass the rate once, as `lr` (torch's name) or `learning_rate` (Keras's); "
                    f"received lr={lr!r} and learning_rate={learning_rate!r}."
                )
            lr = learning_rate
        if isinstance(lr, numbers.Real):
            lr = check.nonnegative("lr", lr)
        hyper = {k: kwargs[k] for k in self.hyperparameters if k in kwargs}
        super().__init__(lr, **kwargs)
        object.__setattr__(self, "_group_specs", None)  # past Keras's tracker: it would adopt the variables listed
        self._partition = None
        if param_groups is not None:
            self._group(param_groups, {"lr": lr, **hyper})

    @property
    def param_groups(self):
        """torch's `optimizer.param_groups`: one live dict per group (the groups given, then the
        variables no group matches, whose values are the optimizer's own; one group without
        `param_groups=`). Reading a key reads the value the step uses; writing one
        (`g["lr"] *= 0.1`) is the checked write of `opt.<name> = …` on that group: refused before
        anything is written, acting at the next step, saved."""
        specs = self._group_specs or []
        return [ParamGroup(self, i) for i in range(len(specs))] + [ParamGroup(self, None)]

    @property
    def lr(self):
        """torch's name of the rate: `learning_rate`."""
        return self.learning_rate

    @lr.setter
    def lr(self, value):
        self.learning_rate = value

    def _follow_rate(self, value):
        # The defaults' rate reaches every group without its own "lr", as hyperparameters do.
        partition = self.__dict__.get("_partition")
        if partition is not None:
            for member, spec in zip(partition.rules, self._group_specs + [{}]):
                if "lr" not in spec:
                    member.learning_rate = value

    @property
    def torch_weight_decay(self):
        """`weight_decay` (torch's λ), by the name earlier versions kept it under."""
        return self.weight_decay

    def _apply_weight_decay(self, variables):
        """Keras's own decoupled decay: never (`weight_decay` is torch's, in the formula)."""

    # torch param groups ------------------------------------------------------------
    def _group(self, param_groups, defaults):
        """Route each group's variables to a copy of this optimizer with the group's values: an
        internal `Partition` (its torch kernel runs each copy's fused kernel on its group)."""
        from .partition import Partition

        if isinstance(param_groups, dict) or not isinstance(param_groups, (list, tuple)):
            raise TypeError(
                f"`param_groups` must be a list of dicts, as torch's; received {type(param_groups).__name__}."
            )
        accepted = ["params", *defaults]
        groups, pairs = [], []
        object.__setattr__(self, "_resolve", [])  # (group index, variables or positions) for patterns made at build
        for i, group in enumerate(param_groups):
            if not isinstance(group, dict):
                raise TypeError(f"`param_groups[{i}]` must be a dict; received {group!r}.")
            unknown = [k for k in group if k not in accepted]
            if unknown:
                raise ValueError(
                    f"`param_groups[{i}]` has unknown key(s) {unknown}; {type(self).__name__} accepts {accepted}."
                )
            if "params" not in group:
                raise ValueError(f"`param_groups[{i}]` needs a \"params\" key (a regex on variable.path or a list of variables).")
            params = _params_spec(group["params"], i)
            values = {k: v for k, v in group.items() if k != "params"}
            member = type(self)(**{**defaults, **values})  # the constructor's checks refuse bad values
            groups.append({"params": params, **values})
            if not isinstance(params, str):
                self._resolve.append((i, params))
            pairs.append((params if isinstance(params, str) else _NOTHING, member))
        pairs.append((".*", type(self)(**defaults)))
        # Each group has its own rate (a saved variable), as torch's groups: the defaults' rate reaches
        # those without their own "lr" when set (`learning_rate`'s setter).
        object.__setattr__(self, "_group_specs", groups)
        self._partition = Partition(pairs)
        # Refused at build, naming the group: one that routes nothing; as torch, a variable listed in two groups.
        self._partition._key_name = "param_groups"
        self._partition._disjoint = [k for k, g in enumerate(param_groups) if not isinstance(g["params"], str)]
        self._partition._claim(self)
        self._torch_kernel = _grouped_kernel

    def __setattr__(self, name, value):
        # With groups, a hyperparameter set on the optimizer (`opt.eps = …`, `adjust`) is the default
        # group's: it reaches every group that does not set its own, as the rate does.
        partition = self.__dict__.get("_partition")
        if partition is not None and name in self.hyperparameters:
            from ._hyper import _checked

            members = [m for m, g in zip(partition.rules, self._group_specs + [{}]) if name not in g]
            for member in members:
                _checked(member, name, value)  # all checked before any is set
            for member in members:
                setattr(member, name, value)
        super().__setattr__(name, value)

    def _parts(self):
        partition = self.__dict__.get("_partition")
        return None if partition is None else partition.rules

    def _slot_owners(self, variables):
        self._resolve_groups(variables)
        if self._partition is None:
            return super()._slot_owners(variables)
        return self._partition._slot_owners(variables)

    def _resolve_groups(self, variables):
        """At build (alone or as a chain member): groups given as variables (or, from a saved file, as
        positions in the built list) route by the exact paths of these variables."""
        if self._partition is None or "_built_order" in self.__dict__:
            return
        for i, params in self._resolve:
            chosen = _chosen(params, variables, i)
            self._partition.patterns[i] = re.compile("^(?:" + "|".join(re.escape(_path(v)) for v in chosen) + ")$")
        object.__setattr__(self, "_built_order", list(variables))

    def _build_state(self, variables):
        self._resolve_groups(variables)
        made = super()._build_state(variables)
        if self._partition is not None:
            made += self._partition._build_state(variables)
            for member in self._partition.rules:  # each group's rate, saved (format 4)
                for v in member._rate_variables():
                    v._keras_optx_added_in = 4
                    made.append(v)
        return made

    def _build_hyper(self):
        # Whether steps have a decay term is fixed at build: a `weight_decay` of 0 then compiles
        # none (a pass over x less; on jax and tensorflow a value read from the hyperparameter
        # variable would otherwise cost that pass at every step), as torch's momentum 0 keeps no buffer.
        if "_decay_term" not in self.__dict__:
            object.__setattr__(self, "_decay_term", _may_decay(self._static("weight_decay")))
        return super()._build_hyper()

    def _decays(self):
        """Whether this step has a decay term (see `_build_hyper`)."""
        term = self.__dict__.get("_decay_term")
        return _may_decay(self._static("weight_decay")) if term is None else term

    def _hyper_check(self, name, value):
        if name == "weight_decay" and self.__dict__.get("_decay_term") is False and _may_decay(value):
            raise ValueError(
                f"`weight_decay` was 0 when the optimizer was built, so its steps have no decay term; it cannot "
                f"become {value!r} now. Construct it with the weight_decay (or a schedule) to adjust during training."
            )

    def _transform(self, g, x, state, t, step):
        if self._partition is None:
            return super()._transform(g, x, state, t, step)
        return self._partition._transform(g, x, state, t, step)

    def get_config(self):
        config = super().get_config()
        if self._group_specs is not None:  # each group's own keys, with the values its step uses now
            config["param_groups"] = [
                {"params": self._saved_params(i, spec["params"]),
                 **{k: serialize_value(_group_value(member, k)) for k in spec if k != "params"}}
                for i, (spec, member) in enumerate(zip(self._group_specs, self._partition.rules))
            ]
        return config

    def _saved_params(self, i, params):
        """A group's "params" as saved: a regex as given; variables as their positions in the list
        the optimizer was built with (`model.trainable_variables`' order, which a `.keras` file keeps,
        unlike paths); before build, a regex of their paths."""
        if isinstance(params, str):
            return params
        built = self.__dict__.get("_built_order")
        if isinstance(params, _Positions):
            return {"positions": list(params)}
        if built is not None:
            return {"positions": [next(j for j, b in enumerate(built) if b is v) for v in params]}
        return "^(?:" + "|".join(re.escape(_path(v)) for v in params) + ")$"

    @classmethod
    def from_config(cls, config, custom_objects=None):
        groups = config.get("param_groups")
        if groups is not None:
            config = dict(config, param_groups=[
                {k: v if k == "params" else deserialize_value(v, custom_objects) for k, v in group.items()} for group in groups
            ])
        return super().from_config(config, custom_objects=custom_objects)

    def __repr__(self):
        lr = self._learning_rate
        lr = float(lr.numpy()) if isinstance(lr, keras.Variable) else lr
        args = [f"lr={lr!r}"] + [f"{k}={getattr(self, k)!r}" for k in self.hyperparameters]  # torch's order
        return f"{type(self).__name__}({', '.join(args)})"


def _grouped_kernel(rule, xs, gs, slots, t, lr):
    # torch backend only: each group's fused kernel, by the internal Partition's kernel.
    from ._backends.torch import kernel_of

    return kernel_of(rule._partition)(rule._partition, xs, gs, slots, t, lr)


@_register("SGD")
class SGD(_TorchRule):
    """Stochastic gradient descent as `torch.optim.SGD` (and `dtorch.optim.SGD`).

    g ← g + λ·x  (λ = weight_decay, coupled L2)
    b ← g at step 1;  afterwards b ← μ·b + (1−τ)·g  (μ = momentum, τ = dampening)
    g ← g + μ·b if nesterov, else g ← b  (when μ > 0; with μ = 0 no buffer is kept)
    x ← x − lr·g

    Args:
        lr: the learning rate, ≥ 0, default 1e-3 (a float, a `LearningRateSchedule`
            or a callable). `learning_rate=` is accepted as Keras's alias.
        momentum: μ ≥ 0, default 0.
        dampening: τ ∈ [0, 1], default 0 (torch does not check it; this does).
        weight_decay: λ ≥ 0, default 0: L2 added to the gradient, as torch. Like every
            numeric hyperparameter here (momentum, dampening, betas, eps) a number, a
            `LearningRateSchedule` (called with the 0-based update count) or a callable;
            `opt.weight_decay = λ` or `opt.adjust(weight_decay=λ)` acts at the next step.
        nesterov: Nesterov momentum, default False; needs μ > 0 and τ = 0, as torch.
        maximize: ascend instead of descend (g ← −g first), default False.
        dampen_first_step: default False, torch's rule: the buffer starts as g. True
            starts it at 0 and dampens from the first step, b ← μ·b + (1−τ)·g always.
            With τ = μ this is dtorch's SGD, `v ← m·v + (1−m)·g; x ← x − lr·v`,
            whose first step is (1−m)·lr·g; torch's `dampening=m` alone cannot
            give that, since torch skips dampening on step 1. A flag on this class
            (rather than a separate class) keeps one SGD with torch's names.
        param_groups: torch's param groups, default None: a list of dicts
            `{"params": <regex re.search'ed on variable.path, or a list of variables>,
            <any of "lr", "weight_decay", "momentum", "dampening", "nesterov", "maximize",
            "dampen_first_step">}`. Each group's values replace the constructor's for its
            variables; the first group whose "params" matches a variable wins; variables no
            group matches use the constructor's values (torch's default group). A key not listed
            is refused, and a value is checked as the constructor checks it. The rate Keras
            callbacks and `optimizer.learning_rate` steer is the constructor's `lr`, shared by
            every group without its own "lr"; a group with its own "lr" keeps it. Likewise a
            hyperparameter set on the optimizer (`opt.weight_decay = …`, `opt.momentum = …`,
            `adjust`) reaches the groups that do not set their own, and not the others. Saved in
            `get_config` (a list of variables as their positions in the list the optimizer was built
            with, which a `.keras` file keeps). `opt.param_groups` is live, as torch's: one dict per
            group, then the optimizer's own (one group without `param_groups=`); `g["lr"] *= 0.1`
            acts at the next step, checked as the attribute (docs/hyperparameters.md). On the torch
            backend each group runs its own fused kernel. `Adam` and `AdamW` take the same.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay` (`clipnorm`,
            `use_ema`, `gradient_accumulation_steps`, …), and `rounding="nearest"` (`"kahan"`,
            `"stochastic"`: the write into bfloat16/float16 variables, see `Rule`).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = SGD(0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)  # torch.optim.SGD(params, 0.1, …)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))
        [0.5388 2.4605]
        >>> opt = SGD(0.01, momentum=0.9, dampening=0.9, dampen_first_step=True)  # dtorch.optim.SGD(params, lr=0.01, momentum=0.9)

    Equivalences (constant lr): `SGD(η, momentum=ρ)` = Flux `Momentum(η, ρ)`;
    `SGD(η, momentum=ρ, nesterov=True)` = Flux `Nesterov(η, ρ)`;
    `SGD(η, momentum=ρ, weight_decay=λ)` = `Optimiser(WeightDecay(λ), Momentum(η, ρ))`;
    `keras.optimizers.SGD(η, momentum=ρ)` is the same as well. With a changing lr they
    differ: torch's buffer holds gradients (a new lr rescales the whole step), Flux's
    and Keras's velocity holds η·g. Keras's `weight_decay=` is decoupled (x ← x − η·λ·x).
    Robbins & Monro 1951; Polyak 1964; Sutskever et al. 2013 (Nesterov form).
    """

    hyperparameters = {  # torch's order: lr, momentum, dampening, weight_decay, nesterov
        "momentum": check.nonnegative,
        "dampening": check.closed_unit,
        "weight_decay": check.nonnegative,
        "nesterov": check.flag,
        "maximize": check.flag,
        "dampen_first_step": check.flag,
    }

    def __init__(
        self,
        lr=_LR,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        *,
        maximize=False,
        dampen_first_step=False,
        learning_rate=None,
        param_groups=None,
        **kwargs,
    ):
        super().__init__(
            lr,
            learning_rate,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            dampen_first_step=dampen_first_step,
            param_groups=param_groups,
            **kwargs,
        )
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(
                "`nesterov=True` requires `momentum` > 0 and `dampening` = 0 (as torch.optim.SGD); "
                f"received momentum={self.momentum}, dampening={self.dampening}."
            )

    def _hyper_check(self, name, value):
        super()._hyper_check(name, value)
        # After build: the momentum buffer exists or not (momentum > 0 or 0 at build), as in torch.
        momentum = value if name == "momentum" else self._static("momentum")
        dampening = value if name == "dampening" else self._static("dampening")
        if name == "momentum" and (value == 0) != (self._static("momentum") == 0):
            raise ValueError(
                f"`momentum` was {self._static('momentum')} when the optimizer was built, so a momentum buffer "
                f"{'was not' if self._static('momentum') == 0 else 'was'} made; it cannot become {value} now. "
                "Choose momentum > 0 (or 0) before training starts."
            )
        if self.nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "`nesterov=True` requires `momentum` > 0 and `dampening` = 0 (as torch.optim.SGD); "
                f"received momentum={momentum}, dampening={dampening}."
            )

    @property
    def slots(self):
        # torch keeps no buffer without momentum; neither do we.
        return {"momentum_buffer": 0.0} if self._static("momentum") else {}

    def delta(self, ops, g, x, s, t, lr):
        if self.maximize:
            g = -g
        if self._decays():
            g = _plus_decay(g, x, self.weight_decay, self._decay_mask())
        if "momentum_buffer" not in s:  # momentum 0 when built: no buffer
            return lr * g, {}
        keep = 1.0 - self.dampening
        if not self.dampen_first_step:
            # torch sets b ← g on step 1; b is still 0 then, so only g's factor differs.
            keep = ops.where(t > 1, keep, 1.0)
        buf = self.momentum * s.momentum_buffer + keep * g
        d = g + self.momentum * buf if self.nesterov else buf
        return lr * d, {"momentum_buffer": buf}


class _Adam(_TorchRule):
    hyperparameters = {  # torch's order: lr, betas, eps, weight_decay, amsgrad
        "betas": check.betas,
        "eps": check.nonnegative,
        "weight_decay": check.nonnegative,
        "amsgrad": check.flag,
        "maximize": check.flag,
    }
    _decoupled = False

    def __init__(self, lr, betas, eps, weight_decay, amsgrad, maximize, learning_rate, param_groups=None, **kwargs):
        super().__init__(
            lr, learning_rate, param_groups, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            maximize=maximize, **kwargs
        )

    @property
    def slots(self):
        names = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())
        return dict.fromkeys(names, 0.0)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.betas
        wd = self.weight_decay
        decays = self._decays()
        if self.maximize:
            g = -g
        mask = self._decay_mask() if decays else None
        if decays and not self._decoupled:
            g = _plus_decay(g, x, wd, mask)
        m = b1 * s.exp_avg + (1 - b1) * g
        v = b2 * s.exp_avg_sq + (1 - b2) * g * g
        new = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            v = new["max_exp_avg_sq"] = ops.maximum(s.max_exp_avg_sq, v)
        # torch's lr/(1−β₁ᵗ) · m/(√v/c + ε) with c = √(1−β₂ᵗ), as lr·c/(1−β₁ᵗ) · m/(√v + ε·c): the
        # corrections as scalars, one per-element operation fewer (tensorflow XLA, 4×2.5M: 1.13–1.47x → 0.98–1.03x Keras's Adam).
        c = ops.sqrt(ops.one_minus_pow(b2, t))
        step = (lr * c / ops.one_minus_pow(b1, t)) * m / (ops.sqrt(v) + self.eps * c)
        if decays and self._decoupled:
            step = _plus_decay(step, x, lr * wd, mask)
        return step, new


@_register("Adam")
class Adam(_Adam):
    """Adam as `torch.optim.Adam` (and `dtorch.optim.Adam`), coupled L2 weight decay.

    g ← g + λ·x;  m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g²
    v̂ ← max(v̂, v) if amsgrad (v̂ starts at 0), and v̂ replaces v below
    x ← x − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)

    Args:
        lr: the learning rate, ≥ 0, default 1e-3 (float, schedule or callable);
            `learning_rate=` is accepted as Keras's alias.
        betas: (β₁, β₂), each in [0, 1), default (0.9, 0.999).
        eps: ε ≥ 0, default 1e-8, added outside the square root.
        weight_decay: λ ≥ 0, default 0: L2 added to the gradient before the moments; a
            number, schedule or callable, assignable (`opt.weight_decay = λ`) as `betas` and `eps`.
        amsgrad: keep the running maximum of v, with torch's bias correction, default False.
        maximize: ascend instead of descend, default False.
        param_groups: torch's param groups, default None, as for `SGD`: dicts `{"params": <regex
            on variable.path, or a list of variables>, <any of "lr", "weight_decay", "betas",
            "eps", "amsgrad", "maximize">}`; first match wins, the rest use these values.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay`, and `rounding="nearest"`
            (`"kahan"`, `"stochastic"`: the write into bfloat16/float16 variables, see `Rule`).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = Adam(0.1, betas=(0.9, 0.98), weight_decay=1e-4)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))  # torch.optim.Adam(params, 0.1, …)
        [0.8 2.2]

    Equivalences: `Adam(η, β, ε)` = Flux `ADAM(η, β, ε)`;
    `Adam(η, β, ε, weight_decay=λ)` = `Optimiser(WeightDecay(λ), ADAM(η, β, ε))` (the
    decay passes through Adam's scaling; for the decoupled kind use `AdamW`).
    `Adam(amsgrad=True)` bias-corrects and starts at 0, unlike Flux `AMSGrad`.
    `keras.optimizers.Adam` differs: ε = 1e-7 by default and applied as ε·√(1−β₂ᵗ).
    Kingma & Ba 2014, arXiv:1412.6980; Reddi, Kale & Kumar 2018 (AMSGrad).
    """

    def __init__(
        self,
        lr=_LR,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        *,
        maximize=False,
        learning_rate=None,
        param_groups=None,
        **kwargs,
    ):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, learning_rate, param_groups=param_groups, **kwargs)


@_register("AdamW")
class AdamW(_Adam):
    """AdamW as `torch.optim.AdamW`: Adam with decoupled, lr-scaled weight decay.

    x ← x·(1 − lr·λ), then the Adam step of `Adam` (without L2):
    m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g²;  (v̂ ← max(v̂, v) if amsgrad)
    x ← x − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)

    Args:
        lr: the learning rate, ≥ 0, default 1e-3; `learning_rate=` is Keras's alias.
        betas: (β₁, β₂), each in [0, 1), default (0.9, 0.999).
        eps: ε ≥ 0, default 1e-8.
        weight_decay: λ ≥ 0, default 1e-2 (torch's default), multiplied by lr; a number,
            schedule or callable, assignable (`opt.weight_decay = λ`) as `betas` and `eps`.
        amsgrad: as `Adam`, default False.
        maximize: ascend instead of descend, default False.
        param_groups: torch's param groups, default None, as for `SGD`: dicts `{"params": <regex
            on variable.path, or a list of variables>, <any of "lr", "weight_decay", "betas",
            "eps", "amsgrad", "maximize">}`; first match wins, the rest use these values.
        **kwargs: any `keras.optimizers.Optimizer` keyword except `weight_decay`, and `rounding="nearest"`
            (`"kahan"`, `"stochastic"`: the write into bfloat16/float16 variables, see `Rule`).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = AdamW(0.1, weight_decay=0.05)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))  # x·(1 − 0.1·0.05), then Adam's step of 0.1
        [0.7905 2.1796]

        torch's param groups: no decay and a higher rate for biases (torch.optim.AdamW(groups, 0.1, …)):

        >>> w, b = keras.Variable([1.0, 2.0], name="kernel"), keras.Variable([1.0], name="bias")
        >>> opt = AdamW(0.1, weight_decay=0.5, param_groups=[{"params": "bias", "weight_decay": 0.0, "lr": 0.2}])
        >>> opt.apply([np.array([1.0, -1.0], "float32"), np.ones(1, "float32")], [w, b])
        >>> print(np.round(keras.ops.convert_to_numpy(w), 4), np.round(keras.ops.convert_to_numpy(b), 4))
        [0.85 2.  ] [0.8]

    Equivalences (constant lr η): `AdamW(η, β, ε, λ)` = Flux `ADAMW(η, β, decay=η·λ, ε)` =
    `Optimiser(ADAM(η, β, ε), WeightDecay(η·λ))`: Flux's decay is not multiplied by η,
    torch's is, so under a schedule torch's decay follows the rate and Flux's does not.
    `keras.optimizers.AdamW` decays the same way but uses Keras's ε placement.
    Loshchilov & Hutter 2019, arXiv:1711.05101.
    """

    _decoupled = True

    def __init__(
        self,
        lr=_LR,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        *,
        maximize=False,
        learning_rate=None,
        param_groups=None,
        **kwargs,
    ):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, learning_rate, param_groups=param_groups, **kwargs)
