"""`HyperparameterScheduler`: a Keras callback that sets any hyperparameter per epoch or per step."""

import numbers

import keras

from ._hyper import adjust

_Schedule = keras.optimizers.schedules.LearningRateSchedule


class HyperparameterScheduler(keras.callbacks.Callback):
    """Set hyperparameters of the model's optimizer (and of every rule inside it) during `fit`.

    Before each epoch (`per="epoch"`, called with the 0-based epoch) or each update (`per="step"`,
    called with the optimizer's update count, 0-based, as a rate schedule is), each hyperparameter
    is set to `schedule(count)` through `keras_optx.adjust`: it reaches chain members and Partition
    rules, is validated, and acts at the next step, also in `fit`'s compiled step (no retrace).

    Args:
        schedules: `{name: fn}`, `fn` a function of the count or a `LearningRateSchedule`,
            returning a number (a pair for `beta`). `"learning_rate"` sets every rule's rate.
        per: `"epoch"` (default) or `"step"`.

    Example, 1cycle's momentum cycling (Smith 2018, arXiv:1803.09820) on ADAM's β₁:
        >>> cycle = lambda step: (0.95 - 0.1 * min(step, 100) / 100, 0.999)
        >>> model.fit(x, y, callbacks=[keras_optx.HyperparameterScheduler({"beta": cycle}, per="step")])

    Like `keras.callbacks.LearningRateScheduler`, for any hyperparameter (optax `inject_hyperparams`).
    """

    def __init__(self, schedules, per="epoch"):
        super().__init__()
        if not isinstance(schedules, dict) or not schedules:
            raise TypeError(f"`schedules` must be a non-empty dict {{name: function or schedule}}; received {schedules!r}.")
        for name, fn in schedules.items():
            if not isinstance(name, str) or not (callable(fn) or isinstance(fn, _Schedule)):
                raise TypeError(
                    f"`schedules` maps hyperparameter names to functions of the count or LearningRateSchedules; "
                    f"received {name!r}: {fn!r}."
                )
        if per not in ("epoch", "step"):
            raise ValueError(f'`per` must be "epoch" or "step"; received per={per!r}.')
        self.schedules, self.per = dict(schedules), per

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            optimizer = self.model.optimizer
            self._set(int(keras.ops.convert_to_numpy(optimizer.iterations)))

    def _set(self, count):
        values = {name: _number(fn(count)) for name, fn in self.schedules.items()}
        adjust(self.model.optimizer, **values)


def _number(value):
    if isinstance(value, (tuple, list)):
        return tuple(_number(v) for v in value)
    if isinstance(value, numbers.Number):
        return float(value)
    return float(keras.ops.convert_to_numpy(value))
