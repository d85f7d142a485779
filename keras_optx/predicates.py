"""Saveable predicates for `Partition` keys: `matrices`, the split that matrix optimizers (Muon) ask for."""

import re

import keras

_register = keras.saving.register_keras_serializable(package="keras_optx")


@_register
class Matrices:
    """The predicate `matrices(...)` returns: see `keras_optx.matrices`. Saved with the model (`get_config`)."""

    def __init__(self, exclude=(), higher_rank=False):
        if isinstance(exclude, str):
            exclude = [exclude]
        try:
            exclude = list(exclude)
        except TypeError:
            exclude = None
        if exclude is None or not all(isinstance(p, str) for p in exclude):
            raise TypeError(f"`exclude` must be a list of strings (regular expressions on variable.path); received {exclude!r}.")
        compiled = []
        for pattern in exclude:
            try:
                compiled.append(re.compile(pattern))
            except re.error as error:
                raise ValueError(f"`exclude` pattern {pattern!r} is not a valid regular expression: {error}.") from None
        if not isinstance(higher_rank, bool):
            raise TypeError(f"`higher_rank` must be True or False; received {higher_rank!r}.")
        self.exclude, self.higher_rank, self._compiled = tuple(exclude), higher_rank, compiled

    def __call__(self, variable):
        rank = len(variable.shape)
        if rank < 2 or (rank > 2 and not self.higher_rank):
            return False
        path = getattr(variable, "path", None) or getattr(variable, "name", None) or ""
        return not any(p.search(path) for p in self._compiled)

    def get_config(self):
        return {"exclude": list(self.exclude), "higher_rank": self.higher_rank}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __hash__(self):
        return hash((self.exclude, self.higher_rank))

    def __repr__(self):
        higher = ", higher_rank=True" if self.higher_rank else ""
        return f"matrices(exclude={list(self.exclude)!r}{higher})"


def matrices(exclude=(), higher_rank=False):
    """A `Partition` key selecting the weight matrices: what Muon-style rules should train.

    matrices(exclude, higher_rank)(v) = [rank(v) = 2, or rank(v) ≥ 2 with higher_rank]
    ∧ no pattern of `exclude` `re.search`es `v.path`.

    A predicate object, not a lambda: a `Partition` keyed by it is saved in `.keras` files and
    routes the same after `keras.saving.load_model`.

    Args:
        exclude: regular expressions on `variable.path` of matrices to leave out, default none;
            e.g. `["embedding"]` (embeddings and output heads are trained by AdamW in the Muon recipe).
        higher_rank: also select tensors of rank > 2 (conv kernels), default False.

    Example:
        >>> opt = keras_optx.Partition({keras_optx.matrices(exclude=["embedding"]): keras_optx.Momentum(0.1),
        ...                             ".*": keras_optx.ADAM(1e-3)})
        >>> w = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
        >>> e = keras.Variable(np.ones((3, 2), "float32"), name="embeddings")
        >>> b = keras.Variable(np.ones(2, "float32"), name="bias")
        >>> opt.apply([np.ones((2, 2), "float32"), np.ones((3, 2), "float32"), np.ones(2, "float32")], [w, e, b])
        >>> print(keras.ops.convert_to_numpy(w)[0], keras.ops.convert_to_numpy(e)[0], keras.ops.convert_to_numpy(b))
        [0.9 0.9] [0.999 0.999] [0.999 0.999]

    Keras's `keras.optimizers.Muon` chooses its matrices inside the optimizer (`exclude_layers`,
    `exclude_embeddings`) and trains the rest with its own AdamW; optax's `contrib.muon` takes a
    mask or dimension numbers per leaf. Here the choice is a routing key, so any rule can be given
    the matrices and any other the rest. Muon: Jordan et al. 2024 (kellerjordan.github.io/posts/muon).
    """
    return Matrices(exclude, higher_rank)
