"""One table of every rule, transform, chain and schedule configuration under test.

Each row (`Case`) pairs a keras_optx optimizer with its NumPy float64 oracle (tests/reference.py)
and says which tests it takes part in; the tests read their lists from here:

- `reference`: the oracle; every row with one is compared with it step by step, eager and
  compiled, and through config and `.keras` files (tests/test_conformance.py).
- `fit`: also trained with `model.fit` (test_conformance.py); off where another row covers it.
- `kernel`: on torch it runs a registered kernel, held to its formula step by step, slots included
  (tests/test_fast_paths.py). Rows marked so use non-default hyperparameters, so a kernel that
  ignored one would differ. `varying_rate`: that test changes the rate every step.
- `reliability`: `Reliable(make(lr, **keras_kwargs), lr, settable, schedules)`, the configuration
  that tests/test_reliability.py resumes, ports across backends, trains under every Keras keyword
  and distributes (`settable`: whether `optimizer.learning_rate = value` is allowed; `schedules`:
  whether the rule takes a schedule or callable as its rate, not Rprop, whose rate is only its
  initial step size).

`BAD` is the table of refused hyperparameters (ValueError/TypeError naming the argument);
`COMPAT` the torch-named configurations compared with torch.optim or dtorch's formulas, each saying
whether it also runs compiled (tests/test_torch_compat.py), and `COMPAT_GROUPS` the param-group
configurations compared with torch.optim's groups (tests/test_torch_param_groups.py); both build
from `TORCH_CLASSES`.

Adding a rule: its row(s) here, its oracle in tests/reference.py, and its refused values in `BAD`.
"""

import itertools
from collections import namedtuple
from dataclasses import dataclass
from typing import Callable, Optional

import keras

import keras_optx as ox
import keras_optx.torch as oxt
import reference as ref

Reliable = namedtuple("Reliable", "make lr settable schedules", defaults=(True,))


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable
    reference: Optional[Callable] = None
    fit: bool = True
    kernel: bool = False
    varying_rate: bool = False
    reliability: Optional[Reliable] = None

    def __repr__(self):
        return self.id


def _rate(make, lr, settable=True, schedules=True):
    return Reliable(make, lr, settable, schedules)


