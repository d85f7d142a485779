"""Saved files: the format version, `get_config`/`from_config`, loading optimizer variables and
migrating files written by earlier versions (`SavingMixin`, mixed into `Rule`)."""

import keras

from ._hyper import _assign_checked, _hyper_owners, deserialize_value, serialize_value
from ._variables import _variable_path

# The layout of a keras_optx optimizer's saved config and variables, written to every config as
# "format_version". Raise it when a change adds, removes or reorders an optimizer's variables or
# renames a config key, and teach `Rule._migrate_config`/`_migrate_variables` to read the old one:
# tests/fixtures/checkpoints (files saved by earlier versions) must keep loading.
FORMAT_VERSION = 4
# Format 2 added one variable per rule with numeric hyperparameters (its "hyperparameters" vector,
# made at build); `Rule._migrate_variables` fills it from the config for files of format ≤ 1.
# Format 3: keras_optx.torch's SGD/Adam/AdamW hold `weight_decay` in that vector (one entry more);
# a format-2 vector of another length takes the values of the loaded config.
# Format 4: each param group of keras_optx.torch's rules saves its own rate (a variable, after the
# others; older files: the loaded config's), and a group given as variables saves their positions in
# the list the optimizer was built with ({"positions": [...]}, not a regex of their paths).


class SavingMixin:
    """The saving side of `Rule`: config, loading and migration of its variables."""

    def set_weights(self, weights):
        """Set every variable in `self.variables` (wrapped optimizers' included), in that order.

        Unlike Keras's, a list of another length is refused (Keras would set a prefix)."""
        _set_all(self, weights)

    def get_config(self):
        for rule in _hyper_owners(self):
            rule._refresh_hyper()
        config = super().get_config()
        if not self.has_learning_rate:
            config.pop("learning_rate")
        for name in self.hyperparameters:
            config[name] = serialize_value(self._static(name))
        config["shard_state"] = self.shard_state
        config["state_dtype"] = self.state_dtype
        config["rounding"] = self.rounding
        config["format_version"] = FORMAT_VERSION
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras's from_config deserializes the schedule in place; keep the caller's dict intact.
        config, version = _versioned(cls, config)
        for name in cls.hyperparameters:
            if name in config:
                config[name] = deserialize_value(config[name], custom_objects)
        optimizer = super().from_config(config, custom_objects=custom_objects)
        optimizer._saved_format_version = version
        return optimizer

    # Saved-format migration ----------------------------------------------------------
    @classmethod
    def _migrate_config(cls, config, version):
        """Return `config` (a dict saved with format `version` < FORMAT_VERSION) in today's form.

        Version 0 is a file written before format versions existed; it has today's layout."""
        return config

    def _migrate_variables(self, arrays, version):
        """Return the saved variable values (`arrays`, a list in saved order, format `version` <
        FORMAT_VERSION) in the order and number of today's `self.variables`.

        Format ≤ 1 had no hyperparameter vectors: each takes the values of the loaded config.
        Format 2's vectors of keras_optx.torch's rules lacked `weight_decay`: likewise.
        Format ≤ 3 lacked the variables marked `_keras_optx_added_in` (each torch param group's
        rate): each keeps its value from the loaded config."""
        variables = self.variables
        if len(arrays) != len(variables):  # a file that has them all needs none filled
            variables = [v for v in variables if getattr(v, "_keras_optx_added_in", 0) <= version]
        arrays = _migrate_saved(variables, arrays, version)
        if len(arrays) != len(variables) or len(variables) == len(self.variables):
            return arrays  # a count mismatch is refused by the caller
        saved = iter(arrays)
        return [
            next(saved) if getattr(v, "_keras_optx_added_in", 0) <= version else keras.ops.convert_to_numpy(v.value)
            for v in self.variables
        ]

    def load_own_variables(self, store):
        arrays = [store[str(i)] for i in range(len(store.keys()))]
        version = getattr(self, "_saved_format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            arrays = self._migrate_variables(arrays, version)
        variables = self.variables
        if not variables and arrays:
            return super().load_own_variables(store)  # not built: Keras warns and builds later
        if len(arrays) != len(variables):
            # Keras only warns and leaves the state at zero: a resumed run would silently restart
            # its moments. Refuse instead.
            raise ValueError(
                f"Cannot load the saved state of optimizer {self.name!r}: it has {len(arrays)} variables, this "
                f"{type(self).__name__} has {len(variables)}. Load it with the same optimizer configuration "
                f"it was saved with (saved format version {version}, this keras_optx reads {FORMAT_VERSION})."
            )
        _assign_checked(self, variables, arrays)


def _migrate_saved(variables, arrays, version):
    """`arrays` saved with format `version` ≤ 2 for `variables` (those of today's, less the ones added later)."""
    if version < 2:
        arrays, out = iter(arrays), []
        for variable in variables:
            if getattr(variable, "_keras_optx_hyperparameters", False):
                out.append(keras.ops.convert_to_numpy(variable.value))
            else:
                out.append(next(arrays, None))
        rest = list(arrays)
        if rest or any(a is None for a in out):
            return [a for a in out if a is not None] + rest  # a count mismatch: refused below
        return out
    if version < 3 and len(arrays) == len(variables):
        arrays = [
            keras.ops.convert_to_numpy(v.value)
            if getattr(v, "_keras_optx_hyperparameters", False) and tuple(a.shape) != tuple(v.shape)
            else a
            for v, a in zip(variables, arrays)
        ]
    return arrays


def _versioned(cls, config):
    """`config` without its "format_version" (migrated by `cls._migrate_config`), and that version."""
    config = dict(config)
    version = config.pop("format_version", 0)
    if not isinstance(version, int) or version < 0:
        raise ValueError(f"{cls.__name__}: saved `format_version` must be an integer ≥ 0; received {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{cls.__name__} was saved by a newer keras_optx (format version {version}); this one reads format "
            f"versions ≤ {FORMAT_VERSION}. Upgrade keras_optx to load it."
        )
    if version < FORMAT_VERSION:
        config = cls._migrate_config(config, version)
    return config, version


def _set_all(optimizer, weights):
    """`optimizer.set_weights(weights)` over `optimizer.variables`, refused on a length or shape
    mismatch before any variable is written."""
    if not optimizer.built:
        raise ValueError("Build the optimizer (`optimizer.build(variables)`) before calling `set_weights()`.")
    variables, weights = optimizer.variables, list(weights)
    if len(weights) != len(variables):
        raise ValueError(
            f"`set_weights` of {optimizer.name} takes {len(variables)} arrays (one per entry of "
            f"`optimizer.variables`, wrapped optimizers' included); received {len(weights)}."
        )
    for variable, weight in zip(variables, weights):
        if tuple(variable.shape) != tuple(weight.shape):
            raise ValueError(
                f"Optimizer variable {_variable_path(variable)} has shape {tuple(variable.shape)}; received an "
                f"array of shape {tuple(weight.shape)}."
            )
    _assign_checked(optimizer, variables, weights)
