"""keras_optx: the Flux.jl optimiser family, and PyTorch-compatible SGD/Adam, for Keras 3.

Runs on the JAX, PyTorch and TensorFlow backends. See the README for the rule table.
"""

from . import _checks as checks
from ._base import Rule, Transform
from ._grad import gradient, value_and_gradient
from ._hyper import adjust
from .adam import ADAM, ADAMW, NADAM, OADAM, RADAM, AdaBelief, AdaMax, AMSGrad
from .adaptive import ADADelta, ADAGrad, RMSProp
from .callbacks import HyperparameterScheduler
from .chain import Optimiser
from .descent import Descent, Momentum, Nesterov
from .guard import SkipNonFinite
from .lookahead import Lookahead
from .partition import Frozen, Partition
from .schedule_free import ScheduleFree, ScheduleFreeAdamW, ScheduleFreeEval, ScheduleFreeSGD
from .schedules import ExpDecay, InvDecay
from .sign import Lion, Rprop
from .transforms import ClipGlobalNorm, ClipNorm, ClipValue, WeightDecay
from . import torch as _torch_compat  # noqa: F401  registers keras_optx.torch's classes so saved models load
from ._backends import current as _backend

_backend.load_kernels()  # the running backend's kernels for the classes above (torch)

__version__ = "0.1.0"

__all__ = [
    "ADADelta",
    "ADAGrad",
    "ADAM",
    "ADAMW",
    "AMSGrad",
    "AdaBelief",
    "AdaMax",
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
    "NADAM",
    "Nesterov",
    "OADAM",
    "Optimiser",
    "Partition",
    "RADAM",
    "RMSProp",
    "Rprop",
    "Rule",
    "ScheduleFree",
    "ScheduleFreeAdamW",
    "ScheduleFreeEval",
    "ScheduleFreeSGD",
    "SkipNonFinite",
    "Transform",
    "WeightDecay",
    "adjust",
    "checks",
    "gradient",
    "value_and_gradient",
]
