"""A gallery of every rule at work: paths over contour plots of 2-D test functions.

    python -m keras_optx.gallery --out DIR [--steps 300] [--functions rosenbrock,saddle,noisy_quadratic]

Runs on the backend Keras is set to (`KERAS_BACKEND`). Every rule of the package's catalog
(`keras_optx._catalog`: Flux's rules, the others, `keras_optx.torch`'s) and a few chains start from
the same point on each function (a rule that updates matrices only, Muon, moves it as a 1×2
matrix, where its orthogonalised momentum is the momentum's direction).
For every rule and function the learning rate is chosen from `RATES`: the one with the
lowest mean value of the function along the path (a path that leaves the plot far behind or
turns non-finite is out). The rate each panel uses is written in its title and in
`DIR/gallery.json`; a rate at an end of the grid is marked there (`"edge"`) and in the title,
since a better one may lie beyond it. One PNG per function, one panel per rule; progress goes to stderr.

The gradients are the functions' exact gradients, written in NumPy (the noisy quadratic adds
Gaussian noise from a fixed seed, the same noise for every rule), so every backend draws the
same picture up to float32 rounding.

All rates of a rule move together, one step for all of them (`run_paths`): on jax one compiled
`stateless_apply` mapped (`jax.vmap`) over the rates' optimizer states; on tensorflow every rate's
`apply` in one `tf.function`, traced once per rule; on torch one `Partition` over a point per rate,
one `apply` per step (rules a Partition refuses, ScheduleFree and Lookahead, one `apply` per rate).
Each path equals the one-`apply`-per-step path (`run_path`) up to float32 rounding.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time

import keras
import numpy as np

import keras_optx as ox
from keras_optx import _catalog
from keras_optx._backends import batched
from keras_optx import torch as ox_torch

# Rates tried for every rule on every function (half decades).
RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
STEPS = 300


@dataclasses.dataclass(frozen=True)
class Function:
    """A 2-D test function: its value, exact gradient, start, plot window and minimum."""

    name: str
    title: str
    value: object  # (x, y) arrays -> array
    grad: object  # (x, y) -> (gx, gy)
    start: tuple
    xlim: tuple
    ylim: tuple
    minima: tuple
    noise: float = 0.0
    log_levels: bool = False


def _rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(x, y):
    return -2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)


def _saddle(x, y):
    return 0.5 * x**2 + 0.25 * y**4 - 0.5 * y**2


def _saddle_grad(x, y):
    return x, y**3 - y


# An ill-conditioned quadratic, its axes turned by 30°: curvatures 1 and 20.
_C, _S = math.cos(math.pi / 6), math.sin(math.pi / 6)
_A = np.array([[_C, -_S], [_S, _C]]) @ np.diag([1.0, 20.0]) @ np.array([[_C, _S], [-_S, _C]])


def _quadratic(x, y):
    return 0.5 * (_A[0, 0] * x * x + 2 * _A[0, 1] * x * y + _A[1, 1] * y * y)


def _quadratic_grad(x, y):
    return _A[0, 0] * x + _A[0, 1] * y, _A[1, 0] * x + _A[1, 1] * y


FUNCTIONS = {
    "rosenbrock": Function(
        "rosenbrock",
        "Rosenbrock  f = (1 − x)² + 100·(y − x²)²",
        _rosenbrock,
        _rosenbrock_grad,
        start=(-1.2, 1.0),
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        minima=((1.0, 1.0),),
        log_levels=True,
    ),
    "saddle": Function(
        "saddle",
        "Saddle  f = x²/2 + y⁴/4 − y²/2  (saddle at 0, minima at (0, ±1))",
        _saddle,
        _saddle_grad,
        start=(1.8, 0.01),
        xlim=(-2.0, 2.0),
        ylim=(-1.6, 1.6),
        minima=((0.0, 1.0), (0.0, -1.0)),
    ),
    "noisy_quadratic": Function(
        "noisy_quadratic",
        "Noisy quadratic  f = ½·pᵀAp, A: curvatures 1 and 20 turned 30°; gradient + N(0, 1) noise",
        _quadratic,
        _quadratic_grad,
        start=(-2.5, 2.0),
        xlim=(-3.0, 3.0),
        ylim=(-3.0, 3.0),
        minima=((0.0, 0.0),),
        noise=1.0,
    ),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """A panel: its label and a function of the learning rate that builds a fresh optimizer."""

    label: str
    make: object
    shape: tuple = (2,)  # the point's variable: (1, 2) for a rule that updates matrices only (Muon)


def _rule_classes():
    """Every built-in rule, from the package's catalog (Flux's rules, the others, then keras_optx.torch's)."""
    found = [(name, getattr(ox, name)) for name in (*_catalog.FLUX_RULES.values(), *_catalog.EXTRA_RULES.values())]
    return found + [(f"torch.{name}", getattr(ox_torch, name)) for name in _catalog.TORCH_RULES.values()]


