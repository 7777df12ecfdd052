"""Keras's Adam and SGD with momentum, each variable's update done by one fused TensorFlow kernel.

Keras 3 writes an optimizer's update as separate tensor ops (Adam: about ten per variable), and each of them
reads and writes whole weight-sized tensors. TensorFlow's training kernels (``ResourceApplyAdam``,
``ResourceApplyKerasMomentum``) do the same arithmetic in one pass over memory. On the paper's net (31 M
weights) the Adam update takes about 34 ms instead of 97 ms on 2 cores, and the SGD-momentum update 21 ms
instead of 41 ms (docs/BENCHMARKS.md): a few percent of a bf16 training step.

Everything else is Keras's: learning-rate schedules, ``global_clipnorm``, loss scaling, the ``iterations``
counter, checkpointed slot variables with the same names, and ``tf.distribute`` (an update under a strategy
runs once per replica, where a distributed variable's ``handle`` is that replica's own copy), weight decay
(Keras applies it before the update). Cases the fused kernels do not cover (sparse gradients, AMSGrad, SGD
without momentum) fall back to Keras's own update.

With ``skip_non_finite=True`` each variable's update is skipped, weights and slots left as they were, when its
(all-reduced) gradient holds a NaN or Inf or is so large that its sum of squares overflows. Each variable decides
on its own gradient, so no update waits for the whole backward pass (a check of every gradient before any
update, as Keras's ``LossScaleOptimizer`` does for float16, did: about 1.4 % of a bf16 step, docs/BENCHMARKS.md).
Every replica decides alike: they all see the same all-reduced gradient.

:class:`FusedAdamThenSGD` with :class:`PhasedSchedule` is ``[train.finish]``: Adam, then SGD with momentum for the
run's last steps, in one optimizer and so in one checkpoint.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _resource(variable):
    """The ``tf.Variable`` behind a Keras variable (under a strategy, the replica's copy via ``.handle``)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _fusable(gradient, variable) -> bool:
    return isinstance(gradient, tf.Tensor) and _resource(variable).dtype in (tf.float32, tf.float64)


def sum_of_squares(gradient) -> tf.Tensor:
    """The gradient's squared L2 norm in float32, in one pass (``l2_loss`` does not write the squares out)."""
    values = gradient.values if isinstance(gradient, tf.IndexedSlices) else gradient
    return 2.0 * tf.nn.l2_loss(tf.cast(values, tf.float32))


def gradient_is_finite(gradient) -> tf.Tensor:
    """True unless ``gradient`` holds a NaN or Inf or its sum of squares overflows float32: the same test as the
    training step's gradient norm, which sums :func:`sum_of_squares` too."""
    return tf.math.is_finite(sum_of_squares(gradient))


class _SkipsNonFinite:
    """The ``skip_non_finite`` switch shared by :class:`FusedAdam` and :class:`FusedSGD`."""

    def __init__(self, *args, skip_non_finite: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_non_finite = skip_non_finite

    def get_config(self):
        return {**super().get_config(), "skip_non_finite": self.skip_non_finite}

    def _update_unless_non_finite(self, gradient, update) -> None:
        if not self.skip_non_finite:
            update()
            return

        def apply():
            update()
            return tf.constant(True)

        tf.cond(gradient_is_finite(gradient), apply, lambda: tf.constant(False))


@keras.saving.register_keras_serializable(package="kunet")
class FusedAdam(_SkipsNonFinite, keras.optimizers.Adam):
    """:class:`keras.optimizers.Adam` (same arguments, same results) with a fused update per variable.

    Args:
        skip_non_finite: Leave a variable (and its slots) as it was in a step whose gradient for it is not finite
            (see the module docstring). Other arguments: :class:`keras.optimizers.Adam`'s.

    Example:
        >>> optimizer = FusedAdam(1e-4, global_clipnorm=1.0, skip_non_finite=True)
        >>> optimizer.apply(gradients, model.trainable_variables)
    """

    def update_step(self, gradient, variable, learning_rate):
        self._update_unless_non_finite(gradient, lambda: self._adam_update(gradient, variable, learning_rate))

    def _adam_update(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        target = _resource(variable)
        dtype = target.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=target.handle,
            m=_resource(self._momentums[index]).handle,
            v=_resource(self._velocities[index]).handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), local_step),
            lr=tf.cast(learning_rate, dtype),
            beta1=tf.cast(self.beta_1, dtype),
            beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


@keras.saving.register_keras_serializable(package="kunet")
class FusedSGD(_SkipsNonFinite, keras.optimizers.SGD):
    """:class:`keras.optimizers.SGD` (same arguments, same results) with a fused momentum update per variable.

    Args:
        skip_non_finite: As :class:`FusedAdam`'s. Other arguments: :class:`keras.optimizers.SGD`'s.

    Example:
        >>> optimizer = FusedSGD(0.01, momentum=0.99)
    """

    def update_step(self, gradient, variable, learning_rate):
        self._update_unless_non_finite(gradient, lambda: self._sgd_update(gradient, variable, learning_rate))

    def _sgd_update(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        accumulator = self.momentums[self._get_variable_index(variable)]
        _momentum_update(variable, accumulator, gradient, learning_rate, self.momentum, self.nesterov)


def _momentum_update(variable, accumulator, gradient, learning_rate, momentum: float, nesterov: bool) -> None:
    """SGD with momentum in one kernel: accum = momentum * accum - lr * grad; var += accum (Nesterov: var +=
    momentum * accum - lr * grad), as keras.optimizers.SGD.update_step."""
    target = _resource(variable)
    dtype = target.dtype
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=target.handle,
        accum=_resource(accumulator).handle,
        lr=tf.cast(learning_rate, dtype),
        grad=tf.cast(gradient, dtype),
        momentum=tf.cast(momentum, dtype),
        use_nesterov=nesterov,
    )


@keras.saving.register_keras_serializable(package="kunet")
class FusedAdamThenSGD(FusedAdam):
    """:class:`FusedAdam` for the steps before ``switch_step``, then SGD with momentum (fused, as
    :class:`FusedSGD`) from zero momentum on: one optimizer, so one checkpoint holds both parts' state and a run
    resumes in either. ``learning_rate`` serves both parts (see :class:`PhasedSchedule`).

    Args:
        switch_step: The first step (``iterations``) that SGD takes.
        sgd_momentum: The SGD part's momentum. Other arguments: :class:`FusedAdam`'s.

    Example:
        >>> schedule = PhasedSchedule(adam_schedule, sgd_schedule, switch_step=4000)
        >>> optimizer = FusedAdamThenSGD(schedule, switch_step=4000, sgd_momentum=0.99, skip_non_finite=True)
    """

    def __init__(self, *args, switch_step: int, sgd_momentum: float = 0.99, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("FusedAdamThenSGD does not take amsgrad")
        self.switch_step, self.sgd_momentum = int(switch_step), float(sgd_momentum)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._sgd_momentums = self.add_optimizer_variables(var_list, "sgd_momentum")

    def _adam_update(self, gradient, variable, learning_rate):
        def sgd():
            accumulator = self._sgd_momentums[self._get_variable_index(variable)]
            _momentum_update(variable, accumulator, gradient, learning_rate, self.sgd_momentum, nesterov=False)
            return tf.constant(True)

        def adam():
            super(FusedAdamThenSGD, self)._adam_update(gradient, variable, learning_rate)
            return tf.constant(True)

        if not _fusable(gradient, variable):
            raise TypeError(f"FusedAdamThenSGD updates dense float32 variables, not {variable.path}")
        tf.cond(self.iterations < self.switch_step, adam, sgd)

    def get_config(self):
        return {**super().get_config(), "switch_step": self.switch_step, "sgd_momentum": self.sgd_momentum}


@keras.saving.register_keras_serializable(package="kunet")
class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``first(step)`` before ``switch_step``, then ``second(step - switch_step)``: each part's schedule counts
    its own steps from 0 (a warm-up of the second part starts where the first part stops)."""

    def __init__(self, first, second, switch_step: int):
        self.first, self.second, self.switch_step = first, second, int(switch_step)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        return tf.where(
            step < self.switch_step,
            _rate(self.first, step),
            _rate(self.second, tf.maximum(step - self.switch_step, 0.0)),
        )

    def get_config(self):
        return {
            "first": keras.saving.serialize_keras_object(self.first),
            "second": keras.saving.serialize_keras_object(self.second),
            "switch_step": self.switch_step,
        }

    @classmethod
    def from_config(cls, config):
        parts = {key: keras.saving.deserialize_keras_object(config[key]) for key in ("first", "second")}
        return cls(parts["first"], parts["second"], config["switch_step"])


def _rate(schedule, step):
    """A schedule's learning rate at ``step`` (a float is a constant rate)."""
    rate = schedule(step) if callable(schedule) else schedule
    return tf.cast(rate, tf.float32)