RULES = [
    # Flux defaults, then a non-default setting of each rule.
    Case("Descent", lambda: ox.Descent(), lambda: ref.Descent(),
         reliability=_rate(lambda lr, **kw: ox.Descent(lr, **kw), 0.1)),
    Case("Descent(0.3)", lambda: ox.Descent(0.3), lambda: ref.Descent(0.3), fit=False, kernel=True, varying_rate=True),
    Case("Momentum", lambda: ox.Momentum(), lambda: ref.Momentum(),
         reliability=_rate(lambda lr, **kw: ox.Momentum(lr, 0.9, **kw), 0.05)),
    Case("Momentum(0.05,0.5)", lambda: ox.Momentum(0.05, 0.5), lambda: ref.Momentum(0.05, 0.5), fit=False,
         kernel=True, varying_rate=True),
    Case("Nesterov", lambda: ox.Nesterov(), lambda: ref.Nesterov(),
         reliability=_rate(lambda lr, **kw: ox.Nesterov(lr, 0.9, **kw), 0.05)),
    Case("Nesterov(0.003,0.95)", lambda: ox.Nesterov(0.003, 0.95), lambda: ref.Nesterov(0.003, 0.95), fit=False,
         kernel=True, varying_rate=True),
    Case("RMSProp", lambda: ox.RMSProp(), lambda: ref.RMSProp(),
         reliability=_rate(lambda lr, **kw: ox.RMSProp(lr, 0.9, **kw), 0.01)),
    Case("RMSProp(0.002,0.95,eps=1e-3)", lambda: ox.RMSProp(0.002, 0.95, epsilon=1e-3),
         lambda: ref.RMSProp(0.002, 0.95, 1e-3), fit=False, kernel=True),
    Case("ADAM", lambda: ox.ADAM(), lambda: ref.ADAM(), reliability=_rate(lambda lr, **kw: ox.ADAM(lr, **kw), 0.01)),
    Case("ADAM(0.001,(0.9,0.8))", lambda: ox.ADAM(0.001, (0.9, 0.8)), lambda: ref.ADAM(0.001, (0.9, 0.8)), fit=False,
         kernel=True, varying_rate=True),
    # β₂ = 0.8: ρₜ passes 4 at t = 5, so both of RADAM's branches run within each test.
    Case("RADAM", lambda: ox.RADAM(), lambda: ref.RADAM(),
         reliability=_rate(lambda lr, **kw: ox.RADAM(lr, (0.9, 0.8), **kw), 0.01)),
    Case("RADAM(0.01,(0.9,0.8))", lambda: ox.RADAM(0.01, (0.9, 0.8)), lambda: ref.RADAM(0.01, (0.9, 0.8)), fit=False,
         kernel=True, varying_rate=True),
    Case("AdaMax", lambda: ox.AdaMax(), lambda: ref.AdaMax(), reliability=_rate(lambda lr, **kw: ox.AdaMax(lr, **kw), 0.01)),
    Case("AdaMax(0.002,(0.9,0.995))", lambda: ox.AdaMax(0.002, (0.9, 0.995)),
         lambda: ref.AdaMax(0.002, (0.9, 0.995)), fit=False, kernel=True, varying_rate=True),
    Case("ADAGrad", lambda: ox.ADAGrad(), lambda: ref.ADAGrad(), reliability=_rate(lambda lr, **kw: ox.ADAGrad(lr, **kw), 0.1)),
    Case("ADAGrad(0.01)", lambda: ox.ADAGrad(0.01), lambda: ref.ADAGrad(0.01), fit=False, kernel=True),
    Case("ADADelta", lambda: ox.ADADelta(), lambda: ref.ADADelta(),
         reliability=_rate(lambda lr, **kw: ox.ADADelta(0.9, learning_rate=lr, **kw), 1.0)),
    Case("ADADelta(0.89)", lambda: ox.ADADelta(0.89), lambda: ref.ADADelta(0.89), fit=False, kernel=True, varying_rate=True),
    Case("AMSGrad", lambda: ox.AMSGrad(), lambda: ref.AMSGrad(), reliability=_rate(lambda lr, **kw: ox.AMSGrad(lr, **kw), 0.01)),
    Case("AMSGrad(0.001,(0.89,0.995))", lambda: ox.AMSGrad(0.001, (0.89, 0.995)),
         lambda: ref.AMSGrad(0.001, (0.89, 0.995)), fit=False, kernel=True),
    Case("NADAM", lambda: ox.NADAM(), lambda: ref.NADAM(), reliability=_rate(lambda lr, **kw: ox.NADAM(lr, **kw), 0.01)),
    Case("NADAM(0.002,(0.89,0.995))", lambda: ox.NADAM(0.002, (0.89, 0.995)),
         lambda: ref.NADAM(0.002, (0.89, 0.995)), fit=False, kernel=True, varying_rate=True),
    # β₂ = 0 takes the formula's own branch (its √(β₂v/(1−β₂ᵗ)) term vanishes).
    Case("NADAM(1e-5,(0.9,0.0))", lambda: ox.NADAM(1e-5, (0.9, 0.0)), lambda: ref.NADAM(1e-5, (0.9, 0.0)), fit=False),
    Case("OADAM", lambda: ox.OADAM(), lambda: ref.OADAM(), reliability=_rate(lambda lr, **kw: ox.OADAM(lr, **kw), 0.01)),
    Case("OADAM(0.01,(0.9,0.995),eps=1e-6)", lambda: ox.OADAM(0.01, (0.9, 0.995), 1e-6),
         lambda: ref.OADAM(0.01, (0.9, 0.995), 1e-6), fit=False, kernel=True, varying_rate=True),
    Case("AdaBelief", lambda: ox.AdaBelief(), lambda: ref.AdaBelief(),
         reliability=_rate(lambda lr, **kw: ox.AdaBelief(lr, **kw), 0.01)),
    Case("AdaBelief(0.002,(0.8,0.9))", lambda: ox.AdaBelief(0.002, (0.8, 0.9)),
         lambda: ref.AdaBelief(0.002, (0.8, 0.9)), fit=False, kernel=True, varying_rate=True),
    Case("Lion", lambda: ox.Lion(), lambda: ref.Lion(), reliability=_rate(lambda lr, **kw: ox.Lion(lr, **kw), 0.003)),
    Case("Lion(3e-4,(0.95,0.98))", lambda: ox.Lion(3e-4, (0.95, 0.98)), lambda: ref.Lion(3e-4, (0.95, 0.98)), fit=False,
         kernel=True, varying_rate=True),
    Case("Rprop", lambda: ox.Rprop(), lambda: ref.Rprop(),
         reliability=_rate(lambda lr, **kw: ox.Rprop(lr, **kw), 0.01, schedules=False)),
    # η₀ below Γ₋: clamped up at the first step; ℓ₊ = 2 reaches Γ₊ = 0.01 within the test
    Case("Rprop(1e-7,(0.3,2.0),(1e-6,0.01))", lambda: ox.Rprop(1e-7, (0.3, 2.0), (1e-6, 0.01)),
         lambda: ref.Rprop(1e-7, (0.3, 2.0), (1e-6, 0.01)), fit=False),
    Case("ADAMW", lambda: ox.ADAMW(), lambda: ref.ADAMW(),
         reliability=_rate(lambda lr, **kw: ox.ADAMW(lr, decay=1e-2, **kw), 0.01)),
    Case("ADAMW(0.001,(0.89,0.995),0.1)", lambda: ox.ADAMW(0.001, (0.89, 0.995), 0.1),
         lambda: ref.ADAMW(0.001, (0.89, 0.995), 0.1), fit=False, kernel=True, varying_rate=True),
    # 2024 rules (keras_optx/recent.py, prodigy.py): defaults, then every hyperparameter away from its default.
    Case("ADOPT", lambda: ox.ADOPT(), lambda: ref.ADOPT(), reliability=_rate(lambda lr, **kw: ox.ADOPT(lr, **kw), 0.01)),
    Case("ADOPT(0.01,(0.8,0.99),eps=1e-3)", lambda: ox.ADOPT(0.01, (0.8, 0.99), 1e-3),
         lambda: ref.ADOPT(0.01, (0.8, 0.99), 1e-3), fit=False, kernel=True, varying_rate=True),
    Case("AdEMAMix", lambda: ox.AdEMAMix(), lambda: ref.AdEMAMix(),
         reliability=_rate(lambda lr, **kw: ox.AdEMAMix(lr, **kw), 0.01)),
    Case("AdEMAMix(0.01,(0.8,0.99,0.995),2.0,eps=1e-6)", lambda: ox.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 1e-6),
         lambda: ref.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 1e-6), fit=False, kernel=True, varying_rate=True),
    # The paper's warm-ups as schedules, T = 8 < the test's 20 steps: both ramps end within it.
    Case("AdEMAMix(warm-ups)", lambda: ox.AdEMAMix(0.01, (0.9, 0.999, ox.AdEMAMixBeta3Warmup(0.9, 0.999, 8)),
                                                  alpha=ox.AdEMAMixAlphaWarmup(5.0, 8)),
         lambda: ref.AdEMAMix(0.01, (0.9, 0.999, ref.ademamix_beta3(0.9, 0.999, 8)), ref.ademamix_alpha(5.0, 8)),
         fit=False),
    Case("Prodigy", lambda: ox.Prodigy(), lambda: ref.Prodigy(), reliability=_rate(lambda lr, **kw: ox.Prodigy(lr, **kw), 1.0)),
    Case("Prodigy(0.5,β,β₃,ϵ,d₀,d_coef,growth,bias,safeguard,wd)",
         lambda: ox.Prodigy(0.5, (0.8, 0.99), 0.98, 1e-6, 1e-4, 2.0, 1.5, True, True, weight_decay=0.01),
         lambda: ref.Prodigy(0.5, (0.8, 0.99), 0.98, 1e-6, 1e-4, 2.0, 1.5, True, True, 0.01), fit=False, kernel=True),
    # β₁ = 0: prodigyopt keeps no m and steps by d·g with the updated d. d̂ hangs on x₀ − x, a difference of
    # float32 values: with d₀ = 1e-3 d grows ~30x in 20 steps and float32 runs stray ~6x this test's
    # tolerance from the float64 path (prodigyopt's float32 run as much); d₀ = 1e-4 stays within 0.25x.
    Case("Prodigy(β₁=0,d₀=1e-4)", lambda: ox.Prodigy(beta=(0.0, 0.999), d0=1e-4),
         lambda: ref.Prodigy(beta=(0.0, 0.999), d0=1e-4), fit=False, kernel=True),
    # Muon takes matrices only: its rows route the (3, 4) kernel and the (2, 3, 2) conv kernel (as (6, 2)) to
    # it, the rest to ADAM. Newton–Schulz in float32, so float32 tolerance holds (bfloat16: tests/test_matrix.py).
    Case("Partition(kernel:Muon,.*:ADAM)",
         lambda: ox.Partition({"kernel": ox.Muon(0.02, ns_dtype="float32"), ".*": ox.ADAM(0.01)}),
         lambda: ref.Partition([("kernel", ref.Muon(0.02)), (".*", ref.ADAM(0.01))], PATHS),
         # The reliability tests' variables are a (3, 2) matrix and a vector, not named "kernel": routed by rank.
         # Muon's rate is fixed: the Partition's `learning_rate` is its last rule's (ADAM's), which those tests set.
         reliability=_rate(lambda lr, **kw: ox.Partition({ox.matrices(): ox.Muon(0.02, ns_dtype="float32"), ".*": ox.ADAM(lr)},
                                                         **kw), 0.01)),
    Case("Partition(kernel:Muon(0.05,0.8,nesterov=False,ns_steps=3,match_rms_adamw),.*:Descent)",
         lambda: ox.Partition({"kernel": ox.Muon(0.05, 0.8, False, 3, (3.0, -3.2, 1.2), 1e-6, "match_rms_adamw",
                                                  "float32"), ".*": ox.Descent(0.1)}),
         lambda: ref.Partition([("kernel", ref.Muon(0.05, 0.8, False, 3, (3.0, -3.2, 1.2), 1e-6, "match_rms_adamw")),
                                (".*", ref.Descent(0.1))], PATHS), fit=False),
    # SOAP takes rank ≤ 2 (the (2, 3, 2) conv kernel to ADAM, and the biases: a key that routes a variable of
    # every test model, fit's and the reliability tests' included, which have no conv kernel); eigenbases refreshed at t = 4, 7, …, 19.
    Case("Partition(conv|bias:ADAM,.*:SOAP(0.01,frequency=3))",
         lambda: ox.Partition({"conv|bias": ox.ADAM(0.01), ".*": ox.SOAP(0.01, precondition_frequency=3)}),
         lambda: ref.Partition([("conv|bias", ref.ADAM(0.01)), (".*", ref.SOAP(0.01, frequency=3))], PATHS),
         # The reliability tests' variables are of rank ≤ 2: SOAP takes them all.
         reliability=_rate(lambda lr, **kw: ox.SOAP(lr, precondition_frequency=2, **kw), 0.01)),
    Case("ScheduleFreeAdamW", lambda: ox.ScheduleFreeAdamW(), lambda: ref.ScheduleFree(0.0025, 0.9, 0.999),
         reliability=_rate(lambda lr, **kw: ox.ScheduleFreeAdamW(lr, warmup_steps=2, **kw), 0.01)),
    Case("ScheduleFreeAdamW(0.01,(0.85,0.99),wd=0.1,warmup=5,r=1,p=1)",
         lambda: ox.ScheduleFreeAdamW(0.01, (0.85, 0.99), 1e-6, weight_decay=0.1, warmup_steps=5, r=1.0, weight_lr_power=1.0),
         lambda: ref.ScheduleFree(0.01, 0.85, 0.99, 1e-6, wd=0.1, warmup=5, r=1.0, power=1.0), fit=False,
         kernel=True, varying_rate=True),
    Case("ScheduleFreeSGD(0.01)", lambda: ox.ScheduleFreeSGD(0.01), lambda: ref.ScheduleFree(0.01, 0.9),
         reliability=_rate(lambda lr, **kw: ox.ScheduleFreeSGD(lr, weight_decay=1e-3, **kw), 0.05)),
    Case("ScheduleFreeSGD(0.003,0.8,wd=0.05,warmup=4)", lambda: ox.ScheduleFreeSGD(0.003, 0.8, weight_decay=0.05, warmup_steps=4),
         lambda: ref.ScheduleFree(0.003, 0.8, wd=0.05, warmup=4), fit=False,
         kernel=True, varying_rate=True),
    # The wrapper, as its named cases: Adam without momentum (the normalised gradient), decay at y, then η.
    Case("ScheduleFree(ADAM(1,(0,0.99))>WeightDecay>Descent,0.85,warmup=3)",
         lambda: ox.ScheduleFree(ox.Optimiser(ox.ADAM(1.0, (0.0, 0.99), 1e-6), ox.WeightDecay(0.1), ox.Descent(0.01)),
                                 0.85, warmup_steps=3),
         lambda: ref.ScheduleFree(0.01, 0.85, 0.99, 1e-6, wd=0.1, warmup=3),
         reliability=_rate(lambda lr, **kw: ox.ScheduleFree(ox.Optimiser(ox.ADAM(1.0, (0.0, 0.999)), ox.Descent(lr)),
                                                            warmup_steps=2, **kw), 0.01)),
    Case("ScheduleFree(WeightDecay>Descent,0.8,r=1)",
         lambda: ox.ScheduleFree(ox.Optimiser(ox.WeightDecay(0.05), ox.Descent(0.003)), 0.8, r=1.0),
         lambda: ref.ScheduleFree(0.003, 0.8, wd=0.05, r=1.0), fit=False),
]