def _chains():
    """A few chains and wrappers (only those whose names this version of keras_optx has)."""
    chains = [
        Entry("ClipNorm(1) → ADAM", lambda lr: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(lr))),
        Entry("ClipValue(0.1) → Momentum", lambda lr: ox.Optimiser(ox.ClipValue(0.1), ox.Momentum(lr))),
        Entry("WeightDecay(0.1) → ADAM", lambda lr: ox.Optimiser(ox.WeightDecay(0.1), ox.ADAM(lr))),
        Entry(
            "ExpDecay(·, 0.5, 100) → Descent",
            lambda lr: ox.Optimiser(ox.ExpDecay(lr, 0.5, 100, 0.0), ox.Descent(1.0)),
        ),
    ]
    if hasattr(ox, "Lookahead"):
        chains.append(Entry("Lookahead(ADAM)", lambda lr: ox.Lookahead(ox.ADAM(lr))))
    return chains


def entries():
    """The panels: every rule (with its defaults but the rate), then the chains."""
    rules = []
    for label, cls in _rule_classes():
        if label == "torch.SGD":
            rules.append(Entry("torch.SGD(momentum=0.9)", lambda lr, c=cls: c(lr, momentum=0.9)))
        elif label in _catalog.MATRIX_RULES:
            # On a 1×2 matrix Muon's orthogonalised momentum is its direction: normalised momentum.
            rules.append(Entry(label, lambda lr, c=cls: c(learning_rate=lr), shape=(1, 2)))
        else:
            rules.append(Entry(label, lambda lr, c=cls: c(learning_rate=lr)))
    return rules + _chains()


def _noise(function, steps, seed):
    """The gradient noise of every path on `function` (steps, 2), or None: the same for every rule and rate."""
    return np.random.default_rng(seed).normal(0.0, function.noise, (steps, 2)) if function.noise else None


def _gradient(function, points, noise, i):
    """The float32 gradients (lanes, 2) at float64 `points` (lanes, 2), with step i's noise."""
    g = np.stack(function.grad(points[:, 0], points[:, 1]), axis=-1).astype("float64")
    if noise is not None:
        g = g + noise[i]
    return g.astype("float32")


def _gone(points):
    """For each point (…, 2): True when it has diverged, non-finite or beyond 1e3 (its path stops there)."""
    return ~np.all(np.isfinite(points), axis=-1) | (np.max(np.abs(points), axis=-1) > 1e3)


def run_path(entry, function, rate, steps=STEPS, seed=0):
    """The points visited (steps + 1, 2) by `entry` at `rate` on `function`: one `apply` per step."""
    opt = entry.make(rate)
    point = keras.Variable(np.asarray(function.start, "float32").reshape(entry.shape), name="point")
    noise = _noise(function, steps, seed)
    path = np.empty((steps + 1, 2))
    path[0] = function.start
    for i in range(steps):
        g = _gradient(function, path[i : i + 1], noise, i)
        opt.apply([g.reshape(entry.shape)], [point])
        path[i + 1] = keras.ops.convert_to_numpy(point).reshape(2)
        if _gone(path[i + 1]):
            path[i + 2 :] = np.nan
            break
    return path


def _accepted(entry, rates):
    """[(rate, optimizer)] for the rates `entry` accepts (a rate outside a rule's range raises at construction)."""
    made = []
    for rate in rates:
        try:
            made.append((rate, entry.make(rate)))
        except (TypeError, ValueError):
            pass
    return made


