"""The training step as kunet ran it before issue 21 (commit 3c13189), kept for ``train_step.py --legacy``.

A copy of that commit's ``Trainer._train_step_function`` and of the per-step body of ``Trainer._run_epochs``,
so the old and the new step are timed side by side in one process. Not used by kunet itself.
"""

from __future__ import annotations

import math

import tensorflow as tf

from kunet.losses import segmentation_loss
from kunet.pipeline import tile_shape
from kunet.progress import LineProgress


def legacy_step(trainer, batch):
    """A callable running the old step on ``batch`` every time (as ``Trainer.step_for_benchmark``); returns the loss."""
    config, train, strategy = trainer.config, trainer.config.train, trainer.strategy
    session = trainer._new_session(trainer._total_steps(None, None))
    shape = tile_shape(config)
    global_pixels = float(train.batch_size * strategy.num_replicas_in_sync * shape.output * shape.output)
    model, optimizer = session.model, session.optimizer

    def step_fn(batch, stop_votes):
        tiles, classes, weights = batch
        with tf.GradientTape() as tape:
            logits = model(tiles, training=True)
            loss = segmentation_loss(classes, logits, weights, config.labels.num_classes, global_pixels,
                                     train.loss, train.dice_weight)  # fmt: skip
            scaled = optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)
        return tf.concat([tf.reshape(tf.cast(loss, tf.float32), [1]), stop_votes], axis=0)

    compiled_step = tf.function(step_fn, jit_compile=train.jit_compile)

    @tf.function
    def train_step(iterator, stop_votes):
        per_replica = strategy.run(compiled_step, args=(next(iterator), stop_votes))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    iterator = iter(strategy.distribute_datasets_from_function(
        lambda context: tf.data.Dataset.from_tensors(tuple(batch)).repeat()))  # fmt: skip
    callbacks = trainer._callback_list(session, trainer._total_steps(None, None))
    advance = LineProgress("step", train.steps_per_epoch, trainer.log, trainer.log_every)
    counter = iter(range(1 << 62))

    def step() -> float:
        current = next(counter)
        callbacks.on_train_batch_begin(current)
        votes = tf.constant([0.0, 0.0])
        loss, signal_votes, time_votes = (float(value) for value in train_step(iterator, votes))
        if not math.isfinite(loss):
            raise RuntimeError(f"loss became {loss} at step {current}")
        session.step.assign(current + 1)
        session.loss_sum.assign_add(loss)
        session.loss_count.assign_add(1)
        advance(loss=float(session.loss_sum.numpy()) / int(session.loss_count.numpy()))
        callbacks.on_train_batch_end(current, {"loss": loss})
        return loss

    return step