SCHEDULES = [
    Case("Descent(ExpDecay)", lambda: ox.Descent(ox.ExpDecay(0.5, 0.5, 3, 0.05)),
         lambda: ref.Descent(ref.exp_decay(0.5, 0.5, 3, 0.05)), fit=False,
         reliability=_rate(lambda lr, **kw: ox.Descent(ox.ExpDecay(lr, 0.5, 2, 1e-3), **kw), 0.1, settable=False)),
    Case("Momentum(InvDecay)", lambda: ox.Momentum(ox.InvDecay(0.1, learning_rate=0.05)),
         lambda: ref.Momentum(ref.inv_decay(0.1, 0.05)), fit=False),
]


CHAINS = [
    Case("ClipNorm>WeightDecay>ADAM", lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-2), ox.ADAM(0.01)),
         lambda: ref.Chain(ref.ClipNorm(1.0), ref.WeightDecay(1e-2), ref.ADAM(0.01)), kernel=True, varying_rate=True,
         reliability=_rate(lambda lr, **kw: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM(lr), **kw), 0.01)),
    # decays every 3 updates, reaching the 0.05 floor at n = 15
    Case("ExpDecay>Descent", lambda: ox.Optimiser(ox.ExpDecay(1.0, 0.5, 3, 0.05), ox.Descent(0.5)),
         lambda: ref.Chain(ref.Scale(ref.exp_decay(1.0, 0.5, 3, 0.05)), ref.Descent(0.5))),
    Case("ExpDecay(start=4)>Descent", lambda: ox.Optimiser(ox.ExpDecay(1.0, 0.5, 3, 0.05, 4), ox.Descent(0.5)),
         lambda: ref.Chain(ref.Scale(ref.exp_decay(1.0, 0.5, 3, 0.05, 4)), ref.Descent(0.5)), fit=False),
    Case("ExpDecay>Momentum", lambda: ox.Optimiser(ox.ExpDecay(1.0, 0.5, 4, 0.1), ox.Momentum(0.02, 0.8)),
         lambda: ref.Chain(ref.Scale(ref.exp_decay(1.0, 0.5, 4, 0.1)), ref.Momentum(0.02, 0.8)), fit=False,
         kernel=True, varying_rate=True,
         reliability=_rate(lambda lr, **kw: ox.Optimiser(ox.ExpDecay(0.1, 0.5, 3), ox.Momentum(lr), **kw), 0.05)),
    Case("InvDecay>Momentum", lambda: ox.Optimiser(ox.InvDecay(0.1), ox.Momentum(0.05)),
         lambda: ref.Chain(ref.Scale(ref.inv_decay(0.1)), ref.Momentum(0.05))),
    Case("ClipValue(keras SGD)", lambda: ox.ClipValue(0.5, keras.optimizers.SGD(0.1)),
         lambda: ref.Chain(ref.ClipValue(0.5), ref.Descent(0.1))),
    Case("ClipGlobalNorm(keras SGD)", lambda: ox.ClipGlobalNorm(2.0, keras.optimizers.SGD(0.1)),
         lambda: ref.Chain(ref.ClipGlobalNorm(2.0), ref.Descent(0.1)), fit=False),
    Case("ClipGlobalNorm(keras Adam)", lambda: ox.ClipGlobalNorm(1.0, keras.optimizers.Adam(0.01)),
         reliability=_rate(lambda lr, **kw: ox.ClipGlobalNorm(1.0, keras.optimizers.Adam(lr), **kw), 0.01)),
    Case("WeightDecay>ADAM", lambda: ox.Optimiser(ox.WeightDecay(0.1), ox.ADAM(0.01)),
         lambda: ref.Chain(ref.WeightDecay(0.1), ref.ADAM(0.01)), fit=False, kernel=True),
    Case("ADAM>WeightDecay", lambda: ox.Optimiser(ox.ADAM(0.01), ox.WeightDecay(0.1)),
         lambda: ref.Chain(ref.ADAM(0.01), ref.WeightDecay(0.1)), fit=False),
    Case("ClipValue>(WeightDecay>Nesterov)",
         lambda: ox.Optimiser(ox.ClipValue(2.0), ox.Optimiser(ox.WeightDecay(1e-2), ox.Nesterov(0.01))),
         lambda: ref.Chain(ref.ClipValue(2.0), ref.Chain(ref.WeightDecay(1e-2), ref.Nesterov(0.01))), kernel=True),
    Case("ClipValue>Nesterov", lambda: ox.Optimiser(ox.ClipValue(0.5), ox.Nesterov(0.05)),
         lambda: ref.Chain(ref.ClipValue(0.5), ref.Nesterov(0.05)), fit=False,
         reliability=_rate(lambda lr, **kw: ox.Optimiser(ox.ClipValue(0.5), ox.Nesterov(lr), **kw), 0.05)),
    Case("Lookahead(ADAM)", lambda: ox.Lookahead(ox.ADAM(0.01)), lambda: ref.Lookahead(ref.ADAM(0.01)),
         # k = 2: synchronised before saving and after loading (K_STEPS = N_STEPS = 3).
         reliability=_rate(lambda lr, **kw: ox.Lookahead(ox.ADAM(lr), 2, 0.5, **kw), 0.01)),
    Case("Lookahead(keras SGD,3,0.8)", lambda: ox.Lookahead(keras.optimizers.SGD(0.1), 3, 0.8),
         lambda: ref.Lookahead(ref.Descent(0.1), 3, 0.8)),
    Case("Lookahead(keras SGD)", lambda: ox.Lookahead(keras.optimizers.SGD(0.05, momentum=0.9), 2, 0.8),
         reliability=_rate(lambda lr, **kw: ox.Lookahead(keras.optimizers.SGD(lr, momentum=0.9), 2, 0.8, **kw), 0.05)),
    Case("Lookahead(ClipNorm>RADAM,1,0.3)", lambda: ox.Lookahead(ox.Optimiser(ox.ClipNorm(1.0), ox.RADAM(0.01)), 1, 0.3),
         lambda: ref.Lookahead(ref.Chain(ref.ClipNorm(1.0), ref.RADAM(0.01)), 1, 0.3), fit=False),
    Case("ClipGlobalNorm>RMSProp", lambda: ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.RMSProp(0.01)),
         lambda: ref.Chain(ref.ClipGlobalNorm(1.0), ref.RMSProp(0.01)), fit=False, kernel=True),
    # Chains whose kernel takes a shortcut: a WeightDecay right before a kernel with coupled decay
    # goes into the kernel's weight_decay; Momentum(ρ = 0)'s kernel declines, the chain finishes
    # with the formula; ClipNorm(3) clips some gradients and passes others through, as the first
    # member (the caller's tensors) and after another transform (the kept buffer).
    Case("AdaMax>WeightDecay>Momentum(ρ=0)", lambda: ox.Optimiser(ox.AdaMax(0.01), ox.WeightDecay(1e-2), ox.Momentum(0.5, 0.0)),
         lambda: ref.Chain(ref.AdaMax(0.01), ref.WeightDecay(1e-2), ref.Momentum(0.5, 0.0)), fit=False, kernel=True),
    Case("ClipValue>WeightDecay>Momentum", lambda: ox.Optimiser(ox.ClipValue(0.5), ox.WeightDecay(1e-2), ox.Momentum(0.02, 0.8)),
         lambda: ref.Chain(ref.ClipValue(0.5), ref.WeightDecay(1e-2), ref.Momentum(0.02, 0.8)), fit=False, kernel=True),
    Case("WeightDecay>Momentum(ρ=0)", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.Momentum(0.5, 0.0)),
         lambda: ref.Chain(ref.WeightDecay(1e-2), ref.Momentum(0.5, 0.0)), fit=False, kernel=True),
    Case("WeightDecay>AMSGrad", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.AMSGrad(0.003, (0.85, 0.99))),
         lambda: ref.Chain(ref.WeightDecay(1e-2), ref.AMSGrad(0.003, (0.85, 0.99))), fit=False, kernel=True),
    Case("WeightDecay>RMSProp", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.RMSProp(0.003, 0.85)),
         lambda: ref.Chain(ref.WeightDecay(1e-2), ref.RMSProp(0.003, 0.85)), fit=False, kernel=True),
    Case("WeightDecay>ADAGrad", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.ADAGrad(0.05)),
         lambda: ref.Chain(ref.WeightDecay(1e-2), ref.ADAGrad(0.05)), fit=False, kernel=True),
    Case("WeightDecay>Descent", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.Descent(0.05)),
         lambda: ref.Chain(ref.WeightDecay(1e-2), ref.Descent(0.05)), fit=False, kernel=True),
    Case("ClipNorm(3)>ClipValue>Momentum", lambda: ox.Optimiser(ox.ClipNorm(3.0), ox.ClipValue(0.5), ox.Momentum(0.02, 0.8)),
         lambda: ref.Chain(ref.ClipNorm(3.0), ref.ClipValue(0.5), ref.Momentum(0.02, 0.8)), fit=False, kernel=True),
    Case("ClipValue>ClipNorm(3)>ADAM", lambda: ox.Optimiser(ox.ClipValue(1.5), ox.ClipNorm(3.0), ox.ADAM(0.003, (0.85, 0.99))),
         lambda: ref.Chain(ref.ClipValue(1.5), ref.ClipNorm(3.0), ref.ADAM(0.003, (0.85, 0.99))), fit=False, kernel=True),
    # Cautious(rule): the rule's update masked where its sign disagrees with the gradient's (keras_optx/recent.py).
    # On torch the first three run Cautious's kernel (the wrapped rule's `direction`); the chain has none.
    Case("Cautious(Lion)", lambda: ox.Cautious(ox.Lion(0.003, (0.8, 0.95))), lambda: ref.Cautious(ref.Lion(0.003, (0.8, 0.95))),
         kernel=True, varying_rate=True, reliability=_rate(lambda lr, **kw: ox.Cautious(ox.Lion(lr), **kw), 0.003)),
    Case("Cautious(ADOPT)", lambda: ox.Cautious(ox.ADOPT(0.01, (0.8, 0.99), 1e-3)),
         lambda: ref.Cautious(ref.ADOPT(0.01, (0.8, 0.99), 1e-3)), fit=False, kernel=True, varying_rate=True),
    Case("Cautious(AdEMAMix)", lambda: ox.Cautious(ox.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 1e-6)),
         lambda: ref.Cautious(ref.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 1e-6)), fit=False, kernel=True, varying_rate=True),
    Case("Cautious(ClipNorm>Momentum)", lambda: ox.Cautious(ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.02, 0.8))),
         lambda: ref.Cautious(ref.Chain(ref.ClipNorm(1.0), ref.Momentum(0.02, 0.8))), fit=False),
    Case("ClipGlobalNorm>Prodigy", lambda: ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.Prodigy(d0=1e-3)),
         lambda: ref.Chain(ref.ClipGlobalNorm(1.0), ref.Prodigy(d0=1e-3)), fit=False),
]

