"""The benchmarks the README points to still run, on this process's backend, and print their tables.

Only that they run and what their rows say is checked here; their figures are measured on an
idle machine and recorded in benchmarks/RESULTS.md (timing assertions would be noise).
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import BACKEND

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
RATIO = re.compile(r"^\d+\.\d\d$")
CPU_WALL = re.compile(r"^\d+\.\d\d / (\d+\.\d\d|—)$")


def _run(script, *args, quick=True):
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--backend", BACKEND, *(["--quick"] if quick else []), *args],
        capture_output=True, text=True, env=env, timeout=900,  # minutes only on a machine shared by many processes
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _rows(stdout):
    return [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| rule")]


def test_step_benchmark_prints_a_ratio_for_every_case():
    stdout = _run("bench_step.py", "--rules", "ADAM,chain", "--rounds", "2")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _rows(stdout)]
    rules = {row[0] for row in rows}
    assert rules == {"ADAM", "chain(ClipNorm,WeightDecay,ADAM)"}
    for row in rows:
        assert RATIO.match(row[-1]) and RATIO.match(row[-2]), row  # ratio of CPU medians, ratio of wall minima
        assert RATIO.match(row[-3]), row  # ratio of wall medians
        assert CPU_WALL.match(row[-4]), row  # CPU time / wall time, keras_optx / reference
    references = {row[2] for row in rows if row[0] == "ADAM"}
    assert "keras Adam" in references and any(r.startswith("memory floor: x += y, 28 B/param, 1 core(s)") for r in references)
    if BACKEND == "torch":
        assert {"torch.optim.Adam foreach", "torch.optim.Adam fused"} <= references
    if BACKEND == "jax":
        assert "optax.adam" in references
    if BACKEND in ("jax", "tensorflow"):  # the call's own cost, per rule and layout: ADAM over 4 variables passes
        # 4 + 4 + 8 slots + its step and hyperparameter arrays; the chain passes more
        for rule in rules:
            empties = {row[2] for row in rows if row[0] == rule and row[2].startswith("empty step, same ")}
            assert len(empties) == 2 and all(int(r.split()[3]) >= 4 * 4 for r in empties), (rule, empties)
    # The thread count is stated and enforced: affinity to one core, every thread of the process on it.
    assert "1 thread(s): process affinity cores [" in stdout
    (last,) = [line for line in stdout.splitlines() if line.startswith("threads at the end of the run:")]
    assert last.count("on core(s)") == 1 and "," not in last.split("on core(s)")[1].split(";")[0], last


def test_step_benchmark_refuses_more_threads_than_cores():
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_step.py"), "--backend", BACKEND, "--threads", "9999"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0 and "--threads must be between 1 and" in result.stderr


# The step benchmark (per-backend harnesses) runs in every backend's test process; the fit, memory and
# bfloat16 scripts' smoke runs (tiny sizes: what is checked is that they run and print their tables) one
# each, in the process where their backend-specific columns are: minutes of CI saved on 2 cores.
@pytest.mark.skipif(BACKEND != "torch", reason="its smoke run once, in the torch process (its apply-only column is torch's)")
def test_fit_benchmark_prints_every_optimizer():
    rows = _rows(_run("bench_fit.py"))
    names = [line.strip("|").split("|")[0].strip() for line in rows if not line.startswith("| optimizer")]
    assert {"no-op", "keras Adam", "keras_optx ADAM", "keras_optx chain(ClipNorm,WeightDecay,ADAM)"} <= set(names)
    for line in rows:
        if not line.startswith("| optimizer") and not line.startswith("| torch.optim"):
            assert RATIO.match(line.strip("|").split("|")[-1].strip()), line  # CPU/wall
    assert any(name.startswith("torch.optim.Adam(fused=True)") for name in names)  # the apply-only column's floor


@pytest.mark.skipif(BACKEND != "torch", reason="its smoke run once, in the torch process (its kept-buffer column is "
                    "torch's); the shard_state fraction on jax is held by test_scale.py")
def test_memory_benchmark_reports_state_bytes_per_parameter():
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _rows(_run("bench_memory.py", "--rounds", "2"))]
    table = {(row[0], row[1]): row for row in rows}
    adam = table[("ADAM", "keras_optx")]
    assert adam[2] == "8.00" and adam[3] == "4.00", adam  # two float32 moments; bfloat16 halves them
    assert table[("ADAM", "keras Adam")][2] == "8.00"
    assert table[("Momentum", "keras_optx")][2] == "4.00"
    assert adam[4] == "–"  # shard_state applies on jax only
    # Training in bfloat16 (weights + state + compensation, B/param): ADAM 12 → 6 → 8 with Kahan, gradients aside.
    for rule in ("ADAM", "chain(ClipNorm,ADAM)"):
        assert table[(rule, "float32 weights, float32 state, nearest")][2:] == ["4.00", "8.00", "0.00", "12.00"]
        assert table[(rule, "bfloat16 weights, bfloat16 state, nearest")][2:] == ["2.00", "4.00", "0.00", "6.00"]
        assert table[(rule, "bfloat16 weights, bfloat16 state, kahan")][2:] == ["2.00", "4.00", "2.00", "8.00"]
        assert table[(rule, "bfloat16 weights, bfloat16 state, stochastic")][2:] == ["2.00", "4.00", "0.00", "6.00"]
    assert table[("ADAM", "torch.optim.Adam")][2] == "8.00"
    for chain in ("chain(ClipNorm,WeightDecay,ADAM)", "chain(ClipNorm,RMSProp)", "chain(ClipNorm,NADAM)", "chain(ClipValue,ADADelta)"):
        assert float(table[(chain, "keras_optx")][5]) <= 1.0, table[(chain, "keras_optx")]  # one kept buffer at most
    for (name, implementation), row in table.items():  # every rule, small tensors (ADADelta's packed path)
        if implementation == "keras_optx":
            assert float(row[5]) <= 1.0, row


@pytest.mark.skipif(BACKEND != "torch", reason="gpu_run.py starts its own torch and jax processes: one run covers it, on the torch leg")
def test_gpu_run_dry_run_writes_every_part(tmp_path):
    """The one-command GPU run still runs (on the CPU, tiny sizes, tests only collected) and writes its table."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_run.py"), "--dry-run", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (tmp_path / "gpu_results.md").read_text()
    assert text.startswith("# keras_optx on the GPU (dry run, CPU): all parts ran and passed")
    for part in ("## Step benchmark, torch", "## Step benchmark, jax", "## Kernels per step, jax", "## Test suite, torch", "## Test suite, jax"):
        assert part in text, part
    assert "| ADAM | 4x250k |" in text and "torch.optim.Adam fused" in text and "optax.adam" in text
    assert re.search(r"## Test suite, jax .*\d+ tests collected", text)


