"""The benchmarks the README points to still run, on this process's backend, and print their tables.

Only that they run and what their rows say is checked here; their figures are measured on an
idle machine and recorded in benchmarks/RESULTS.md (timing assertions would be noise).
"""

import os
import pathlib
import re
import subprocess
import sys

from conftest import BACKEND

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
RATIO = re.compile(r"^\d+\.\d\d$")


def _run(script, *args):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--backend", BACKEND, "--quick", *args],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| rule")]


def test_step_benchmark_prints_a_ratio_for_every_case():
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _run("bench_step.py", "--rules", "ADAM,chain", "--rounds", "2")]
    rules = {row[0] for row in rows}
    assert rules == {"ADAM", "chain(ClipNorm,WeightDecay,ADAM)"}
    for row in rows:
        assert RATIO.match(row[-1]) and RATIO.match(row[-2]), row  # ratio of medians, ratio of minima
    references = {row[2] for row in rows if row[0] == "ADAM"}
    assert "keras Adam" in references and any(r.startswith("bandwidth floor") for r in references)
    if BACKEND == "torch":
        assert {"torch.optim.Adam foreach", "torch.optim.Adam fused"} <= references
    if BACKEND == "jax":
        assert "optax.adam" in references


def test_fit_benchmark_prints_every_optimizer():
    rows = _run("bench_fit.py")
    names = [line.strip("|").split("|")[0].strip() for line in rows if not line.startswith("| optimizer")]
    assert {"no-op", "keras Adam", "keras_optx ADAM", "keras_optx chain(ClipNorm,WeightDecay,ADAM)"} <= set(names)
    if BACKEND == "torch":  # the apply-only column and its fused-Adam floor
        assert any(name.startswith("torch.optim.Adam(fused=True)") for name in names)


def test_memory_benchmark_reports_state_bytes_per_parameter():
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _run("bench_memory.py", "--rounds", "2")]
    table = {(row[0], row[1]): row for row in rows}
    adam = table[("ADAM", "keras_optx")]
    assert adam[2] == "8.00" and adam[3] == "4.00", adam  # two float32 moments; bfloat16 halves them
    assert table[("ADAM", "keras Adam")][2] == "8.00"
    assert table[("Momentum", "keras_optx")][2] == "4.00"
    if BACKEND == "jax":
        assert float(adam[4]) <= 8.00 / 5, adam  # shard_state over 8 host devices
        assert table[("ADAM", "optax.adam")][2] == "8.00"
    else:
        assert adam[4] == "–"
    if BACKEND == "torch":
        assert table[("ADAM", "torch.optim.Adam")][2] == "8.00"
        assert float(table[("chain(ClipNorm,WeightDecay,ADAM)", "keras_optx")][5]) <= 1.0  # one kept buffer at most