# keras_optx.torch: torch's rules with torch's names, compared with torch.optim (COMPAT below), not an oracle here.
TORCH = [
    Case("torch.SGD", lambda: oxt.SGD(0.05), kernel=True,
         reliability=_rate(lambda lr, **kw: oxt.SGD(lr, momentum=0.9, nesterov=True, weight_decay=1e-3, **kw), 0.05)),
    Case("torch.SGD(momentum,dampening,wd)", lambda: oxt.SGD(0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
         kernel=True, varying_rate=True),
    Case("torch.SGD(nesterov,maximize)", lambda: oxt.SGD(0.05, momentum=0.8, nesterov=True, maximize=True), kernel=True),
    Case("torch.SGD(dtorch)", lambda: oxt.SGD(0.05, momentum=0.8, dampening=0.8, dampen_first_step=True),
         kernel=True, varying_rate=True),
    Case("torch.Adam", lambda: oxt.Adam(0.01, weight_decay=1e-3, amsgrad=True),
         reliability=_rate(lambda lr, **kw: oxt.Adam(lr, weight_decay=1e-3, amsgrad=True, **kw), 0.01)),
    Case("torch.Adam(wd,amsgrad)", lambda: oxt.Adam(0.003, (0.85, 0.99), weight_decay=1e-2, amsgrad=True),
         kernel=True, varying_rate=True),
    Case("torch.Adam(maximize)", lambda: oxt.Adam(0.003, maximize=True), kernel=True),
    Case("torch.AdamW", lambda: oxt.AdamW(0.003, (0.85, 0.99), weight_decay=0.1), kernel=True, varying_rate=True,
         reliability=_rate(lambda lr, **kw: oxt.AdamW(lr, weight_decay=1e-2, **kw), 0.01)),
    Case("torch.AdamW(amsgrad)", lambda: oxt.AdamW(0.003, amsgrad=True), kernel=True),
]

# keras_optx.torch against torch.optim (float64) or, `reference="dtorch"`, against a NumPy
# transliteration of dtorch's SGD/Adam formulas (stated in the SGD docstring, keras_optx/torch.py);
# tests/test_torch_compat.py runs every row step by step. `kwargs` are torch's names, given to both
# sides (`dampen_first_step` to ours only); `compiled`: also run traced/compiled (jax, tensorflow).
TORCH_CLASSES = {"SGD": oxt.SGD, "Adam": oxt.Adam, "AdamW": oxt.AdamW}


@dataclass(frozen=True)
class Compat:
    name: str
    kwargs: dict
    reference: str = "torch"
    compiled: bool = False

    @property
    def id(self):
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items() if k != "lr")
        return f"{self.reference}.{self.name}({args})"

    def make(self):
        return TORCH_CLASSES[self.name](**self.kwargs)

    @property
    def reference_kwargs(self):
        return {k: v for k, v in self.kwargs.items() if k != "dampen_first_step"}

    def __repr__(self):
        return self.id


