"""The package's layout: backend code lives in `keras_optx/_backends/` and nowhere else.

Every module outside `_backends/` (rules, `Many`, the Keras glue, gradients, compare, gallery) is
parsed and may not import torch, JAX or TensorFlow, at module level or inside a function: what
differs per backend is reached through `keras_optx._backends.current`. (`keras_optx.torch`, the
torch-named rules, is a rule module: `from . import torch` names it, not the torch library.)
"""

import ast
import pathlib

import pytest

import keras_optx

PACKAGE = pathlib.Path(keras_optx.__file__).parent
BACKEND_LIBRARIES = {"torch", "jax", "jaxlib", "tensorflow"}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "_backends" not in p.relative_to(PACKAGE).parts)


def backend_imports(source):
    """`[(line, module)]` for each import of a backend library in `source`, however deeply nested."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] in BACKEND_LIBRARIES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] in BACKEND_LIBRARIES:
            found.append((node.lineno, node.module))
    return sorted(found)


def test_the_scan_finds_every_form_of_import():
    source = (
        "import keras\nimport torch.nn as nn\nfrom . import torch\nfrom keras_optx.torch import SGD\n"
        "def f():\n    from jax import numpy\n    if True:\n        import tensorflow as tf\n"
    )
    assert backend_imports(source) == [(2, "torch.nn"), (6, "jax"), (8, "tensorflow")]


def test_modules_were_found():
    names = {p.name for p in MODULES}
    assert {"_base.py", "_tensors.py", "_grad.py", "adam.py", "torch.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_backend_library_imported_outside_backends(path):
    found = backend_imports(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(PACKAGE)} imports {found}: move that code into keras_optx/_backends/"
