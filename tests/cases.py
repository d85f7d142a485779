"""One table of every rule, transform, chain and schedule configuration under test.

Each case pairs a keras_optx optimizer with its NumPy float64 reference (tests/reference.py).
`fit=False` keeps a case out of the (slower) model.fit test where another case already covers it.
"""

from dataclasses import dataclass
from typing import Callable

import keras

import keras_optx as ox
import reference as ref


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable
    reference: Callable
    fit: bool = True

    def __repr__(self):
        return self.id


RULES = [
    # Flux defaults, then a non-default setting of each rule.
    Case("Descent", lambda: ox.Descent(), lambda: ref.Descent()),
    Case("Descent(0.3)", lambda: ox.Descent(0.3), lambda: ref.Descent(0.3), fit=False),
    Case("Momentum", lambda: ox.Momentum(), lambda: ref.Momentum()),
    Case("Momentum(0.05,0.5)", lambda: ox.Momentum(0.05, 0.5), lambda: ref.Momentum(0.05, 0.5), fit=False),
    Case("Nesterov", lambda: ox.Nesterov(), lambda: ref.Nesterov()),
    Case("Nesterov(0.003,0.95)", lambda: ox.Nesterov(0.003, 0.95), lambda: ref.Nesterov(0.003, 0.95), fit=False),
    Case("RMSProp", lambda: ox.RMSProp(), lambda: ref.RMSProp()),
    Case("RMSProp(0.002,0.95,eps=1e-3)", lambda: ox.RMSProp(0.002, 0.95, epsilon=1e-3),
         lambda: ref.RMSProp(0.002, 0.95, 1e-3), fit=False),
    Case("ADAM", lambda: ox.ADAM(), lambda: ref.ADAM()),
    Case("ADAM(0.001,(0.9,0.8))", lambda: ox.ADAM(0.001, (0.9, 0.8)), lambda: ref.ADAM(0.001, (0.9, 0.8)), fit=False),
    Case("RADAM", lambda: ox.RADAM(), lambda: ref.RADAM()),
    Case("RADAM(0.01,(0.9,0.8))", lambda: ox.RADAM(0.01, (0.9, 0.8)), lambda: ref.RADAM(0.01, (0.9, 0.8)), fit=False),
    Case("AdaMax", lambda: ox.AdaMax(), lambda: ref.AdaMax()),
    Case("AdaMax(0.002,(0.9,0.995))", lambda: ox.AdaMax(0.002, (0.9, 0.995)),
         lambda: ref.AdaMax(0.002, (0.9, 0.995)), fit=False),
    Case("ADAGrad", lambda: ox.ADAGrad(), lambda: ref.ADAGrad()),
    Case("ADAGrad(0.01)", lambda: ox.ADAGrad(0.01), lambda: ref.ADAGrad(0.01), fit=False),
    Case("ADADelta", lambda: ox.ADADelta(), lambda: ref.ADADelta()),
    Case("ADADelta(0.89)", lambda: ox.ADADelta(0.89), lambda: ref.ADADelta(0.89), fit=False),
    Case("AMSGrad", lambda: ox.AMSGrad(), lambda: ref.AMSGrad()),
    Case("AMSGrad(0.001,(0.89,0.995))", lambda: ox.AMSGrad(0.001, (0.89, 0.995)),
         lambda: ref.AMSGrad(0.001, (0.89, 0.995)), fit=False),
    Case("NADAM", lambda: ox.NADAM(), lambda: ref.NADAM()),
    Case("NADAM(0.002,(0.89,0.995))", lambda: ox.NADAM(0.002, (0.89, 0.995)),
         lambda: ref.NADAM(0.002, (0.89, 0.995)), fit=False),
    # β₂ = 0 takes the formula's own branch (its √(β₂v/(1−β₂ᵗ)) term vanishes).
    Case("NADAM(1e-5,(0.9,0.0))", lambda: ox.NADAM(1e-5, (0.9, 0.0)), lambda: ref.NADAM(1e-5, (0.9, 0.0)), fit=False),
    Case("OADAM", lambda: ox.OADAM(), lambda: ref.OADAM()),
    Case("OADAM(0.01,(0.9,0.995),eps=1e-6)", lambda: ox.OADAM(0.01, (0.9, 0.995), 1e-6),
         lambda: ref.OADAM(0.01, (0.9, 0.995), 1e-6), fit=False),
    Case("AdaBelief", lambda: ox.AdaBelief(), lambda: ref.AdaBelief()),
    Case("AdaBelief(0.002,(0.8,0.9))", lambda: ox.AdaBelief(0.002, (0.8, 0.9)),
         lambda: ref.AdaBelief(0.002, (0.8, 0.9)), fit=False),
    Case("Lion", lambda: ox.Lion(), lambda: ref.Lion()),
    Case("Lion(3e-4,(0.95,0.98))", lambda: ox.Lion(3e-4, (0.95, 0.98)), lambda: ref.Lion(3e-4, (0.95, 0.98)), fit=False),
    Case("Rprop", lambda: ox.Rprop(), lambda: ref.Rprop()),
    # η₀ below Γ₋: clamped up at the first step; ℓ₊ = 2 reaches Γ₊ = 0.01 within the test
    Case("Rprop(1e-7,(0.3,2.0),(1e-6,0.01))", lambda: ox.Rprop(1e-7, (0.3, 2.0), (1e-6, 0.01)),
         lambda: ref.Rprop(1e-7, (0.3, 2.0), (1e-6, 0.01)), fit=False),
    Case("ADAMW", lambda: ox.ADAMW(), lambda: ref.ADAMW()),
    Case("ADAMW(0.001,(0.89,0.995),0.1)", lambda: ox.ADAMW(0.001, (0.89, 0.995), 0.1),
         lambda: ref.ADAMW(0.001, (0.89, 0.995), 0.1), fit=False),
]