def _lanes(function, steps, seed, count, step):
    """Paths (count, steps + 1, 2) of `count` points moved together: `step(i, gradients, live)` applies step i to
    every point (a diverged point's gradient is zero) and returns the new points (count, 2)."""
    noise = _noise(function, steps, seed)
    paths = np.full((count, steps + 1, 2), np.nan)
    paths[:, 0] = function.start
    live = np.ones(count, bool)
    for i in range(steps):
        g = _gradient(function, np.where(live[:, None], paths[:, i], 0.0), noise, i)
        g[~live] = 0.0
        points = step(i, g, live)
        paths[live, i + 1] = points[live]
        live &= ~_gone(paths[:, i + 1])
        if not live.any():
            break
    return paths


def _run_partitioned(entry, function, made, steps, seed):
    """{rate: path}: every rate's optimizer in one Partition over one point per rate, one `apply` per step."""
    points = [
        keras.Variable(np.asarray(function.start, "float32").reshape(entry.shape), name=f"point_{k}")
        for k in range(len(made))
    ]
    try:
        batch = ox.Partition([(lambda v, p=p: v is p, opt) for p, (_, opt) in zip(points, made)])
        batch.build(points)
    except ValueError:  # a rule a Partition refuses (ScheduleFree*, Lookahead): one path per rate
        return {rate: run_path(entry, function, rate, steps, seed) for rate, _ in made}

    def step(i, g, live):  # one conversion each way per step, not one per rate
        batch.apply(keras.ops.unstack(keras.ops.convert_to_tensor(g.reshape(len(points), *entry.shape))), points)
        return keras.ops.convert_to_numpy(keras.ops.stack([p.value for p in points])).reshape(len(points), 2)

    return dict(zip((rate for rate, _ in made), _lanes(function, steps, seed, len(made), step)))


def run_paths(entry, function, rates=RATES, steps=STEPS, seed=0, compiled=None):
    """{rate: path} for every rate in `rates` that `entry` accepts, all rates moved together: on jax one
    compiled step mapped over the rates' states, elsewhere one Partition `apply` per step over a point per rate.
    Each path equals `run_path`'s up to float32 rounding (tests/test_gallery.py)."""
    made = _accepted(entry, rates)
    if not made:
        return {}
    if keras.backend.backend() == "jax":
        return batched.run_vmapped(entry, function, made, steps, seed, {} if compiled is None else compiled, _lanes)
    if keras.backend.backend() == "tensorflow":
        return batched.run_traced(entry, function, made, steps, seed, {} if compiled is None else compiled, _lanes)
    return _run_partitioned(entry, function, made, steps, seed)


def _score(function, path):
    """Mean f along the path; inf when it diverges or leaves the window far behind."""
    if not np.all(np.isfinite(path)):
        return math.inf
    span = max(function.xlim[1] - function.xlim[0], function.ylim[1] - function.ylim[0])
    centre = np.array([sum(function.xlim) / 2, sum(function.ylim) / 2])
    if np.max(np.abs(path - centre)) > 2 * span:
        return math.inf
    return float(np.mean(function.value(path[:, 0], path[:, 1])))


def tune(entry, function, steps=STEPS, rates=RATES, compiled=None):
    """(rate, path, score) of the best rate in `rates` for `entry` on `function` (the first of equal scores)."""
    best = None
    for rate, path in run_paths(entry, function, rates, steps, compiled=compiled).items():
        score = _score(function, path)
        if best is None or score < best[2]:
            best = (rate, path, score)
    return best


def grid_edge(rate, rates=RATES):
    """"lowest" or "highest" when `rate` is an end of the grid `rates` (a better one may lie beyond), else None."""
    if rate is None or len(rates) < 2:
        return None
    if rate == min(rates):
        return "lowest"
    if rate == max(rates):
        return "highest"
    return None


