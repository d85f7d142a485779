"""Every tutorial notebook runs top to bottom on the current backend (its own `assert`s included).

Each notebook's reviewed source is the Jupytext percent-format `.py` beside it (`# %%` cells);
the `.ipynb` is generated from it (`jupytext --sync tutorials/*.py`) and must hold the same cells.
"""

import os
import pathlib

import keras
import pytest

nbformat = pytest.importorskip("nbformat", reason="the tutorials need nbformat/nbclient (pip install keras-optx[test])")
nbclient = pytest.importorskip("nbclient", reason="the tutorials need nbformat/nbclient (pip install keras-optx[test])")

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
BACKEND = keras.backend.backend()


def test_every_notebook_is_collected_and_committed_without_outputs():
    assert [p.name for p in NOTEBOOKS] == [
        "01_linear_regression.ipynb",
        "02_pytorch_loop_in_keras.ipynb",
        "03_custom_rule.ipynb",
        "04_composing.ipynb",
        "05_choosing_a_rule.ipynb",
        "06_fine_tuning.ipynb",
        "07_bfloat16.ipynb",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has saved outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_py_source(path):
    jupytext = pytest.importorskip("jupytext", reason="the notebooks' sources are read with jupytext (keras-optx[test])")
    source = path.with_suffix(".py")
    assert source.exists(), f"{path.name} has no percent-format source {source.name}"
    cells = lambda nb: [(cell.cell_type, cell.source) for cell in nb.cells]  # noqa: E731
    notebook = nbformat.read(path, as_version=4)
    assert cells(notebook) == cells(jupytext.read(source)), (
        f"{path.name} differs from {source.name}: edit the .py, then run `jupytext --sync tutorials/{source.name}`"
    )
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"  # paired: --sync keeps both


def test_every_source_has_its_notebook():
    sources = sorted(p.with_suffix(".ipynb") for p in TUTORIALS.glob("[0-9]*.py"))
    assert sources == NOTEBOOKS


# Every notebook already runs on torch in that process's site build (tests/test_docs.py: mkdocs
# executes each one and fails on any error); here each runs in the jax or the tensorflow process,
# the two sharing them (about a minute each on 2 cores, not two): the notebooks are backend-neutral,
# and the rules they call are checked on every backend by the rest of the suite.
# KERAS_OPTX_EVERY_TUTORIAL=1 runs all of them in any process.
RUNS_ON = {
    "01_linear_regression": "jax",
    "02_pytorch_loop_in_keras": "tensorflow",
    "03_custom_rule": "tensorflow",
    "04_composing": "tensorflow",
    "05_choosing_a_rule": "jax",
    "06_fine_tuning": "tensorflow",
    "07_bfloat16": "jax",
}


def test_every_notebook_has_a_backend_to_run_on():
    assert set(RUNS_ON) == {p.stem for p in NOTEBOOKS} and set(RUNS_ON.values()) == {"jax", "tensorflow"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    if RUNS_ON.get(path.stem) != BACKEND and not os.environ.get("KERAS_OPTX_EVERY_TUTORIAL"):
        where = "the torch process's site build (test_docs.py)" if BACKEND == "torch" else f"the {RUNS_ON.get(path.stem)} test process"
        pytest.skip(f"runs in {where}; KERAS_OPTX_EVERY_TUTORIAL=1 runs it here too")
    nb = nbformat.read(path, as_version=4)
    # The kernel is this interpreter's ipykernel (jupyter_client runs a `python` kernelspec
    # with sys.executable); it inherits the backend and runs in a scratch directory.
    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    # Tiny models: one OpenMP thread avoids torch's spin-waiting threads starving each other
    # on a busy 2-core CI machine (a 50× slowdown measured there); results are unchanged.
    env.setdefault("OMP_NUM_THREADS", "1")
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, on any error
    printed = "".join(
        output.get("text", "") for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert f"Keras backend: {BACKEND}" in printed
