"""Two-process training over loopback, against one process; run by tests/test_scale.py.

    python tests/_multiprocess.py one BACKEND OUT.json                 # one process, the reference
    python tests/_multiprocess.py jax PROCESS_ID PORT OUT.json          # one of two jax processes
    python tests/_multiprocess.py tensorflow WORKER_ID PORT0 PORT1 OUT.json  # one of two TF workers

jax: `jax.distributed.initialize` on 127.0.0.1 with gloo CPU collectives, one CPU device per
process, `keras.distribution.DataParallel` over both; each process feeds its half of every
global batch (`auto_shard_dataset = False`). Trains with `shard_state=False`, then `True`.
tensorflow: `MultiWorkerMirroredStrategy` with TF_CONFIG naming two workers on 127.0.0.1. A
custom loop (`strategy.run` + `optimizer.apply`): Keras 3's `model.fit` fails under this
strategy before any optimizer code runs (`_maybe_symbolic_build` reduces a PerReplica data
batch, which CollectiveAllReduce cannot convert), with Keras's own optimizers too.
Every process writes its final weights (and the slots' shardings) as JSON.
"""

import json
import os
import sys

GLOBAL_BATCH, STEPS = 16, 4


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((GLOBAL_BATCH * STEPS, 8)).astype("float32")
    y = rng.standard_normal((GLOBAL_BATCH * STEPS, 1)).astype("float32")
    return x, y


def make_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])


def make_optimizer(shard_state=False):
    import keras_optx as ox

    return ox.ADAM(0.01, shard_state=shard_state)


def weights(model):
    import numpy as np

    return [np.asarray(v.numpy(), "float64").tolist() for v in model.trainable_variables]


def half(array, index):
    """Process `index`'s half of every global batch, in step order."""
    return array.reshape(STEPS, 2, GLOBAL_BATCH // 2, -1)[:, index].reshape(-1, array.shape[-1])


def one(backend, out):
    os.environ["KERAS_BACKEND"] = backend
    import keras

    x, y = data()
    result = {}
    if backend == "tensorflow":
        result["weights"] = tf_train(None, x, y)
    else:
        model = make_model()
        model.compile(optimizer=make_optimizer(), loss="mse")
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
        result["weights"] = weights(model)
    result["initial"] = weights(make_model())
    result["backend"] = keras.backend.backend()
    return result


def jax_worker(index, port):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=index, initialization_timeout=120)
    import keras

    distribution = keras.distribution.DataParallel(devices=jax.devices())
    distribution.auto_shard_dataset = False  # each process passes its own half of each global batch
    keras.distribution.set_distribution(distribution)
    x, y = data()
    result = {"processes": jax.process_count(), "devices": jax.device_count()}
    for shard_state in (False, True):
        model = make_model()
        optimizer = make_optimizer(shard_state)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(half(x, index), half(y, index), batch_size=GLOBAL_BATCH // 2, epochs=1, shuffle=False, verbose=0)
        slots = [s for s in optimizer.variables if s.path.endswith(("_m", "_v"))]
        result[f"shard_state={shard_state}"] = {
            # replicated variables: this process's copy is the whole value
            "weights": [jax.device_get(v.value.addressable_data(0)).astype("float64").tolist() for v in model.trainable_variables],
            "slot_specs": [[a if a is None else str(a) for a in s.value.sharding.spec] for s in slots],
            "slot_local_bytes": sum(sh.data.nbytes for s in slots for sh in s.value.addressable_shards),
            "slot_bytes": sum(s.value.nbytes for s in slots),
        }
    return result


def tf_train(strategy, x, y):
    import keras
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = make_model()
        optimizer = make_optimizer()
        optimizer.build(model.trainable_variables)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = strategy.experimental_distribute_dataset(dataset.with_options(options))

    @tf.function
    def step(xb, yb):
        def replica(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(xb, training=True) - yb)) / GLOBAL_BATCH  # global mean
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)

        strategy.run(replica, args=(xb, yb))

    for xb, yb in dataset:
        step(xb, yb)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == STEPS
    return weights(model)


def tf_worker(index, ports):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    )
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = data()
    return {"replicas": strategy.num_replicas_in_sync, "weights": tf_train(strategy, x, y)}


if __name__ == "__main__":
    mode, *args, out = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if mode == "one":
        result = one(args[0], out)
    elif mode == "jax":
        result = jax_worker(int(args[0]), args[1])
    else:
        result = tf_worker(int(args[0]), args[1:])
    with open(out, "w") as f:
        json.dump(result, f)
