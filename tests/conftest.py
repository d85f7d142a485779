"""Shared test setup. Each pytest process runs one Keras backend (KERAS_BACKEND)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.clear_session(free_memory=False)  # the gc.collect() it skips costs ~1 s per test
    keras.config.disable_interactive_logging()
    keras.utils.set_random_seed(0)
    yield
