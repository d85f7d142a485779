"""The main job, `python -m keras_optx.compare`: a real run, its table and plot, and its error paths."""

import os
import subprocess
import sys

import keras
import pytest

from keras_optx import compare

BACKEND = keras.backend.backend()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args, env_backend):
    env = dict(os.environ, KERAS_BACKEND=env_backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_OPTX_COMPARE_REEXEC", None)
    return subprocess.run(
        [sys.executable, "-m", "keras_optx.compare", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_tiny_run_prints_table_and_writes_png(tmp_path):
    # Start the process under another backend (a quick one to import): --backend must re-exec.
    other = "torch" if BACKEND == "jax" else "jax"
    png = tmp_path / "curves.png"
    args = ["--backend", BACKEND, "--rules", "descent,clipnorm+adam:0.01", "--epochs", "1", "--output", str(png)]
    result = _run(args, env_backend=other)
    assert result.returncode == 0, result.stderr[-3000:]

    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rule", "final", "loss", "test", "acc", "ms/step"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows) == ["Descent", "ClipNorm+ADAM(0.01)"]
    start_loss = 2.302585  # ln 10: cross-entropy of a near-uniform guess over ten digits
    for name, (loss, accuracy, ms) in rows.items():
        assert 0 < float(loss) < start_loss, name  # one epoch of training lowers the loss
        assert 10.0 < float(accuracy.rstrip("%")) <= 100.0, name  # better than chance
        assert float(ms) > 0, name

    assert f"backend {BACKEND}" in result.stderr  # the re-exec took effect
    assert "epoch 1/1" in result.stderr  # progress, one line per rule and epoch
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rules", "adam,bogus"], "unknown rule 'bogus'"),
        (["--epochs", "-3"], "--epochs"),
        (["--epochs", "zero"], "--epochs"),
        (["--rules", "adam:fast"], "bad number"),
        (["--rules", "adadelta:1.5"], "rho"),
        (["--rules", "clipnorm"], "chain it with a rule"),
        (["--rules", "adam++descent"], "empty rule name"),
        (["--backend", "numpy"], "--backend"),
        (["--output", "curves.jpg"], ".png"),
    ],
)
def test_bad_options_give_one_line_and_status_2(args, message, capsys):
    assert compare.main(["--backend", BACKEND, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-optx-compare: error:"), err
    assert message in err


def test_bad_option_in_a_real_process_has_no_traceback():
    result = _run(["--rules", "descent,nope", "--epochs", "1"], env_backend=BACKEND)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "keras-optx-compare: error: unknown rule 'nope'" in result.stderr
    assert result.stdout == ""


def test_rule_names_build_the_named_optimizers():
    import keras_optx as ox

    assert isinstance(compare.build_optimizer("ADAM"), ox.ADAM)
    assert float(compare.build_optimizer("momentum:0.05").learning_rate) == pytest.approx(0.05)
    chain = compare.build_optimizer("clipnorm:0.5+weightdecay+adam")
    assert isinstance(chain, ox.Optimiser)
    assert [type(r) for r in chain] == [ox.ClipNorm, ox.WeightDecay, ox.ADAM]
    assert chain[0].thresh == 0.5
    assert compare.display_name("clipnorm+adam:0.01") == "ClipNorm+ADAM(0.01)"
    assert len(compare.DEFAULT_RULES) == 14
    assert isinstance(compare.build_optimizer("lion:0.0003"), ox.Lion)
    assert isinstance(compare.build_optimizer("clipnorm+rprop"), ox.Optimiser)
    assert compare.display_name("rprop:0.01") == "Rprop(0.01)"
