"""torch.optim's methods on keras_optx.torch's optimizers: what maps onto Keras, and errors naming the
Keras way for what does not (instead of a bare AttributeError)."""

import keras

from ._base import FORMAT_VERSION


class TorchMethods:
    """`zero_grad`, `step`, `state_dict`, `load_state_dict`, `add_param_group`, as a torch user calls them."""

    def zero_grad(self, set_to_none=True):
        """Nothing to do: Keras computes fresh gradients at every step (`model.fit`, `keras_optx.gradient`,
        a `GradientTape`) and keeps no `.grad` buffers, so there are none to clear. Kept so that a
        ported torch loop runs unchanged."""

    def step(self, closure=None):
        """Not available: a Keras optimizer is handed its gradients. Use `model.fit`, or
        `opt.apply(grads, model.trainable_variables)` with `grads` from `keras_optx.gradient`."""
        raise TypeError(
            f"{type(self).__name__}.step() has no gradients to read: Keras keeps none on the variables. Train with "
            "model.fit(...), or compute them and apply: loss, grads = keras_optx.value_and_gradient(loss_fn, "
            "model.trainable_variables); opt.apply(grads, model.trainable_variables)."
        )

    def state_dict(self):
        """The optimizer's state as arrays: `{"format_version", "paths", "variables"}`, one array per
        entry of `opt.variables` (slots, step count, hyperparameters). `load_state_dict` restores it;
        `model.save` / `opt.get_weights()` are the Keras ways. Not torch's layout: torch.optim cannot read it."""
        if not self.built:
            raise ValueError(f"{type(self).__name__} has no state before it is built; call it after a step (or opt.build(variables)).")
        return {
            "format_version": FORMAT_VERSION,
            "paths": [v.path for v in self.variables],
            "variables": [keras.ops.convert_to_numpy(v.value).copy() for v in self.variables],
        }

    def load_state_dict(self, state_dict):
        """Restore what `state_dict()` returned, through `set_weights` (refused on a count or shape
        mismatch before any variable is written). A torch.optim state dict is refused: its tensors are
        keyed by parameter index, not by Keras variable."""
        if not isinstance(state_dict, dict) or "variables" not in state_dict:
            torch_like = isinstance(state_dict, dict) and {"state", "param_groups"} <= set(state_dict)
            raise ValueError(
                f"{type(self).__name__}.load_state_dict takes what its state_dict() returned"
                + (" (this is a torch.optim state dict, which keras_optx cannot read: train on, or restore a .keras "
                   "file with keras.saving.load_model)." if torch_like else f"; received {type(state_dict).__name__}.")
            )
        if state_dict.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"This state dict has format version {state_dict.get('format_version')!r}; this keras_optx reads "
                f"{FORMAT_VERSION}. Save and load whole models (model.save / keras.saving.load_model) across versions."
            )
        if not self.built:
            raise ValueError(
                f"Build {type(self).__name__} on the model's variables first (opt.build(model.trainable_variables)), "
                "then load its state."
            )
        self.set_weights(state_dict["variables"])

    def add_param_group(self, param_group):
        """Not available: groups are routed when the optimizer is built. Pass them all at construction."""
        raise TypeError(
            f"{type(self).__name__} takes its groups at construction: {type(self).__name__}(..., "
            "param_groups=[{'params': ..., 'lr': ...}, ...]); groups cannot be added once made."
        )
