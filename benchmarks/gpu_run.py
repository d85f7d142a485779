"""One command for a machine with an NVIDIA GPU: step benchmark, compiled kernel counts and test suite, as a table.

    python benchmarks/gpu_run.py --out DIR           # on the GPU; writes DIR/gpu_results.md (and prints it)
    python benchmarks/gpu_run.py --dry-run           # CPU, tiny sizes, 2 rounds: checks that every part still runs

It runs, each in its own process (Keras reads its backend once per process):

1. `bench_step.py` on torch and on jax, on the GPU (Keras places variables there), rules
   `--rules` (default: all), next to torch.optim fused/foreach and optax, with a device
   memory floor (`x += y` on the GPU over the bytes the rule must move).
2. The kernels of one compiled step on jax: the instructions of the optimized HLO's entry
   computation that launch work on the device (fusions, custom calls, copies, ...), for
   keras_optx, Keras's built-in and optax, over 4 and over 200 variables. On a GPU each is a
   kernel launch (~2-5 us), so over many small variables their count, not the arithmetic,
   sets the step time: XLA's horizontal fusion may put all variables of one shape into one.
3. The test suite on torch and on jax (`pytest tests -q`), on the GPU.

Exit status 0 when every part ran and passed; the table says which did not.

Installing a GPU build (anywhere with a package registry)::

    pip install "jax[cuda12]" optax                  # jax with CUDA 12 wheels (or "jax[cuda13]")
    pip install torch --index-url https://download.pytorch.org/whl/cu126
    pip install keras==3.15.1 pytest                 # and this repository (PYTHONPATH=. or pip install -e .)

On a machine that cannot reach a registry but has CUDA torch and jax (an image with both),
bring the missing pure-Python and binary wheels along: on a machine with the registry run
`python benchmarks/gpu_run.py --download-wheels .whl` (keras, namex, optree for CPython 3.12,
manylinux x86-64), take the folder along, and start with `--wheels .whl`: they are installed
with `pip install --no-index --no-deps --target` into a temporary folder put on PYTHONPATH.

Without a GPU the script stops with status 2 and says so, unless `--dry-run` (which forces
the CPU, `--quick` sizes, 2 rounds, ADAM only, and collects the tests without running them:
the suite runs this dry mode itself, in tests/test_benchmarks.py).
"""

import argparse
import datetime
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
WHEELS = ["keras==3.15.1", "namex==0.1.0", "optree==0.17.0"]

