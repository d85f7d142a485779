"""Time one optimizer step of keras_optx as it was at an earlier commit against this checkout's, in one process.

    .venv/bin/python benchmarks/bench_ab.py --before 595a8c5 --backend torch          # 4x2.5M and 200x10k
    .venv/bin/python benchmarks/bench_ab.py --before 595a8c5 --backend jax --quick    # 10x smaller tensors
    .venv/bin/python benchmarks/bench_ab.py --before HEAD~3 --backend tensorflow --rules NADAM,ADAMW

What a change costs per step, as one table of ratios after / before. The package at `--before` is
taken out of git (`git archive`) into a temporary folder as `keras_optx_before` (every `keras_optx`
name in it renamed, so that both versions import and register their classes side by side) and
imported next to this checkout's `keras_optx`. Each rule is built from both versions on the same
sizes and timed with `bench_step.py`'s harness and `interleave`: the two cases alternate round
after round in one process, so a change in the machine's load falls on both. The ratio of CPU
medians is the steadier figure on a shared machine (see bench_step.py); read ±3% as equal.
"""

import argparse
import gc
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

import bench_step
from _common import limit_threads

ROOT = pathlib.Path(__file__).resolve().parent.parent


def factories(ox):
    """rule name -> a factory of it from the keras_optx module `ox` (None where that version lacks it)."""
    made = {
        "Descent": lambda: ox.Descent(0.01),
        "Momentum": lambda: ox.Momentum(0.01, 0.9),
        "Nesterov": lambda: ox.Nesterov(0.01, 0.9),
        "RMSProp": lambda: ox.RMSProp(),
        "ADAM": lambda: ox.ADAM(),
        "ADADelta": lambda: ox.ADADelta(),
        "NADAM": lambda: ox.NADAM(),
        "ADAMW": lambda: ox.ADAMW(0.001, decay=1e-4),
        "torch.Adam": lambda: ox.torch.Adam(),
        "torch.AdamW": lambda: ox.torch.AdamW(weight_decay=0.1),
        "chain": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM()),
        "ClipNorm>NADAM": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.NADAM()),
        "ClipValue>ADADelta": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.ADADelta()),
        "ClipValue>ADAM": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.ADAM()),
    }
    return {name: _available(make) for name, make in made.items()}


def _available(make):
    """`make`, or None where that version of the package lacks a name it uses."""
    try:
        make()
    except AttributeError:
        return None
    return make


NAMES = list(factories(None))


def extract(rev, into):
    """keras_optx at git revision `rev`, written under `into` as the package `keras_optx_before`."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "keras_optx"],
                                 capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"--before {rev!r}: `git archive` of keras_optx at that revision failed: "
                 f"{getattr(error, 'stderr', b'').decode().strip() or error}")
    path = pathlib.Path(into, "archive.tar")
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        tar.extractall(into, filter="data")
    package = pathlib.Path(into, "keras_optx_before")
    pathlib.Path(into, "keras_optx").rename(package)
    for source in package.rglob("*.py"):
        source.write_text(re.sub(r"\bkeras_optx\b", "keras_optx_before", source.read_text()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision to compare against, e.g. 595a8c5 or HEAD~1")
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow"], required=True)
    parser.add_argument("--quick", action="store_true", help="10x smaller tensors")
    parser.add_argument("--rounds", type=int, default=21, help="timed rounds per case (median taken), default 21")
    parser.add_argument("--rules", default=None, help="comma-separated subset of: " + ", ".join(NAMES))
    parser.add_argument("--threads", type=int, default=1, help="CPU cores (affinity) and threads per library, default 1")
    args = parser.parse_args()
    unknown = set(args.rules.split(",")) - set(NAMES) if args.rules else set()
    if unknown:
        parser.error(f"--rules: unknown {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    limit_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        extract(args.before, folder)
        sys.path.insert(0, folder)
        sys.path.insert(0, str(ROOT))
        run(args)


def run(args):
    import keras
    import numpy as np

    import keras_optx as after
    import keras_optx_before as before

    harness = {"torch": bench_step.TorchHarness, "jax": bench_step.JaxHarness, "tensorflow": bench_step.TfHarness}[args.backend](np)
    bench_step.header(args.backend, keras, args.rounds, args.threads, harness.describe())
    print(f"before: keras_optx at {args.before}; after: {pathlib.Path(after.__file__).parent}\n")
    old, new = factories(before), factories(after)
    names = args.rules.split(",") if args.rules else list(new)
    layouts = bench_step.QUICK_LAYOUTS if args.quick else bench_step.LAYOUTS
    print("| layout | rule | before ms (CPU median) | after ms (CPU median) | after / before, CPU medians "
          "| before ms (wall min) | after ms (wall min) | after / before, wall minima |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for layout, (count, total) in layouts.items():
        for name in names:
            if old[name] is None:
                print(f"| {layout} | {name} | — | — | not in {args.before} | — | — | — |")
                continue
            cases = {"before": harness.keras_case(old[name](), count, total),
                     "after": harness.keras_case(new[name](), count, total)}
            times = bench_step.interleave(cases, args.rounds, harness.sync)
            b, a = times["before"], times["after"]
            print(f"| {layout} | {name} | {b[2]:.3f} | {a[2]:.3f} | {a[2] / b[2]:.2f} | {b[1]:.3f} | {a[1]:.3f} "
                  f"| {a[1] / b[1]:.2f} |", flush=True)
            cases.clear()
            gc.collect()
    print(f"\nthreads at the end of the run: {bench_step.thread_check()}; load average at the end "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