SCHEDULES = [
    Case("Descent(ExpDecay)", lambda: ox.Descent(ox.ExpDecay(0.5, 0.5, 3, 0.05)),
         lambda: ref.Descent(ref.exp_decay(0.5, 0.5, 3, 0.05)), fit=False),
    Case("Momentum(InvDecay)", lambda: ox.Momentum(ox.InvDecay(0.1, learning_rate=0.05)),
         lambda: ref.Momentum(ref.inv_decay(0.1, 0.05)), fit=False),
]

CHAINS = [
    Case("ClipNorm>WeightDecay>ADAM", lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-2), ox.ADAM(0.01)),
         lambda: ref.Chain(ref.ClipNorm(1.0), ref.WeightDecay(1e-2), ref.ADAM(0.01))),
    # decays every 3 updates, reaching the 0.05 floor at n = 15
    Case("ExpDecay>Descent", lambda: ox.Optimiser(ox.ExpDecay(1.0, 0.5, 3, 0.05), ox.Descent(0.5)),
         lambda: ref.Chain(ref.Scale(ref.exp_decay(1.0, 0.5, 3, 0.05)), ref.Descent(0.5))),
    Case("ExpDecay(start=4)>Descent", lambda: ox.Optimiser(ox.ExpDecay(1.0, 0.5, 3, 0.05, 4), ox.Descent(0.5)),
         lambda: ref.Chain(ref.Scale(ref.exp_decay(1.0, 0.5, 3, 0.05, 4)), ref.Descent(0.5)), fit=False),
    Case("InvDecay>Momentum", lambda: ox.Optimiser(ox.InvDecay(0.1), ox.Momentum(0.05)),
         lambda: ref.Chain(ref.Scale(ref.inv_decay(0.1)), ref.Momentum(0.05))),
    Case("ClipValue(keras SGD)", lambda: ox.ClipValue(0.5, keras.optimizers.SGD(0.1)),
         lambda: ref.Chain(ref.ClipValue(0.5), ref.Descent(0.1))),
    Case("ClipGlobalNorm(keras SGD)", lambda: ox.ClipGlobalNorm(2.0, keras.optimizers.SGD(0.1)),
         lambda: ref.Chain(ref.ClipGlobalNorm(2.0), ref.Descent(0.1)), fit=False),
    Case("WeightDecay>ADAM", lambda: ox.Optimiser(ox.WeightDecay(0.1), ox.ADAM(0.01)),
         lambda: ref.Chain(ref.WeightDecay(0.1), ref.ADAM(0.01)), fit=False),
    Case("ADAM>WeightDecay", lambda: ox.Optimiser(ox.ADAM(0.01), ox.WeightDecay(0.1)),
         lambda: ref.Chain(ref.ADAM(0.01), ref.WeightDecay(0.1)), fit=False),
    Case("ClipValue>(WeightDecay>Nesterov)",
         lambda: ox.Optimiser(ox.ClipValue(2.0), ox.Optimiser(ox.WeightDecay(1e-2), ox.Nesterov(0.01))),
         lambda: ref.Chain(ref.ClipValue(2.0), ref.Chain(ref.WeightDecay(1e-2), ref.Nesterov(0.01)))),
    Case("Lookahead(ADAM)", lambda: ox.Lookahead(ox.ADAM(0.01)), lambda: ref.Lookahead(ref.ADAM(0.01))),
    Case("Lookahead(keras SGD,3,0.8)", lambda: ox.Lookahead(keras.optimizers.SGD(0.1), 3, 0.8),
         lambda: ref.Lookahead(ref.Descent(0.1), 3, 0.8)),
    Case("Lookahead(ClipNorm>RADAM,1,0.3)", lambda: ox.Lookahead(ox.Optimiser(ox.ClipNorm(1.0), ox.RADAM(0.01)), 1, 0.3),
         lambda: ref.Lookahead(ref.Chain(ref.ClipNorm(1.0), ref.RADAM(0.01)), 1, 0.3), fit=False),
    Case("ClipGlobalNorm>RMSProp", lambda: ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.RMSProp(0.01)),
         lambda: ref.Chain(ref.ClipGlobalNorm(1.0), ref.RMSProp(0.01)), fit=False),
]

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
    Case("Partition(kernel:Partition(conv:RMSProp,.*:AdaMax),.*:ClipGlobalNorm>ADAMW)",
         lambda: ox.Partition({"kernel": ox.Partition({"conv": ox.RMSProp(0.01), ".*": ox.AdaMax()}),
                               ".*": ox.Optimiser(ox.ClipGlobalNorm(0.5), ox.ADAMW(0.01, decay=0.1))}),
         lambda: ref.Partition([("kernel", ref.Partition([("conv", ref.RMSProp(0.01)), (".*", ref.AdaMax())],
                                                          ("kernel", "conv_kernel"))),
                                (".*", ref.Chain(ref.ClipGlobalNorm(0.5), ref.ADAMW(0.01, decay=0.1)))], PATHS),
         fit=False),
]

CASES = RULES + SCHEDULES + CHAINS + PARTITIONS