# Instructions of an entry computation that launch no device work of their own.
_NO_KERNEL = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "after-all", "copy-done",
              "send-done", "recv-done", "all-reduce-done", "partition-id", "replica-id", "opt-barrier"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or ".", help="folder for gpu_results.md (default $OUT or .)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 2 rounds, tests collected only")
    parser.add_argument("--rules", default=None, help="bench_step.py rule subset (default: all; dry run: ADAM)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (default 9; dry run 2)")
    parser.add_argument("--wheels", default=None, help="folder of wheels to install first (offline)")
    parser.add_argument("--download-wheels", default=None, metavar="DIR", help="download the wheels for --wheels and stop")
    parser.add_argument("--test-timeout", type=int, default=420, help="seconds per backend for the test suite")
    parser.add_argument("--hlo-kernels", action="store_true", help=argparse.SUPPRESS)  # internal: one jax process
    args = parser.parse_args()
    if args.download_wheels:
        return download_wheels(args.download_wheels)
    if args.hlo_kernels:
        return print_hlo_kernels(quick=args.dry_run)

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.wheels:
        site = install_wheels(args.wheels)
        env["PYTHONPATH"] = os.pathsep.join([site, env["PYTHONPATH"]])
    if args.dry_run:
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    else:
        missing = gpu_missing(env)
        if missing:
            sys.stderr.write(
                "gpu_run.py: no GPU here (" + "; ".join(missing) + ").\n"
                "Needs an NVIDIA GPU with CUDA builds of torch and jax, e.g.\n"
                '    pip install "jax[cuda12]" optax\n'
                "    pip install torch --index-url https://download.pytorch.org/whl/cu126\n"
                "Use --dry-run to check the script on the CPU.\n")
            return 2

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rules = args.rules or ("ADAM" if args.dry_run else None)
    rounds = args.rounds or (2 if args.dry_run else 9)
    parts, failed = [], []
    parts.append(machine(env, args.dry_run))

    for backend in ("torch", "jax"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--backend", backend, "--rounds", str(rounds)]
        cmd += ["--rules", rules] if rules else []
        cmd += ["--quick"] if args.dry_run else []
        ok, text, seconds = run(cmd, env, backend, timeout=600)
        parts.append(f"## Step benchmark, {backend} ({seconds:.0f} s)\n\n    {' '.join(cmd[1:])}\n{text}")
        failed += [] if ok else [f"bench_step {backend}"]

    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--hlo-kernels"] + (["--dry-run"] if args.dry_run else [])
    ok, text, seconds = run(cmd, env, "jax", timeout=600)
    parts.append(f"## Kernels per step, jax, from the compiled HLO ({seconds:.0f} s)\n{text}")
    failed += [] if ok else ["HLO kernel count"]

    for backend in ("torch", "jax"):
        # The suite's own dry run of this script (tests/test_benchmarks.py) is left out: this is the real one.
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests"), "-k", "not gpu_run_dry_run"]
        if args.dry_run:  # the command runs and reports: one small file, collected only
            cmd = cmd[:6] + [str(ROOT / "tests" / "test_tensors.py"), "--collect-only"]
        ok, text, seconds = run(cmd, env, backend, timeout=args.test_timeout, tail=40)
        summary = next((line for line in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|error|tests? collected)", line)), "no summary line")
        parts.append(f"## Test suite, {backend} ({seconds:.0f} s): {summary.strip()}\n\n```\n{text.strip()}\n```\n")
        failed += [] if ok else [f"tests {backend}"]

    status = "all parts ran and passed" if not failed else "FAILED: " + ", ".join(failed)
    document = f"# keras_optx on the GPU{' (dry run, CPU)' if args.dry_run else ''}: {status}\n\n" + "\n".join(parts)
    path = out / "gpu_results.md"
    path.write_text(document)
    print(document)
    print(f"\nwritten: {path}")
    return 1 if failed else 0


def run(cmd, env, backend, timeout, tail=None):
    """Run one part in its own process; (ok, its output or its last `tail` lines, seconds)."""
    start = time.perf_counter()
    try:
        result = subprocess.run(cmd, env=dict(env, KERAS_BACKEND=backend), capture_output=True, text=True,
                                timeout=timeout, cwd=ROOT)
        ok, text = result.returncode == 0, result.stdout
        if not ok:
            text += f"\n(exit status {result.returncode})\n{result.stderr[-3000:]}"
    except subprocess.TimeoutExpired as e:
        ok, text = False, f"{(e.stdout or b'').decode() if isinstance(e.stdout, bytes) else (e.stdout or '')}\n(stopped after {timeout} s)"
    if tail:
        text = "\n".join(text.splitlines()[-tail:])
    return ok, text, time.perf_counter() - start


def gpu_missing(env):
    """What is missing for a GPU run: an empty list when torch and jax both see a GPU."""
    probe = ("import torch, jax\n"
             "print('torch', torch.cuda.is_available())\n"
             "print('jax', jax.default_backend() == 'gpu')\n")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        return [f"torch or jax does not import: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'}"]
    seen = dict(line.split() for line in result.stdout.splitlines())
    return [f"{lib} sees no CUDA device" for lib in ("torch", "jax") if seen.get(lib) != "True"]


def machine(env, dry_run):
    probe = ("import torch, jax, keras, sys, platform\n"
             "print(f'Python {platform.python_version()}, keras {keras.__version__}, torch {torch.__version__}, jax {jax.__version__}')\n"
             "print('torch device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')\n"
             "print('jax devices:', jax.devices())\n")
    result = subprocess.run([sys.executable, "-c", probe], env=dict(env, KERAS_BACKEND="jax"), capture_output=True, text=True)
    smi = ""
    if not dry_run:
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            smi = "nvidia-smi not available"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    lines = [f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: {cpu}, "
             f"{os.cpu_count()} cores", *(result.stdout.strip().splitlines() or [result.stderr[-500:]])]
    if smi:
        lines.append(f"nvidia-smi: {smi}")
    return "## Machine\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


# ------------------------------------------------------------------------------------ HLO kernels
def print_hlo_kernels(quick):
    """In a jax process: kernels per compiled step, keras_optx next to Keras and optax."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import numpy as np
    import optax

    import keras
    import keras_optx as ox

    K = keras.optimizers
    rules = {
        "Descent": (lambda: ox.Descent(0.01), lambda: K.SGD(0.01), lambda: optax.sgd(0.01)),
        "Momentum": (lambda: ox.Momentum(0.01, 0.9), lambda: K.SGD(0.01, momentum=0.9), lambda: optax.sgd(0.01, momentum=0.9)),
        "Nesterov": (lambda: ox.Nesterov(0.01, 0.9), lambda: K.SGD(0.01, momentum=0.9, nesterov=True),
                     lambda: optax.sgd(0.01, momentum=0.9, nesterov=True)),
        "ADAM": (lambda: ox.ADAM(), lambda: K.Adam(), lambda: optax.adam(0.001)),
        "NADAM": (lambda: ox.NADAM(), lambda: K.Nadam(), lambda: optax.nadam(0.001)),
        "ADAMW": (lambda: ox.ADAMW(0.001, decay=1e-4), lambda: K.AdamW(weight_decay=0.1), lambda: optax.adamw(0.001, weight_decay=0.1)),
        "chain(ClipNorm,WeightDecay,ADAM)": (lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM()), None, None),
    }
    if quick:
        rules = {k: rules[k] for k in ("Momentum", "ADAM")}
    layouts = {"4x250k": (4, 250_000), "200x1k": (200, 1_000)} if quick else {"4x2.5M": (4, 2_500_000), "200x10k": (200, 10_000)}
    print(f"\njax {jax.__version__} on {jax.devices()[0].device_kind}. Kernels: instructions of the optimized HLO's "
          "entry computation other than parameters, tuples, constants and bitcasts (fusions, custom calls, copies, "
          "loops). Each is one launch on a GPU.\n")
    print("| rule | layout | keras_optx kernels | by kind | Keras built-in | optax |")
    print("|---|---|---:|---|---:|---:|")
    for name, (ours, builtin, make_optax) in rules.items():
        for layout, (count, size) in layouts.items():
            shapes = [(size,)] * count
            mine, kinds = _keras_kernels(keras, jax, np, ours(), shapes)
            theirs = _keras_kernels(keras, jax, np, builtin(), shapes)[0] if builtin else "—"
            optaxs = _optax_kernels(jax, optax, np, make_optax(), shapes) if make_optax else "—"
            by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))
            print(f"| {name} | {layout} | {mine} | {by_kind} | {theirs} | {optaxs} |")
    return 0


def _count(hlo_text):
    """(kernels, {opcode: count}) in the ENTRY computation of an optimized HLO module's text."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}")]
    kinds = {}
    for line in entry.splitlines()[1:]:
        if "=" not in line:
            continue
        # The opcode follows the result's shape: "%name = f32[10]{0} fusion(...)" or "= (f32[10], ...) fusion(".
        opcode = re.findall(r"\b([a-z][a-z0-9-]*)\(", line.split("=", 1)[1])
        if not opcode:
            continue
        opcode = opcode[0]
        if opcode in _NO_KERNEL:
            continue
        kinds[opcode] = kinds.get(opcode, 0) + 1
    return sum(kinds.values()), kinds


def _keras_kernels(keras, jax, np, opt, shapes):
    variables = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
    grads = [jax.numpy.ones(s, "float32") for s in shapes]
    opt.build(variables)
    opt_vars, train = [v.value for v in opt.variables], [v.value for v in variables]
    apply = jax.jit(lambda o, t, g: opt.stateless_apply(o, g, t)[::-1], donate_argnums=(0, 1))
    return _count(apply.lower(opt_vars, train, grads).compile().as_text())


def _optax_kernels(jax, optax, np, tx, shapes):
    params = [jax.numpy.zeros(s, "float32") for s in shapes]
    grads = [jax.numpy.ones(s, "float32") for s in shapes]

    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(update, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
    return _count(compiled.as_text())[0]


# ------------------------------------------------------------------------------------ wheels
def download_wheels(folder):
    """The wheels a CUDA image with torch and jax but no Keras needs (CPython 3.12, manylinux x86-64)."""
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                             "manylinux2014_x86_64", "manylinux1_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "-d", folder, *WHEELS]
    print(" ".join(cmd))
    return subprocess.run(cmd).returncode


def install_wheels(folder):
    """Install every wheel in `folder` (no index, no dependencies) into a temporary folder; return it."""
    site = tempfile.mkdtemp(prefix="gpu_run_site_")
    wheels = sorted(str(p) for p in pathlib.Path(folder).glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no .whl files there")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", site, *wheels], check=True)
    sys.path.insert(0, site)
    return site


if __name__ == "__main__":
    sys.exit(main())
