"""Every `>>>` example in keras_optx's docstrings runs on this process's backend and prints what it says.

Each module's examples run with the module's own names plus `keras`, `keras_optx` and `np` (what
the examples are written against). Backend modules of other backends are left out.
"""

import doctest
import importlib
import pkgutil

import keras
import numpy as np
import pytest

import keras_optx

BACKEND = keras.backend.backend()
OTHER_BACKENDS = tuple(f"keras_optx._backends.{b}" for b in ("jax", "torch", "tensorflow") if b != BACKEND)
MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(keras_optx.__path__, "keras_optx.") if not name.startswith(OTHER_BACKENDS)
)


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        globs = {**vars(module), "keras": keras, "keras_optx": keras_optx, "np": np}
        for test in finder.find(module, name, globs=globs):
            if test.examples:
                yield test


EXAMPLES = {test.name: test for test in _examples()}


def test_every_public_class_has_an_example():
    documented = {name.rsplit(".", 1)[-1] for name in EXAMPLES}
    public = [n for n in keras_optx.__all__ if isinstance(getattr(keras_optx, n), type)]
    public += [f"torch.{n}" for n in keras_optx.torch.__all__]
    missing = [n for n in public if n.rsplit(".", 1)[-1] not in documented]
    assert not missing, f"public classes without a runnable >>> example: {missing}"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_example(name):
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(EXAMPLES[name], out=report.append)
    assert runner.failures == 0, "".join(report)