def plot(function, results, path, rates=RATES, columns=4):
    """One PNG: a contour panel per entry with its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(results) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 2.8 * rows + 0.6), squeeze=False)
    xs = np.linspace(*function.xlim, 200)
    ys = np.linspace(*function.ylim, 200)
    X, Y = np.meshgrid(xs, ys)
    Z = function.value(X, Y)
    if function.log_levels:
        levels = np.logspace(-1, math.log10(Z.max()), 14)
        norm = matplotlib.colors.LogNorm()
    else:
        levels = np.linspace(Z.min(), np.percentile(Z, 95), 14)
        norm = None
    for ax, result in zip(axes.flat, results):
        ax.contourf(X, Y, Z, levels=levels, norm=norm, cmap="Blues_r", alpha=0.55, extend="both")
        ax.contour(X, Y, Z, levels=levels, norm=norm, colors="0.55", linewidths=0.4)
        p = result["path"]
        ax.plot(p[:, 0], p[:, 1], "-", color="#d62728", lw=1.2, marker=".", ms=2.2)
        ax.plot(*function.start, "o", color="black", ms=4)
        for m in function.minima:
            ax.plot(*m, "*", color="gold", mec="black", mew=0.5, ms=10)
        ax.set_xlim(function.xlim)
        ax.set_ylim(function.ylim)
        ax.tick_params(labelsize=6.5, length=2, pad=1.5)
        rate = "no rate in the grid ran" if result["rate"] is None else f"η = {result['rate']:g}"
        edge = grid_edge(result["rate"], rates)
        if edge:
            rate += f" (grid's {edge})"
            ax.title.set_color("#a0522d")
        ax.set_title(f"{result['label']}\n{rate},  final f = {result['final']:.3g}", fontsize=8.5)
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    at_edge = sum(1 for result in results if grid_edge(result["rate"], rates))
    fig.suptitle(
        f"{function.title}\n{len(p) - 1} steps from {function.start} (●); ★ minimum; "
        f"η: the rate of {', '.join(f'{r:g}' for r in rates)} with the lowest mean f along the path"
        + (f"\n{at_edge} panel(s) chose a rate at the grid's edge (titles in brown): a better η may lie beyond it"
           if at_edge else ""),
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.75 if at_edge else 0.5) / (2.8 * rows + 0.6)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def make(out, functions=tuple(FUNCTIONS), steps=STEPS, rates=RATES, log=sys.stderr):
    """Run every entry on every function, write `<function>.png` and `gallery.json` into `out`."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    panels = entries()
    compiled = {}  # jax: each entry's compiled step, shared by the functions
    summary = {"backend": keras.backend.backend(), "steps": steps, "rates": list(rates), "functions": {}}
    for fname in functions:
        function = FUNCTIONS[fname]
        results = []
        began = time.perf_counter()
        for i, entry in enumerate(panels, 1):
            print(f"[gallery] {fname}: {i}/{len(panels)} {entry.label}", file=log, flush=True)
            best = tune(entry, function, steps, rates, compiled)
            if best is None:
                rate, p, final = None, np.array([function.start]), math.nan
            else:
                rate, p, _ = best
                final = float(function.value(*p[-1]))
            results.append({"label": entry.label, "rate": rate, "path": p, "final": final})
        plot(function, results, out / f"{fname}.png", rates)
        summary["functions"][fname] = {
            "title": function.title,
            "start": list(function.start),
            "image": f"{fname}.png",
            "rules": [
                {"label": r["label"], "rate": r["rate"], "final": r["final"], "edge": grid_edge(r["rate"], rates)}
                for r in results
            ],
        }
        print(f"[gallery] {fname}: {out / (fname + '.png')} ({time.perf_counter() - began:.1f} s)", file=log, flush=True)
    (out / "gallery.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m keras_optx.gallery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gallery", help="folder for the PNGs and gallery.json (default: gallery)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per path (default: {STEPS})")
    parser.add_argument(
        "--functions",
        default=",".join(FUNCTIONS),
        help=f"comma-separated, from {', '.join(FUNCTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.functions.split(",") if n.strip()]
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown or not names:
        parser.error(f"--functions: unknown {unknown}; choose from {', '.join(FUNCTIONS)}")
    if args.steps < 1:
        parser.error(f"--steps must be ≥ 1; received {args.steps}")
    make(args.out, names, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
