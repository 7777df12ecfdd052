"""Objects a pipeline's settings describe: the model, its optimizer and schedule, the precision, the strategy.

``kunet fit`` builds everything it trains with here, so a run, ``--dry-run`` and the tests build the same
objects from the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kunet.choices import STRATEGIES
from kunet.config import PipelineConfig
from kunet.errors import ConfigError
from kunet.inference import InferenceSettings
from kunet.losses import segmentation_loss
from kunet.model import UNet
from kunet.optimizers import FusedAdam, FusedAdamThenSGD, FusedSGD, PhasedSchedule
from kunet.pipeline import tile_shape
from kunet.precision import resolve_precision
from kunet.runs import RunError


def inference_settings(config: PipelineConfig, manifest: dict | None = None) -> InferenceSettings:
    """Inference settings from the pipeline; image dtype and typical frame size from the records manifest."""
    extra = {}
    if manifest:
        sizes = [(source["height"], source["width"]) for source in manifest["sources"]]
        extra = {"image_dtype": manifest["image"]["dtype"], "typical_size": max(sizes) if sizes else (512, 512)}
    return InferenceSettings(
        normalize=config.image.normalize,
        percentile_low=config.image.percentile_low,
        percentile_high=config.image.percentile_high,
        class_values=tuple(config.labels.class_values()),
        class_names=tuple(config.labels.names()),
        threshold=config.inference.threshold,
        postprocess=config.inference.postprocess,
        seed_threshold=config.inference.seed_threshold,
        seed_smoothing=config.inference.seed_smoothing,
        test_time_mirroring=config.inference.test_time_mirroring,
        min_object_size=config.inference.min_object_size,
        label_kind=config.labels.kind,
        **extra,
    )


def build_model(config: PipelineConfig, precision: str | None = None, manifest: dict | None = None) -> UNet:
    """The U-Net described by ``config`` with its inference settings as metadata (``precision`` as
    :func:`resolve_precision` resolves it; default the pipeline's)."""
    precision = resolve_precision(precision or config.train.precision)
    return UNet(
        input_channels=config.image.channels,
        num_classes=config.labels.num_classes,
        variant=config.model.variant,
        base_filters=config.model.base_filters,
        depth=config.model.depth,
        padding=config.model.padding,
        batch_norm=config.model.batch_norm,
        dropout=config.model.dropout,
        activation=config.model.activation,
        compute_dtype=None if precision == "float32" else precision,
        seed=config.train.seed,
        metadata=inference_settings(config, manifest).to_metadata(),
    )


def learning_rate_schedule(config: PipelineConfig, total_steps: int):
    """Constant, polynomial (power 0.9) or cosine decay, with optional linear warm-up; with a finish phase
    (``[train.finish]``), the Adam part's schedule over the steps before it, then the SGD part's over its own."""
    train, finish = config.train, config.train.finish
    if not finish.epochs:
        return _schedule(train.schedule, train.learning_rate, train.warmup_steps, total_steps)
    switch = finish_switch_step(config, total_steps)
    return PhasedSchedule(
        _schedule(train.schedule, train.learning_rate, train.warmup_steps, switch),
        _schedule(finish.schedule, finish.learning_rate, finish.warmup_steps, total_steps - switch),
        switch,
    )


def finish_switch_step(config: PipelineConfig, total_steps: int) -> int:
    """The step at which ``[train.finish]``'s SGD part takes over: its epochs are the run's last."""
    finish_steps = config.train.finish.epochs * config.train.steps_per_epoch
    if finish_steps >= total_steps:
        raise ConfigError(
            f"train.finish.epochs = {config.train.finish.epochs} ({finish_steps} steps) leaves no Adam steps in a "
            f"run of {total_steps} steps; give more epochs or steps, or set train.finish.epochs = 0"
        )
    return total_steps - finish_steps


def _schedule(kind: str, learning_rate: float, warmup_steps: int, steps: int):
    decay_steps = max(1, steps - warmup_steps)
    if kind == "constant":
        if warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, 1, alpha=1.0, warmup_target=learning_rate, warmup_steps=warmup_steps
            )
        return learning_rate
    if kind == "poly":
        poly = keras.optimizers.schedules.PolynomialDecay(learning_rate, decay_steps, 0.0, power=0.9)
        return _Warmup(poly, learning_rate, warmup_steps) if warmup_steps else poly
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup_steps else learning_rate,
        decay_steps,
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="kunet")
class _Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup_steps``, then ``after(step - warmup_steps)``."""

    def __init__(self, after, peak: float, warmup_steps: int):
        self.after, self.peak, self.warmup_steps = after, peak, warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / float(self.warmup_steps)
        return tf.where(step < self.warmup_steps, warm, self.after(step - self.warmup_steps))

    def get_config(self):
        return {
            "after": keras.saving.serialize_keras_object(self.after),
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
        }


def build_optimizer(config: PipelineConfig, total_steps: int, precision: str):
    """SGD (with momentum) or Adam on the schedule, with fused updates (:mod:`kunet.optimizers`) that leave a
    variable alone in a step whose gradient for it is not finite; loss scaling for ``mixed_float16`` (a resolved
    precision), whose optimizer skips such steps as a whole itself."""
    train = config.train
    schedule = learning_rate_schedule(config, total_steps)
    options = {"skip_non_finite": precision != "mixed_float16"}
    if train.clip_norm > 0:
        options["global_clipnorm"] = train.clip_norm
    if train.optimizer == "sgd":
        optimizer = FusedSGD(schedule, momentum=train.momentum, **options)
    elif train.finish.epochs:  # the schedule is then a PhasedSchedule, which knows the switch
        momentum = train.finish.momentum
        optimizer = FusedAdamThenSGD(schedule, switch_step=schedule.switch_step, sgd_momentum=momentum, **options)
    else:
        optimizer = FusedAdam(schedule, **options)
    if precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def initialise_from(model: UNet, source: Path) -> None:
    """Copies the weights of the ``.keras`` model at ``source`` into ``model`` (same layers and shapes)."""
    if not source.is_file():
        raise RunError(f"{source}: train.init_from names no .keras file")
    donor = keras.models.load_model(source, compile=False)
    theirs, ours = donor.get_weights(), model.get_weights()
    mismatched = len(theirs) != len(ours) or any(a.shape != b.shape for a, b in zip(theirs, ours))
    if mismatched:
        raise RunError(f"{source}: its weights do not fit this pipeline's model (compare [model] settings)")
    model.set_weights(theirs)


def dry_run(config: PipelineConfig) -> dict:
    """Checks a pipeline without data: builds the model, one augmented batch from a synthetic frame
    through the same sampler and normalisation as training, a forward pass and the loss."""
    from kunet.augment import AugmentParams, make_host_sampler

    shape = tile_shape(config)
    model = build_model(config)
    frame_size = max(shape.input, 512)
    rng = np.random.default_rng(0)
    image = tf.constant(rng.random((frame_size, frame_size, config.image.channels), dtype=np.float32))
    classes = tf.constant(rng.integers(0, config.labels.num_classes, (frame_size, frame_size)).astype(np.uint8))
    weight = tf.ones((frame_size, frame_size), tf.float32)
    sampler = make_host_sampler(AugmentParams.from_config(config.augment), shape.input, shape.output)
    tiles, tile_classes, tile_weights = sampler(image, classes, weight, tf.constant([config.train.seed, 0], tf.int64))
    logits = model(tiles[None], training=False)
    loss = segmentation_loss(tile_classes[None], logits, tile_weights[None], config.labels.num_classes,
                             float(shape.output**2), config.train.loss, config.train.dice_weight)  # fmt: skip
    build_optimizer(
        config, config.train.epochs * config.train.steps_per_epoch, resolve_precision(config.train.precision)
    )
    return {
        "name": config.name,
        "parameters": model.count_params(),
        "tile": f"{shape.input} -> {shape.output}",
        "logits": list(logits.shape),
        "loss": float(loss),
        "classes": config.labels.class_values(),
        "weights": config.weights.resolved().preset,
    }


def make_strategy(name: str):
    """``default`` | ``mirrored`` (all local GPUs, or the CPU) | ``multiworker`` (cluster from TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if not os.environ.get("TF_CONFIG"):
            raise RunError("--strategy multiworker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise RunError(f"unknown strategy {name!r} ({', '.join(STRATEGIES)})")


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
