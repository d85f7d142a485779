"""The README's quickstart runs as pasted, on the current backend."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_as_pasted(tmp_path):
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    mse = float(re.search(r"mse: (\S+)", result.stdout).group(1))
    assert mse < 0.05  # y = Σx has variance ≈ 0.67 before training
    assert "Optimiser(ClipNorm(thresh=1.0), WeightDecay(wd=0.0001), ADAM(learning_rate=0.01" in result.stdout
    assert (tmp_path / "quickstart.keras").exists()


def test_gradient_example_takes_a_descent_step():
    code = re.search(r"## Gradients by hand.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    import keras
    import numpy as np

    import keras_optx as ox

    scope = {"np": np, "keras": keras, "ox": ox}
    exec(code.replace("opt.apply(", "before = float(keras.ops.convert_to_numpy(loss()))\nopt.apply("), scope)
    assert float(keras.ops.convert_to_numpy(scope["loss"]())) < scope["before"]
