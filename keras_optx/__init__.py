"""keras_optx: the Flux.jl optimiser family, and PyTorch-compatible SGD/Adam, for Keras 3.

Runs on the JAX, PyTorch and TensorFlow backends. See the README for the rule table.
"""

from . import _checks as checks
from ._base import Rule, Slot
from ._transform import Transform
from ._grad import gradient, value_and_gradient
from ._hyper import adjust
from .adam import ADAM, ADAMW, NADAM, OADAM, RADAM, AdaBelief, AdaMax, AMSGrad
from .adaptive import ADADelta, ADAGrad, RMSProp
from .callbacks import HyperparameterScheduler
from .chain import Optimiser
from .descent import Descent, Momentum, Nesterov
from .guard import SkipNonFinite
from .lookahead import Lookahead
from .matrix import Muon
from .partition import Frozen, Partition
from .predicates import matrices
from .prodigy import Prodigy
from .recent import ADOPT, AdEMAMix, AdEMAMixAlphaWarmup, AdEMAMixBeta3Warmup, Cautious
from .schedule_free import ScheduleFree, ScheduleFreeAdamW, ScheduleFreeEval, ScheduleFreeSGD
from .schedules import ExpDecay, InvDecay
from .sign import Lion, Rprop
from .soap import SOAP
from .transforms import ClipGlobalNorm, ClipNorm, ClipValue, WeightDecay
from . import torch as _torch_compat  # noqa: F401  registers keras_optx.torch's classes so saved models load
from ._backends import NAME as _BACKEND

if _BACKEND == "torch":  # the torch kernels import the rule classes above and register themselves by class
    from ._backends.torch import kernels as _torch_kernels, transforms as _torch_transforms  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "ADADelta",
    "ADAGrad",
    "ADAM",
    "ADAMW",
    "ADOPT",
    "AMSGrad",
    "AdEMAMix",
    "AdEMAMixAlphaWarmup",
    "AdEMAMixBeta3Warmup",
    "AdaBelief",
    "AdaMax",
    "Cautious",
    "ClipGlobalNorm",
    "ClipNorm",
    "ClipValue",
    "Descent",
    "ExpDecay",
    "Frozen",
    "HyperparameterScheduler",
    "InvDecay",
    "Lion",
    "Lookahead",
    "Momentum",
    "Muon",
    "NADAM",
    "Nesterov",
    "OADAM",
    "Optimiser",
    "Partition",
    "Prodigy",
    "RADAM",
    "RMSProp",
    "Rprop",
    "Rule",
    "SOAP",
    "ScheduleFree",
    "ScheduleFreeAdamW",
    "ScheduleFreeEval",
    "ScheduleFreeSGD",
    "SkipNonFinite",
    "Slot",
    "Transform",
    "WeightDecay",
    "adjust",
    "checks",
    "gradient",
    "matrices",
    "value_and_gradient",
]