@pytest.mark.skipif(BACKEND != "torch", reason="the check does not depend on the Keras backend: once, on the torch leg")
def test_gpu_run_without_a_gpu_says_so():
    if subprocess.run([sys.executable, "-c", "import torch, sys; sys.exit(torch.cuda.is_available())"]).returncode:
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_run.py"), "--out", "/nonexistent-not-written"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no GPU here" in result.stderr and "--dry-run" in result.stderr


@pytest.mark.skipif(BACKEND != "torch", reason="bench_ab.py times with bench_step.py's harness, run on every backend "
                    "above; this checks its own part (the earlier package taken out of git, the table) once")
def test_before_after_benchmark_prints_a_ratio_per_rule_and_layout():
    if subprocess.run(["git", "-C", str(BENCHMARKS.parent), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: bench_ab.py compares against a git revision")
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in _rows(_run("bench_ab.py", "--before", "HEAD", "--rules", "ADAM,chain", "--rounds", "2"))
            if not line.startswith("| layout")]
    assert [(row[0], row[1]) for row in rows] == [(layout, rule) for layout in ("4x250k", "200x1k") for rule in ("ADAM", "chain")]
    for row in rows:
        assert RATIO.match(row[4]) and RATIO.match(row[7]), row  # after / before: CPU medians, wall minima


@pytest.mark.skipif(BACKEND != "tensorflow", reason="its smoke run once, in the tensorflow process (the script has no "
                    "backend-specific part; the rounding itself is tested on every backend in test_rounding.py)")
def test_bf16_benchmark_prints_a_loss_and_ratio_for_every_rounding():
    """bench_bf16.py (tiny: two steps) prints, per rule, float32 and each rounding with a finite loss and its ratio."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _rows(_run("bench_bf16.py"))]
    assert {(row[0], row[1], row[2]) for row in rows} == {
        (rule, dtype, rounding) for rule in ("ADAM", "chain(ClipNorm,ADAM)")
        for dtype, rounding in (("float32", "–"), ("bfloat16", "nearest"), ("bfloat16", "kahan"), ("bfloat16", "stochastic"))
    }
    for row in rows:
        assert 0 < float(row[3]) < 10 and re.match(r"^\d+\.\d{3}$", row[4]), row
        if row[1] == "float32":
            assert row[4] == "1.000", row


@pytest.mark.skipif(BACKEND != "jax", reason="a tuned comparison of three rules: slow on every backend, and the script "
                    "runs compare(), tested on each backend in test_compare.py; its smoke run once, on the jax leg")
def test_transformer_comparison_prints_a_row_per_rule():
    """compare_transformer.py --quick: a row for every rule, each with a finite training loss and a test accuracy."""
    stdout = _run("compare_transformer.py")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in _rows(stdout) if line[2:3].isdigit()]
    rules = [row[1] for row in rows]
    # compare routes what each cannot take (rank-3 attention kernels) to ADAMW: nothing is refused
    assert sorted(rules) == ["ADAMW", "Muon", "SOAP"], rules
    for row in rows:
        loss, accuracy = float(row[3]), row[4]
        assert 0 <= loss < 100, row  # finite, not diverged
        assert re.match(r"^\d+\.\d%$", accuracy) and 0 <= float(accuracy[:-1]) <= 100, row
