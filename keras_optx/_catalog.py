"""Every built-in rule by name: the one list that `compare` and the benchmarks read.

Names are lower-case, as `python -m keras_optx.compare --rules` takes them. A rule added to
`keras_optx` and listed here is trained by `compare` and timed by `benchmarks/bench_step.py`
(against a reference there, where it names one) with no other edit.

- `FLUX_RULES`: name → class name in `keras_optx`, built with its own defaults (Flux v0.12's rules).
- `EXTRA_RULES`: the same for rules beyond Flux v0.12 (not in `compare`'s default run).
- `TRANSFORMS`: chain members that transform the gradient (and `ExpDecay`, `InvDecay`, schedule members):
  name → (class name, the first argument used when none is given).
- `MATRIX_RULES`: the class names among them that update matrices only (Muon).
- `TORCH_RULES`: name → class name in `keras_optx.torch` (torch's rules with torch's names).

>>> from keras_optx import _catalog
>>> _catalog.FLUX_RULES["adam"], _catalog.TRANSFORMS["clipnorm"], _catalog.TORCH_RULES["torch.adamw"]
('ADAM', ('ClipNorm', 1.0), 'AdamW')
"""

FLUX_RULES = {
    "descent": "Descent",
    "momentum": "Momentum",
    "nesterov": "Nesterov",
    "rmsprop": "RMSProp",
    "adam": "ADAM",
    "radam": "RADAM",
    "adamax": "AdaMax",
    "adagrad": "ADAGrad",
    "adadelta": "ADADelta",
    "amsgrad": "AMSGrad",
    "nadam": "NADAM",
    "adamw": "ADAMW",
    "oadam": "OADAM",
    "adabelief": "AdaBelief",
}
EXTRA_RULES = {  # rules beyond Flux v0.12, at their documented defaults (not in compare's default run)
    "lion": "Lion",
    "rprop": "Rprop",
    "adopt": "ADOPT",
    "ademamix": "AdEMAMix",
    "prodigy": "Prodigy",
    "muon": "Muon",
    "soap": "SOAP",
    "schedulefree-adamw": "ScheduleFreeAdamW",  # compare scores it at its averaged weights x (ScheduleFreeEval)
    "schedulefree-sgd": "ScheduleFreeSGD",
}
# Rules that update matrices only, by class name: `compare` gives them a model's 2-D variables and the
# rest (biases, norms' scales, tensors of rank > 2) to ADAMW(); the gallery runs its point as a 1×2
# matrix; bench_step and bench_memory time them on matrices.
MATRIX_RULES = ("Muon",)
# Rules that take variables of rank ≤ 2 only: `compare` gives tensors of rank > 2 (attention and
# convolution kernels) to ADAMW().
UP_TO_RANK_TWO = ("SOAP",)
TRANSFORMS = {
    "clipnorm": ("ClipNorm", 1.0),
    "clipglobalnorm": ("ClipGlobalNorm", 1.0),
    "clipvalue": ("ClipValue", 1.0),
    "weightdecay": ("WeightDecay", 1e-4),
    "expdecay": ("ExpDecay", 1.0),  # as a member it scales Δ: η = 1 as in Flux's Optimiser(ExpDecay(1), Descent())
    "invdecay": ("InvDecay", 1e-3),
}
TORCH_RULES = {"torch.sgd": "SGD", "torch.adam": "Adam", "torch.adamw": "AdamW"}