def _sgd_grid():
    for momentum, dampening, nesterov, wd in itertools.product((0.0, 0.9), (0.0, 0.9), (False, True), (0.0, 1e-2)):
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch rejects it, and so do we (`BAD` below)
        compiled = momentum == 0.9 and wd == 1e-2 and (dampening, nesterov) in ((0.9, False), (0.0, True))
        yield Compat("SGD", dict(lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=wd),
                     compiled=compiled)


def _adam_grid():
    for name, wd, amsgrad in itertools.product(("Adam", "AdamW"), (0.0, 1e-2), (False, True)):
        yield Compat(name, dict(lr=0.05, weight_decay=wd, amsgrad=amsgrad), compiled=wd == 1e-2 and amsgrad)


COMPAT = [
    *_sgd_grid(),
    *_adam_grid(),
    Compat("SGD", dict(lr=0.1, momentum=0.5, weight_decay=1e-2, maximize=True)),
    Compat("Adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=1e-2, maximize=True)),
    Compat("AdamW", dict(lr=0.05, betas=(0.5, 0.9), weight_decay=0.5, amsgrad=True, maximize=True)),
    Compat("SGD", dict(lr=0.1, momentum=0.9, dampening=0.9, dampen_first_step=True), "dtorch", compiled=True),
    Compat("SGD", dict(lr=0.1, momentum=0.5, dampening=0.5, dampen_first_step=True), "dtorch"),
    Compat("SGD", dict(lr=0.1), "dtorch"),
    Compat("Adam", dict(lr=0.05, weight_decay=1e-2), "dtorch"),
]

# keras_optx.torch's `param_groups` against torch.optim's groups (tests/test_torch_param_groups.py):
# id → (class, constructor kwargs, groups). "params" is a regex on GROUP_PATHS or indices into it;
# the variable no group takes keeps the constructor's values.
GROUP_PATHS = ("kernel", "bias", "head_kernel")
COMPAT_GROUPS = {
    "SGD": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), [
        {"params": "bias", "lr": 0.3, "momentum": 0.5, "weight_decay": 0.0, "dampening": 0.1},
        {"params": "head", "nesterov": True},
    ]),
    "Adam": ("Adam", dict(lr=0.01, weight_decay=1e-2), [
        {"params": [2], "lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6},
    ]),
    "AdamW": ("AdamW", dict(lr=0.01, weight_decay=0.1), [
        {"params": "bias", "weight_decay": 0.0},
        {"params": [2, 1], "lr": 0.03, "amsgrad": True},  # bias is already in the first group
    ]),
}

