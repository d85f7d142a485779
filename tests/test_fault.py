"""Fault tolerance: a `model.fit` killed mid-epoch (`os._exit` from inside, no cleanup) and
restarted with `keras.callbacks.BackupAndRestore` ends bit-identical to an uninterrupted fit:
every weight and every optimizer variable (the chain's slots, `iterations`, the rate).

One killed and one resumed process per backend (tests/_fault.py), a few seconds each.
"""

import os
import subprocess
import sys

import keras
import numpy as np

from _fault import EPOCHS, STEPS_PER_EPOCH, run

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(mode, folder):
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "_fault.py"), mode, folder],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_killed_fit_resumes_bit_identical(tmp_path):
    killed = _worker("killed", str(tmp_path))
    assert killed.returncode == 3, f"the run was not killed where planned:\n{killed.stderr[-3000:]}"
    assert os.listdir(tmp_path / "backup"), "BackupAndRestore left no backup"
    resumed = _worker("resumed", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with np.load(tmp_path / "resumed.npz") as saved:
        got = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    expected = run()
    assert len(got) == len(expected)
    # every update once: the killed epoch's applied updates were rolled back, then redone
    assert int(expected[-1]) == int(got[-1]) == EPOCHS * STEPS_PER_EPOCH
    for i, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_array_equal(a, b, err_msg=f"array {i} (4 weights, then the optimizer's variables)")
