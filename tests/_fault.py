"""Worker of tests/test_fault.py: `python tests/_fault.py MODE DIR` on the backend in KERAS_BACKEND.

MODE "killed": `model.fit` with a chain and `keras.callbacks.BackupAndRestore(DIR/backup)`; in the
middle of the second epoch (after some of its updates were applied) the process ends itself with
`os._exit` (no cleanup, no `on_train_end`). MODE "resumed": the same script again, from scratch;
BackupAndRestore restores the last backup and the fit runs to its end; the final weights and every
optimizer variable go to DIR/resumed.npz. `run(...)` is also what the test calls for the
uninterrupted run.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

EPOCHS, STEPS_PER_EPOCH, BATCH = 3, 4, 8
KILL_AT = (1, 2)  # (epoch, batch): after this batch's update, the killed run ends


def run(backup_dir=None, kill=False):
    """Fit, return [weights…, optimizer variables…, iterations] as NumPy arrays."""
    import keras

    import keras_optx as ox

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    rng = np.random.default_rng(0)
    model.set_weights([(0.5 * rng.normal(size=w.shape)).astype("float32") for w in model.get_weights()])
    chain = ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-3), ox.ADAM(ox.ExpDecay(0.05, 0.5, 5, 1e-3)))
    model.compile(optimizer=chain, loss="mse")
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH, 3)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) ** 2).astype("float32")

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if (self.epoch, batch) == KILL_AT:
                sys.stdout.flush()
                os._exit(3)  # as a killed worker: no cleanup, no callbacks, no finally

    callbacks = [keras.callbacks.BackupAndRestore(backup_dir)] if backup_dir else []
    if kill:
        callbacks.append(Kill())
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    arrays = [keras.ops.convert_to_numpy(v.value) for v in list(model.weights) + list(model.optimizer.variables)]
    return [np.array(a) for a in arrays] + [np.array(int(keras.ops.convert_to_numpy(model.optimizer.iterations)))]


if __name__ == "__main__":
    mode, folder = sys.argv[1], sys.argv[2]
    state = run(os.path.join(folder, "backup"), kill=mode == "killed")
    if mode == "killed":
        sys.exit("the fit was not killed")
    np.savez(os.path.join(folder, f"{mode}.npz"), *state)