# Variable paths of the conformance test (tests/test_conformance.py names its variables so); the
# small model of the fit and save tests has paths "dense/kernel", "dense/bias", "dense_1/…".
PATHS = ("kernel", "bias", "scale", "conv_kernel")

PARTITIONS = [
    Case("Partition(bias:Momentum,kernel:ADAM,.*:Descent)",
         lambda: ox.Partition({"bias": ox.Momentum(0.05, 0.5), "kernel": ox.ADAM(0.01), ".*": ox.Descent(0.1)}),
         lambda: ref.Partition([("bias", ref.Momentum(0.05, 0.5)), ("kernel", ref.ADAM(0.01)), (".*", ref.Descent(0.1))],
                               PATHS)),
    Case("ClipGlobalNorm>Partition(bias:Frozen,.*:WeightDecay>Nesterov)",
         lambda: ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.Partition(
             {"bias": ox.Frozen(), ".*": ox.Optimiser(ox.WeightDecay(1e-2), ox.Nesterov(0.01))})),
         lambda: ref.Chain(ref.ClipGlobalNorm(1.0), ref.Partition(
             [("bias", None), (".*", ref.Chain(ref.WeightDecay(1e-2), ref.Nesterov(0.01)))], PATHS))),
    # "conv|dense_1|d2": the inner pattern routes a variable of the conformance test, of the small model and of
    # tests/_distributed.py's model (a pattern that routes nothing is refused at build).
    Case("Partition(kernel:Partition(conv|dense_1|d2:RMSProp,.*:AdaMax),.*:ClipGlobalNorm>ADAMW)",
         lambda: ox.Partition({"kernel": ox.Partition({"conv|dense_1|d2": ox.RMSProp(0.01), ".*": ox.AdaMax()}),
                               ".*": ox.Optimiser(ox.ClipGlobalNorm(0.5), ox.ADAMW(0.01, decay=0.1))}),
         lambda: ref.Partition([("kernel", ref.Partition([("conv|dense_1|d2", ref.RMSProp(0.01)), (".*", ref.AdaMax())],
                                                          ("kernel", "conv_kernel"))),
                                (".*", ref.Chain(ref.ClipGlobalNorm(0.5), ref.ADAMW(0.01, decay=0.1)))], PATHS),
         fit=False),
    # Two Prodigy instances, each estimating its d from its own group's variables only.
    Case("Partition(kernel:Prodigy,.*:Prodigy(d₀=1e-4))",
         lambda: ox.Partition({"kernel": ox.Prodigy(), ".*": ox.Prodigy(d0=1e-4)}),
         lambda: ref.Partition([("kernel", ref.Prodigy()), (".*", ref.Prodigy(d0=1e-4))], PATHS), fit=False),
]

CASES = [c for c in RULES + SCHEDULES + CHAINS + PARTITIONS if c.reference is not None]  # against the oracle
ALL = RULES + SCHEDULES + CHAINS + PARTITIONS + TORCH
KERNELS = {c.id: c for c in ALL if c.kernel}
RELIABILITY = {c.id: c.reliability for c in ALL if c.reliability is not None}

