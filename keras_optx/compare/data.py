"""The data a comparison trains on: the CLI's digits and MLP, array orders and splits, and checks
that every rule will see the same examples in the same order."""

import sys

import keras


def load_digits(seed=0, test_fraction=0.2):
    """scikit-learn's 8×8 digits, scaled to [0, 1], split train/test by a seeded shuffle."""
    import numpy as np
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order].astype("int32")
    n_test = int(round(len(x) * test_fraction))
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def make_model(n_inputs=64, hidden=64, n_classes=10):
    """A two-layer MLP producing logits."""
    return keras.Sequential(
        [
            keras.Input((n_inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_classes),
        ]
    )


def _is_arrays(data):
    """True for `(x, y)` or `(x, y, sample_weight)` of arrays/tensors (x or y may be nested)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        return False
    leaves = keras.tree.flatten(list(data))
    return bool(leaves) and all(hasattr(leaf, "shape") and len(leaf.shape) >= 1 for leaf in leaves)


def _order(n, seed, epoch):
    """The order of `n` examples in `epoch` of a run with `seed`: the same for every rule."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


def _split(data, fraction, seed=0):
    """Arrays `(x, y[, w])` → (train, held out): a seeded random `fraction` held out."""
    import numpy as np

    leaves = [keras.ops.convert_to_numpy(a) if not isinstance(a, np.ndarray) else a for a in keras.tree.flatten(list(data))]
    n = len(leaves[0])
    n_out = int(round(n * fraction))
    if not 1 <= n_out < n:
        raise ValueError(f"validation_split={fraction} of {n} examples leaves an empty training or held-out part")
    order = np.random.default_rng(seed).permutation(n)
    parts = []
    for index in (order[n_out:], order[:n_out]):
        parts.append(tuple(keras.tree.pack_sequence_as(list(data), [a[index] for a in leaves])))
    return parts[0], parts[1]


def _fresh_metrics(metrics):
    """A copy of each metric object (a metric's state belongs to one model); names stay names."""
    if metrics is None:
        return None

    def copy(metric):
        if isinstance(metric, keras.metrics.Metric):
            return type(metric).from_config(metric.get_config())
        return metric

    return keras.tree.map_structure(copy, metrics)


def _is_factory(data):
    """A function returning the data (called once per run, after the run's seeds are set)."""
    return callable(data) and not _is_arrays(data) and not hasattr(data, "__iter__") and not hasattr(data, "__getitem__")


def _check_data(name, data):
    """Refuse, naming `name`, data whose parts differ in length or that would give each rule another order."""
    if _is_arrays(data):
        lengths = {int(leaf.shape[0]) for leaf in keras.tree.flatten(list(data))}
        if len(lengths) > 1:
            parts = ", ".join(
                f"{part}: {sorted({int(leaf.shape[0]) for leaf in keras.tree.flatten(value)})}"
                for part, value in zip(("x", "y", "sample_weight"), data)
            )
            raise ValueError(f"{name}: x, y (and sample_weight) must have as many examples each; received lengths {parts}")
        return
    if name == "data" and _reshuffles(data):
        raise ValueError(
            "data: this tf.data.Dataset draws a new order on every pass (shuffle(..., reshuffle_each_iteration=True)), "
            "so each rule would see the batches in another order; pass a function returning the dataset instead, "
            "e.g. data=lambda: make_dataset() (each run then builds its own after seeding, and every rule sees the "
            "same order), or shuffle with reshuffle_each_iteration=False"
        )


def _reshuffles(dataset):
    """True when a `tf.data` pipeline holds a shuffle that draws a new order on each pass (read from
    its graph of input datasets; the object's type is tested by name: no TensorFlow import here)."""
    if not type(dataset).__module__.startswith("tensorflow"):
        return False
    seen, pending = set(), [dataset]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if getattr(node, "_reshuffle_each_iteration", False) is not False and hasattr(node, "_seed"):
            return True
        inputs = getattr(node, "_inputs", None)
        if callable(inputs):
            pending.extend(inputs())
    return False


def _seed_every_library(seed):
    """`keras.utils.set_random_seed`, and torch's generator on any backend: a torch `DataLoader`
    shuffles with it (Keras seeds torch only under the torch backend). torch is seeded only when
    already imported, as it is when a DataLoader exists."""
    keras.utils.set_random_seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "manual_seed"):
        torch.manual_seed(seed)
