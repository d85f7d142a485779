"""Compare optimizer rules on a model: `python -m keras_optx.compare`, or `compare(...)` on your own model.

With no arguments it trains a 64→64→10 MLP on scikit-learn's handwritten digits (bundled
with scikit-learn, no download) once per Flux rule, all from the same initial weights and
batch order, prints a ranked table (rule, rate, final training loss, test accuracy, ms per
step) and writes a PNG of the loss curves. Progress goes to stderr, the table to stdout.

    python -m keras_optx.compare                                   # the 14 Flux v0.12 rules, default backend
    python -m keras_optx.compare --backend jax --epochs 5 --rules adam,clipnorm+adam,torch.sgd:0.1
    python -m keras_optx.compare --tune --seeds 3                  # rates searched per rule, 3 seeds each

A rule is `NAME[:X]`: X replaces the first positional argument (the learning rate η for
most rules, ρ for ADADelta, the threshold for clipping, wd for weightdecay, η for
expdecay, γ for invdecay). `A+B+…` is the chain `Optimiser(A, B, …)`, e.g.
`clipnorm+weightdecay:1e-4+adam` or `expdecay+descent`. `lookahead[:K]+…` wraps the rest
in `Lookahead` (sync period K, default 6), e.g. `lookahead+radam`; `cautious+…` in `Cautious`,
e.g. `cautious+lion`. `lion`, `rprop`, `adopt`, `ademamix`, `prodigy`, `muon` and `soap` (beyond
Flux v0.12) are named but not in the default run; `muon` updates the 2-D variables and routes the
others to `ADAMW()`, `soap` all but tensors of rank > 2 (attention and convolution kernels), which go to
`ADAMW()`; their own η (not ADAMW's) is the one `--tune` searches.

In Python, `compare(build_model, data, rules, loss=..., ...)` runs the same comparison on
your model and data and returns a `Comparison` (`.table()`, `.markdown()`, `.to_dicts()`, `.plot(path)`).

The package: `api` (`compare`), `cli` (the command line), `search` (the rate search),
`report` (`Row`, `Comparison`: table and plot), `progress` (progress lines, time estimate),
`rules` (rule names and the rules a comparison runs), `data` (the digits, orders, splits).
"""

from .api import TUNE_FACTORS, compare
from .cli import BACKENDS, PROG, main, parser
from .data import _order, _split, load_digits, make_model  # noqa: F401  (_order, _split: the runs' order and split)
from .report import Comparison, Row
from .rules import DEFAULT_RULES, UsageError, build_optimizer, display_name, known_names

__all__ = [
    "BACKENDS",
    "Comparison",
    "DEFAULT_RULES",
    "PROG",
    "Row",
    "TUNE_FACTORS",
    "UsageError",
    "build_optimizer",
    "compare",
    "display_name",
    "known_names",
    "load_digits",
    "main",
    "make_model",
    "parser",
]

__test__ = {"compare": compare}  # doctest.testmod(keras_optx.compare) runs the example written in .api