# Refused hyperparameters: (build, error, a pattern the message must contain: the argument's name).
BAD = [
    (lambda: ox.ADAM(-1e-3), ValueError, "learning_rate"),
    (lambda: ox.Descent(-0.1), ValueError, "learning_rate"),
    (lambda: ox.Descent("fast"), TypeError, "learning_rate"),
    (lambda: ox.ADAM("0.1"), TypeError, "learning_rate"),
    (lambda: ox.ADAM(beta=(0.9, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.NADAM(beta=(-0.1, 0.999)), ValueError, r"beta\[0\]"),
    (lambda: ox.RADAM(beta=(0.9,)), ValueError, "beta.*length 2"),
    (lambda: ox.ADAM(0.01, (0.9,)), ValueError, "beta"),
    (lambda: ox.AdaMax(beta=(0.9, 0.99, 0.9)), ValueError, "beta.*length 2"),
    (lambda: ox.AMSGrad(beta=0.9), TypeError, "beta"),
    (lambda: ox.AdaMax(0.01, 0.9), TypeError, "beta"),
    (lambda: ox.OADAM(beta=(0.5, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.OADAM(epsilon=-1e-8), ValueError, "epsilon"),
    (lambda: ox.AdaBelief(beta=(1.2, 0.999)), ValueError, r"beta\[0\]"),
    (lambda: ox.AdaBelief(-0.1), ValueError, "learning_rate"),
    (lambda: ox.Lion(beta=(-0.1, 0.99)), ValueError, r"beta\[0\]"),
    (lambda: ox.Lion(0.001, (0.9, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.Rprop(ell=(0.5, 1.2, 2.0)), ValueError, "ell.*length 2"),
    (lambda: ox.Rprop(gamma=(1e-6, float("inf"))), ValueError, r"gamma\[1\]"),
    (lambda: ox.Rprop(lambda: 0.1), TypeError, "learning_rate"),
    (lambda: ox.Rprop(0.01, (0.5, 1.0)), ValueError, r"ell\[1\].*> 1"),
    (lambda: ox.Rprop(0.01, (0.0, 1.2)), ValueError, r"ell\[0\].*\(0, 1\)"),
    (lambda: ox.Rprop(0.01, 0.5), TypeError, "ell"),
    (lambda: ox.Rprop(0.01, gamma=(1.0, 0.1)), ValueError, "gamma.*Γ₋ ≤ Γ₊"),
    (lambda: ox.Rprop(0.01, gamma=(-1.0, 1.0)), ValueError, r"gamma\[0\]"),
    (lambda: ox.Rprop(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)), TypeError, "learning_rate"),
    (lambda: ox.Momentum(rho=1.0), ValueError, "rho"),
    (lambda: ox.Nesterov(rho=-0.5), ValueError, "rho"),
    (lambda: ox.Nesterov(0.01, "0.9"), TypeError, "rho"),
    (lambda: ox.RMSProp(rho=1.5), ValueError, "rho"),
    (lambda: ox.ADADelta(1.0), ValueError, "rho"),
    (lambda: ox.ADAGrad(epsilon=-1.0), ValueError, "epsilon"),
    (lambda: ox.ADAGrad(0.1, epsilon=float("nan")), ValueError, "epsilon"),
    (lambda: ox.ADAMW(decay=-0.1), ValueError, "decay"),
    (lambda: ox.WeightDecay(-1.0), ValueError, "wd"),
    (lambda: ox.ClipNorm(0), ValueError, "thresh"),
    (lambda: ox.ClipValue(-1), ValueError, "thresh"),
    (lambda: ox.ClipGlobalNorm(float("nan")), ValueError, "thresh"),
    (lambda: ox.ClipGlobalNorm(None), TypeError, "thresh"),
    (lambda: ox.ClipNorm(1.0, "adam"), TypeError, "optimizer"),
    (lambda: ox.ExpDecay(decay_step=0), ValueError, "decay_step"),
    (lambda: ox.ExpDecay(0.1, 0.5, 2.5), TypeError, "decay_step"),
    (lambda: ox.ExpDecay(decay=0), ValueError, "decay"),
    (lambda: ox.InvDecay(-1.0), ValueError, "gamma"),
    (lambda: ox.Optimiser(ox.ADAM(), "adam"), TypeError, "member 1"),
    (lambda: ox.Optimiser(keras.optimizers.Adam()), TypeError, "member 0.*wrap it instead"),
    (lambda: ox.Optimiser(ox.ClipNorm(1.0, keras.optimizers.SGD())), ValueError, "wraps a Keras optimizer"),
    (lambda: ox.Lookahead(None), TypeError, "optimizer"),
    (lambda: ox.Lookahead("adam"), TypeError, "optimizer"),
    (lambda: ox.Lookahead(ox.ADAM(), 0), ValueError, "sync_period"),
    (lambda: ox.Lookahead(ox.ADAM(), 2.5), TypeError, "sync_period"),
    (lambda: ox.Lookahead(ox.ADAM(), 6, 0.0), ValueError, r"slow_step_size.*\(0, 1\]"),
    (lambda: ox.Lookahead(ox.ADAM(), 6, 1.5), ValueError, "slow_step_size"),
    (lambda: ox.Lookahead(keras.optimizers.Adam(gradient_accumulation_steps=2)), ValueError,
     "gradient_accumulation_steps"),
    (lambda: ox.Optimiser(ox.Lookahead(ox.ADAM()), ox.ADAM()), ValueError, "wraps a Keras optimizer"),
    (lambda: oxt.SGD(0.1, momentum=-0.9), ValueError, "momentum"),
    (lambda: oxt.Adam(0.01, betas=(0.9, 1.0)), ValueError, "betas"),
    (lambda: oxt.AdamW(0.01, weight_decay=-1.0), ValueError, "weight_decay"),
    (lambda: oxt.SGD(-0.1), ValueError, r"`lr` must be .*≥ 0"),
    (lambda: oxt.SGD(learning_rate=-0.1), ValueError, "lr"),
    (lambda: oxt.Adam(0.1, learning_rate=0.2), ValueError, "once"),
    (lambda: oxt.SGD(0.1, momentum=-0.5), ValueError, "momentum"),
    (lambda: oxt.SGD(0.1, 0.9, dampening=1.5), ValueError, r"dampening.*\[0, 1\]"),
    (lambda: oxt.SGD(0.1, weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda: oxt.SGD(0.1, nesterov=True), ValueError, "nesterov.*momentum"),
    (lambda: oxt.SGD(0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov.*dampening"),
    (lambda: oxt.SGD(0.1, 0.9, nesterov=1), TypeError, "nesterov"),
    (lambda: oxt.Adam(betas=(1.0, 0.999)), ValueError, r"betas\[0\].*\[0, 1\)"),
    (lambda: oxt.Adam(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (lambda: oxt.Adam(betas=0.9), TypeError, "betas"),
    (lambda: oxt.Adam(eps=-1e-8), ValueError, "eps"),
    (lambda: oxt.Adam(amsgrad="yes"), TypeError, "amsgrad"),
    (lambda: oxt.AdamW(weight_decay=-0.01), ValueError, "weight_decay"),
    (lambda: ox.ADOPT(epsilon=0.0), ValueError, "epsilon"),
    (lambda: ox.ADOPT(beta=(0.9, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.AdEMAMix(beta=(0.9, 0.999)), ValueError, "beta.*length 3"),
    (lambda: ox.AdEMAMix(beta=(0.9, 0.999, 1.0)), ValueError, r"beta\[2\]"),
    (lambda: ox.AdEMAMix(alpha=-1.0), ValueError, "alpha"),
    (lambda: ox.AdEMAMixAlphaWarmup(5.0, 0), ValueError, "warmup_steps"),
    (lambda: ox.AdEMAMixBeta3Warmup(0.0, 0.9999, 10), ValueError, "beta1"),
    (lambda: ox.Cautious(keras.optimizers.Adam()), TypeError, "rule"),
    (lambda: ox.Cautious(None), TypeError, "rule"),
    (lambda: ox.Prodigy(d0=0.0), ValueError, "d0"),
    (lambda: ox.Prodigy(growth_rate=0.5), ValueError, "growth_rate"),
    (lambda: ox.Prodigy(beta3=1.0), ValueError, "beta3"),
    (lambda: ox.Prodigy(weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: ox.Prodigy(use_bias_correction=1), TypeError, "use_bias_correction"),
    (lambda: ox.Prodigy(state_dtype="bfloat16"), ValueError, "Prodigy does not take state_dtype"),
    (lambda: ox.Muon(momentum=1.0), ValueError, "momentum"),
    (lambda: ox.Muon(nesterov="yes"), TypeError, "nesterov"),
    (lambda: ox.Muon(ns_steps=0), ValueError, "ns_steps"),
    (lambda: ox.Muon(ns_steps=100), ValueError, "ns_steps"),
    (lambda: ox.Muon(ns_steps=2.5), TypeError, "ns_steps"),
    (lambda: ox.Muon(ns_coefficients=(3.4, -4.7)), ValueError, "ns_coefficients.*length 3"),
    (lambda: ox.Muon(ns_coefficients=(3.4, "b", 2.0)), TypeError, r"ns_coefficients\[1\]"),
    (lambda: ox.Muon(epsilon=-1e-7), ValueError, "epsilon"),
    (lambda: ox.Muon(adjust_lr="rms"), ValueError, "adjust_lr.*match_rms_adamw"),
    (lambda: ox.Muon(ns_dtype="float16"), ValueError, "ns_dtype.*bfloat16"),
    (lambda: ox.SOAP(beta=(0.95, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.SOAP(shampoo_beta=1.5), ValueError, "shampoo_beta"),
    (lambda: ox.SOAP(epsilon=-1.0), ValueError, "epsilon"),
    (lambda: ox.SOAP(precondition_frequency=0), ValueError, "precondition_frequency"),
    (lambda: ox.SOAP(max_precondition_dim=0), ValueError, "max_precondition_dim"),
    (lambda: ox.SOAP(merge_dims=True), ValueError, "merge_dims.*not implemented"),
    (lambda: ox.SOAP(precondition_1d="yes"), TypeError, "precondition_1d"),
    (lambda: ox.SOAP(correct_bias=None), TypeError, "correct_bias"),
    (lambda: ox.SOAP(state_dtype="bfloat16"), ValueError, "state_dtype"),
    (lambda: ox.ScheduleFreeAdamW(beta=(0.0, 0.999)), ValueError, r"beta\[0\].*\(0, 1\)"),
    (lambda: ox.ScheduleFreeAdamW(beta=(0.9, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.ScheduleFreeAdamW(epsilon=-1.0), ValueError, "epsilon"),
    (lambda: ox.ScheduleFreeAdamW(weight_decay=-0.1), ValueError, "weight_decay"),
    (lambda: ox.ScheduleFreeAdamW(warmup_steps=2.5), TypeError, "warmup_steps"),
    (lambda: ox.ScheduleFreeAdamW(warmup_steps=-1), ValueError, "warmup_steps"),
    (lambda: ox.ScheduleFreeAdamW(r=-1.0), ValueError, "r"),
    (lambda: ox.ScheduleFreeAdamW(weight_lr_power=float("nan")), ValueError, "weight_lr_power"),
    (lambda: ox.ScheduleFreeAdamW(-0.1), ValueError, "learning_rate"),
    (lambda: ox.ScheduleFreeSGD(momentum=0.0), ValueError, r"momentum.*\(0, 1\)"),
    (lambda: ox.ScheduleFreeSGD(momentum=1.0), ValueError, "momentum"),
    (lambda: ox.ScheduleFreeSGD(weight_decay=-1e-4), ValueError, "weight_decay"),
    (lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ScheduleFreeSGD()), ValueError, "cannot be a member"),
    (lambda: ox.ScheduleFreeAdamW(state_dtype="bfloat16"), ValueError, "ScheduleFreeAdamW does not take state_dtype"),
    (lambda: ox.ScheduleFree(keras.optimizers.SGD()), TypeError, "base"),
    (lambda: ox.ScheduleFree(ox.ScheduleFreeSGD()), TypeError, "base"),
    (lambda: ox.ScheduleFree(ox.ClipNorm(1.0)), ValueError, "base.*learning rate"),
    (lambda: ox.ScheduleFree(ox.Descent(), beta=1.0), ValueError, "beta"),
    (lambda: ox.ScheduleFree(ox.Descent(), weight_decay=0.1), ValueError, "weight_decay.*WeightDecay"),
    (lambda: ox.ScheduleFreeAdamW(beta=(keras.optimizers.schedules.ExponentialDecay(0.9, 10, 0.5), 0.999)), TypeError,
     "beta"),
]
