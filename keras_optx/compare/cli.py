"""The command line: `python -m keras_optx.compare` and the `keras-optx-compare` script."""

import argparse
import importlib.util
import os
import sys

import keras

from .api import compare
from .data import load_digits, make_model
from .progress import _stderr_line
from .rules import DEFAULT_RULES, UsageError, build_optimizer, display_name, known_names

PROG = "keras-optx-compare"
BACKENDS = ("jax", "torch", "tensorflow")
_REEXEC_FLAG = "KERAS_OPTX_COMPARE_REEXEC"
DESCRIPTION = "Compare optimizer rules on a model: `python -m keras_optx.compare`, or `compare(...)` on your own model."


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _int_at_least(low, words):
    """An argparse type: an integer ≥ `low`, with `words` naming it in the error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {words}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer ≥ 0")


def parser():
    """The argument parser of `python -m keras_optx.compare`."""
    p = _Parser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: KERAS_BACKEND or Keras's default)")
    p.add_argument(
        "--rules",
        default=",".join(DEFAULT_RULES),
        help="comma-separated NAME[:X] or chains A+B (default: the 14 Flux v0.12 rules); names: " + ", ".join(known_names()),
    )
    p.add_argument("--epochs", type=_positive_int, default=20, help="epochs per rule (default 20)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="examples per step (default 64)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of weights, batch order and split (default 0)")
    p.add_argument(
        "--seeds", type=_positive_int, default=1,
        help="runs per rule, seeds SEED … SEED+N−1: the table shows mean ± std, the plot a band (default 1)",
    )
    p.add_argument(
        "--tune", action="store_true",
        help="search each rule's learning rate first (successive halving over ×0.01…×100 its default, "
        "on 20%% of the training data held out; never the test set)",
    )
    p.add_argument("--tune-epochs", type=_positive_int, default=3, help="epochs of the search's last round (default 3)")
    p.add_argument("--output", default="keras_optx_compare.png", help="PNG file for the loss curves")
    return p


def _reexec(backend, argv):
    """Keras fixes its backend at import (already done by `import keras_optx`): restart under `backend`."""
    if os.environ.get(_REEXEC_FLAG):
        raise UsageError(f"could not switch Keras to the {backend} backend (is it installed?)")
    env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_FLAG: "1"})
    command = [sys.executable, "-m", "keras_optx.compare", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, command, env)
    import subprocess

    sys.exit(subprocess.call(command, env=env))


def _specs(text):
    """`--rules` → the list of specs; an empty entry is named by its position."""
    specs = [s.strip() for s in text.split(",")]
    for position, spec in enumerate(specs, 1):
        if not spec:
            raise UsageError(
                f"--rules: empty rule name at position {position} of {text!r} "
                "(two commas in a row, or a comma at the start or end)"
            )
        build_optimizer(spec)  # refuse bad names and values before any work
    return specs


def main(argv=None):
    """Entry point of `python -m keras_optx.compare` and the `keras-optx-compare` script.

    Returns the exit status: 0, 2 for a bad option, 130 when interrupted (Ctrl-C), after
    printing and plotting what finished.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        specs = _specs(args.rules)
        if not args.output.lower().endswith(".png"):
            raise UsageError(f"--output must name a .png file; received {args.output!r}")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise UsageError(f"--output: directory {out_dir!r} does not exist")
        if args.backend and args.backend != keras.backend.backend():
            _reexec(args.backend, argv)
        for module in ("sklearn", "matplotlib"):
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"{PROG} needs {module}: pip install 'keras-optx[compare]'")
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    (x, y), test = load_digits(args.seed)
    n_classes = int(max(y.max(), test[1].max())) + 1
    seeds = list(range(args.seed, args.seed + args.seeds))
    _stderr_line(
        f"{PROG}: backend {keras.backend.backend()}, digits {len(x)} train / {len(test[0])} test, "
        f"{len(specs)} rules × {args.epochs} epochs × {len(seeds)} seed(s), batch {args.batch_size}"
        + (f", rates searched ({args.tune_epochs} epochs)" if args.tune else "")
    )
    result = compare(
        lambda: make_model(x.shape[1], n_classes=n_classes),
        (x, y),
        {display_name(spec): spec for spec in specs} if len(set(map(display_name, specs))) == len(specs) else specs,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=seeds,
        tune=args.tune,
        tune_epochs=args.tune_epochs,
        test_data=test,
        progress=_stderr_line,
    )
    print(result.table(), flush=True)
    if result.rows:
        title = f"keras_optx rules on digits ({keras.backend.backend()}, {args.epochs} epochs"
        title += ", tuned η)" if args.tune else ")"
        result.plot(args.output, title)
        _stderr_line(f"{PROG}: wrote {args.output}")
    return 130 if result.interrupted else 0
