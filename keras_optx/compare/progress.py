"""Progress of a comparison: step timing, per-epoch lines and a time estimate."""

import math
import sys
import time

import keras


class _Timer(keras.callbacks.Callback):
    """Wall time of each training step; the loss is read back so async backends finish the step."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(keras.ops.convert_to_numpy(logs["loss"]))
        self.times.append(time.perf_counter() - self._start)


class _Epochs(keras.callbacks.Callback):
    """Reports each epoch of a full run."""

    def __init__(self, progress, describe, epochs):
        super().__init__()
        self.progress, self.describe, self.epochs = progress, describe, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        loss = float((logs or {}).get("loss", math.nan))
        self.progress.say(f"{self.describe}  epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  ({seconds:.2f} s)")


class _Progress:
    """Progress lines with a time estimate.

    Work is counted in epochs of two kinds, the search's (short fits, each followed by a
    validation pass) and the full runs' (each run's first epoch also compiles); the estimate
    is the epochs left of each kind times the seconds per epoch measured so far for it
    (everything included), or for the other kind before the first of its own finishes.
    """

    KINDS = ("search", "run")

    def __init__(self, report):
        self.report = report
        self.left = dict.fromkeys(self.KINDS, 0)
        self.epochs = dict.fromkeys(self.KINDS, 0)
        self.seconds = dict.fromkeys(self.KINDS, 0.0)

    def plan(self, kind, epochs):
        self.left[kind] += epochs

    def done(self, kind, epochs, seconds, planned):
        self.left[kind] -= planned
        self.epochs[kind] += epochs
        self.seconds[kind] += seconds

    def eta(self):
        if not any(self.epochs.values()):
            return "ETA …"
        rate = {k: self.seconds[k] / self.epochs[k] for k in self.KINDS if self.epochs[k]}
        fallback = sum(self.seconds.values()) / sum(self.epochs.values())
        left = sum(max(self.left[k], 0) * rate.get(k, fallback) for k in self.KINDS)
        return f"ETA {int(left // 60)}m{int(left % 60):02d}s" if left >= 60 else f"ETA {left:.0f}s"

    def say(self, line):
        if self.report is not None:
            self.report(f"{line}  [{self.eta()}]")


def _stderr_line(line):
    print(line, file=sys.stderr, flush=True)
