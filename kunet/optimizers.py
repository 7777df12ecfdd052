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
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _resource(variable):
    """The ``tf.Variable`` behind a Keras variable (under a strategy, the replica's copy via ``.handle``)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _fusable(gradient, variable) -> bool:
    return isinstance(gradient, tf.Tensor) and _resource(variable).dtype in (tf.float32, tf.float64)


@keras.saving.register_keras_serializable(package="kunet")
class FusedAdam(keras.optimizers.Adam):
    """:class:`keras.optimizers.Adam` (same arguments, same results) with a fused update per variable.

    Example:
        >>> optimizer = FusedAdam(1e-4, global_clipnorm=1.0)
        >>> optimizer.apply(gradients, model.trainable_variables)
    """

    def update_step(self, gradient, variable, learning_rate):
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
class FusedSGD(keras.optimizers.SGD):
    """:class:`keras.optimizers.SGD` (same arguments, same results) with a fused momentum update per variable.

    Example:
        >>> optimizer = FusedSGD(0.01, momentum=0.99)
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        target = _resource(variable)
        dtype = target.dtype
        # accum = momentum * accum - lr * grad; var += accum (Nesterov: var += momentum * accum - lr * grad),
        # as keras.optimizers.SGD.update_step.
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=target.handle,
            accum=_resource(self.momentums[self._get_variable_index(variable)]).handle,
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_nesterov=self.nesterov,
        )
