"""``kunet fit``: training with the paper's weighted loss — checkpointed, resumable, observable, distributable.

A custom loop rather than ``model.fit``: the data stream, the optimizer and the step counter are
checkpointed together, so a run killed with SIGKILL resumes exactly where its last checkpoint was
(``training_dataset(start_step=...)`` replays the stream deterministically), and the same code runs under
the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy (``TF_CONFIG``).

Run directory::

    runs/NAME/
      config.json          pipeline settings and the records used
      state.json           step, epoch, best metric, status (rewritten atomically)
      checkpoints/         tf.train.Checkpoint: weights, optimizer state, step, running epoch loss
      last.keras           model after the latest validation (weights + inference metadata)
      best.keras           model with the best validation metric so far
      history.csv          one row per epoch: loss, learning rate, validation metrics, time
      training.png         loss and validation curves, refreshed every epoch
      tensorboard/         scalars and image summaries (input, prediction, label)
      run.lock             flock-ed by the fit (or tune) working in the run; holds its pid

Protection: a fresh fit refuses a directory that already holds a run (``--resume`` continues it); a
second fit (or tune) of a run that is being trained fails at once naming the holder's pid; files are
written atomically, and temporaries a killed run left are removed under the lock by the next fit. The
checkpoint at an epoch's end is taken before its validation; a run killed during the validation finishes
that epoch's end (validation and history row, with that epoch's loss) when resumed. When the latest
checkpoint is damaged, resuming falls back to the one before it and says so. Records are checked against
their manifest before training, and a shard that fails to read is named.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kunet import visualize
from kunet._fs import (
    LockHeldError,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    check_unlocked,
    exclusive_lock,
    remove_paths,
    stale_temporaries,
)
from kunet.config import InferenceConfig, PipelineConfig, pipeline_from_dict
from kunet.inference import InferenceSettings, Predictor
from kunet.losses import segmentation_loss
from kunet.model import UNet
from kunet.pipeline import device_tiles, resolve_placement, tile_shape, training_dataset
from kunet.records import check_shards, find_damaged_shard, iterate_frames, read_manifest

HISTORY_FIELDS = ["epoch", "step", "loss", "learning_rate", "seconds"]
# A directory holding any of these is a run: a fresh fit refuses it (--resume continues it).
RUN_FILES = ("config.json", "state.json", "checkpoints", "history.csv", "best.keras", "last.keras")
# Fixed temporary names of run files written by kunet versions before kunet._fs (which adds a random part).
_LEGACY_TEMPORARIES = (".*.part", ".*.part.keras", ".*.tune.keras")


class RunError(ValueError):
    """A run directory that cannot be started or resumed; the message names it."""


# --- model and optimizer from the configuration ---------------------------------------------------


def inference_settings(config: PipelineConfig, manifest: dict | None = None) -> InferenceSettings:
    """Inference settings from the pipeline; image dtype and typical frame size from the records manifest."""
    extra = {}
    if manifest:
        sizes = [(source["height"], source["width"]) for source in manifest["sources"]]
        extra = {"image_dtype": manifest["image"]["dtype"], "typical_size": max(sizes) if sizes else (512, 512)}
    return InferenceSettings(
        normalize=config.image.normalize,
        class_values=tuple(config.labels.class_values()),
        class_names=tuple(config.labels.class_names),
        threshold=config.inference.threshold,
        postprocess=config.inference.postprocess,
        seed_threshold=config.inference.seed_threshold,
        test_time_mirroring=config.inference.test_time_mirroring,
        min_object_size=config.inference.min_object_size,
        label_kind=config.labels.kind,
        **extra,
    )


def build_model(config: PipelineConfig, precision: str | None = None, manifest: dict | None = None) -> UNet:
    """The U-Net described by ``config`` with its inference settings as metadata."""
    precision = precision or config.train.precision
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
    """Constant, polynomial (power 0.9) or cosine decay, with optional linear warm-up."""
    train = config.train
    decay_steps = max(1, total_steps - train.warmup_steps)
    if train.schedule == "constant":
        schedule = train.learning_rate
        if train.warmup_steps:
            schedule = keras.optimizers.schedules.CosineDecay(
                0.0, 1, alpha=1.0, warmup_target=train.learning_rate, warmup_steps=train.warmup_steps
            )
        return schedule
    if train.schedule == "poly":
        poly = keras.optimizers.schedules.PolynomialDecay(train.learning_rate, decay_steps, 0.0, power=0.9)
        return _Warmup(poly, train.learning_rate, train.warmup_steps) if train.warmup_steps else poly
    return keras.optimizers.schedules.CosineDecay(
        0.0 if train.warmup_steps else train.learning_rate,
        decay_steps,
        warmup_target=train.learning_rate if train.warmup_steps else None,
        warmup_steps=train.warmup_steps,
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
    train = config.train
    schedule = learning_rate_schedule(config, total_steps)
    clip = {"global_clipnorm": train.clip_norm} if train.clip_norm > 0 else {}
    if train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(schedule, momentum=train.momentum, **clip)
    else:
        optimizer = keras.optimizers.Adam(schedule, **clip)
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
    build_optimizer(config, config.train.epochs * config.train.steps_per_epoch, config.train.precision)
    return {
        "name": config.name,
        "parameters": model.count_params(),
        "tile": f"{shape.input} -> {shape.output}",
        "logits": list(logits.shape),
        "loss": float(loss),
        "classes": config.labels.class_values(),
        "weights": config.weights.resolved().preset,
    }


# --- distribution ---------------------------------------------------------------------------------


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
    raise RunError(f"unknown strategy {name!r} (default, mirrored, multiworker)")


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


# --- validation -----------------------------------------------------------------------------------


def validation_scores(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    """Per-frame validation metrics: foreground IoU, pixel error and foreground-restricted Rand errors.

    Rand errors compare 4-connected foreground components (``val_rand_error``) and the same components
    grown into the predicted boundary (``val_rand_error_grown``), truth boundary pixels ignored.
    Multi-class nets report the mean IoU over the non-background classes instead.
    """
    from kunet import metrics

    if num_classes != 2:
        iou = metrics.iou_per_class(predicted, truth, num_classes)
        return {"val_mean_iou": float(np.nanmean(iou[1:])), "val_pixel_error": float(np.mean(predicted != truth))}
    truth_segments = metrics.segments_from_foreground(truth > 0)
    predicted_segments = metrics.segments_from_foreground(predicted > 0)
    return {
        "val_foreground_iou": float(metrics.iou_per_class(predicted, truth, 2)[1]),
        "val_pixel_error": metrics.pixel_error(predicted > 0, truth > 0),
        "val_rand_error": metrics.adapted_rand_error(predicted_segments, truth_segments)[0],
        "val_rand_error_grown": metrics.adapted_rand_error(metrics.grow_segments(predicted_segments), truth_segments)[
            0
        ],
    }


def validate(
    model: UNet, records_dir, settings: InferenceSettings, max_frames: int = 0, tiling: InferenceConfig | None = None
) -> tuple[dict, dict]:
    """Whole-image overlap-tile prediction on the validation split: metrics and one example for pictures."""
    tiling = tiling or InferenceConfig()
    predictor = Predictor(model, settings, tiling.tile_size, tiling.batch_size, tiling.memory_budget_mb)
    totals: dict[str, list[float]] = {}
    example = {}
    for index, frame in enumerate(iterate_frames(records_dir, "val")):
        if max_frames and index >= max_frames:
            break
        probabilities = predictor.probabilities(frame["image"])
        truth = frame["classes"]
        predicted = predictor.classes(probabilities)
        picked = np.take_along_axis(probabilities, truth[..., None].astype(np.int64), axis=-1)[..., 0]
        scores = {"val_loss": float(np.mean(frame["weight"] * -np.log(np.maximum(picked, 1e-7))))}
        scores.update(validation_scores(predicted, truth, model.num_classes))
        for key, value in scores.items():
            totals.setdefault(key, []).append(value)
        if not example:
            example = {"image": frame["image"], "probabilities": probabilities, "classes": truth}
    return {key: float(np.nanmean(values)) for key, values in totals.items()}, example


def metric_is_better(name: str, value: float, best: float) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    minimise = "error" in name or "loss" in name
    return value < best if minimise else value > best


# --- the run --------------------------------------------------------------------------------------


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_model(self) -> Path:
        return self.root / "last.keras"

    @property
    def best_model(self) -> Path:
        return self.root / "best.keras"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def plot(self) -> Path:
        return self.root / "training.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"


def load_run_config(run_dir: str | os.PathLike) -> tuple[PipelineConfig, Path]:
    """The configuration and records folder a run was started with."""
    paths = RunPaths(Path(run_dir))
    if not paths.config.is_file():
        raise RunError(f"{run_dir}: not a kunet run (no config.json)")
    try:
        saved = json.loads(paths.config.read_text())
        pipeline, records = saved["pipeline"], saved["records"]
    except (ValueError, KeyError, TypeError) as error:  # not JSON, or an entry missing
        raise RunError(f"{paths.config}: damaged or not a kunet run configuration ({error!r})") from None
    return pipeline_from_dict(pipeline, saved.get("base_dir", "."), where=str(paths.config)), Path(records)


def _busy(root: Path, error: LockHeldError) -> RunError:
    holder = f"pid {error.holder}" if error.holder else "pid unknown"
    return RunError(
        f"{root}: in use by another kunet process ({holder}); wait for it to end, or use another run directory"
    )


def check_run_free(root: str | os.PathLike) -> None:
    """Raises :class:`RunError` naming the holder if a fit (or tune) is working in ``root`` now."""
    try:
        check_unlocked(RunPaths(Path(root)).lock)
    except LockHeldError as error:
        raise _busy(Path(root), error) from None


@contextlib.contextmanager
def locked_run(root: str | os.PathLike) -> Iterator[None]:
    """Holds the run directory's lock for the ``with`` block: every command that writes a run (fit, tune)
    takes it, so a second one fails at once instead of mixing its files into the first one's."""
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(exclusive_lock(RunPaths(Path(root)).lock))
    except LockHeldError as error:
        raise _busy(Path(root), error) from None
    with stack:
        yield


def remove_run_temporaries(paths: RunPaths) -> list[Path]:
    """Removes what a killed fit or tune left in a run directory: hidden temporaries of its files (also the
    fixed names older versions used) and TensorFlow's unfinished checkpoint folders and index files.

    Call it only while holding :func:`locked_run`: every process that writes a run holds that lock, so
    nothing found here can still be in use.
    """
    stale = set(stale_temporaries(paths.root))
    stale.update(path for pattern in _LEGACY_TEMPORARIES for path in paths.root.glob(pattern))
    stale.update(paths.checkpoints.glob("*_temp"))  # tf.train.Checkpoint writes <prefix>_temp/ first
    stale.update(paths.checkpoints.glob("checkpoint.tmp*"))  # ... and its index through a temporary
    return remove_paths(sorted(stale))


def _first_line(error: BaseException) -> str:
    text = (getattr(error, "message", None) or str(error) or type(error).__name__).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass
class _Session:
    """What one call of :meth:`Trainer.fit` trains with: the model, its optimizer, the checkpointed counters."""

    model: UNet
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    loss_sum: tf.Variable  # the running epoch's summed step losses
    loss_count: tf.Variable
    best_value: tf.Variable
    checkpoint: tf.train.Checkpoint
    checkpoint_dir: Path
    manager: tf.train.CheckpointManager | None = None
    writer: object = None
    started: float = 0.0


class Trainer:
    """Trains one run. See the module docstring for the run directory.

    Args:
        config: The pipeline configuration (overrides already applied).
        run_dir: Where the run lives.
        records_dir: Records from ``kunet build-records`` (default: the pipeline's records folder).
        strategy: A tf.distribute strategy (default: the default strategy).
        resume: Continue the run in ``run_dir`` from its latest intact checkpoint.
        log: Prints one-line messages (default: print).
        verify_records: Also check every shard's sha256 against the manifest before training (existence
            and byte sizes are always checked).

    Raises:
        RunError: a fresh run into a directory that already holds one, or a directory another fit holds.
        RecordsError: records missing, truncated or (``verify_records``) altered; the shard is named.

    Example:
        >>> Trainer(load_pipeline("pipelines/isbi2012.toml"), "runs/isbi").fit(max_minutes=60)
    """

    def __init__(
        self,
        config: PipelineConfig,
        run_dir,
        records_dir=None,
        strategy=None,
        resume: bool = False,
        log=print,
        verify_records: bool = False,
    ):
        self.config = config
        self.paths = RunPaths(Path(run_dir))
        records_dir = records_dir or config.records_dir()
        # Remote folders (gs://, s3://) stay strings: pathlib would fold their "//".
        self.records_dir = records_dir if "://" in str(records_dir) else Path(records_dir).resolve()
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.log = log if self.chief else (lambda *args, **kwargs: None)
        self.resume = resume
        self.manifest = read_manifest(self.records_dir)
        if self.manifest["counts"]["train"] == 0:
            raise RunError(f"{self.records_dir}: no training frames")
        check_shards(self.records_dir, checksums=verify_records, manifest=self.manifest)
        if self.chief:  # other workers of a multi-worker job share the chief's run directory
            check_run_free(self.paths.root)
            if not resume:
                self._refuse_existing_run()

    def _refuse_existing_run(self) -> None:
        """A fresh fit never writes into a run: it would mix two runs' checkpoints and history."""
        found = [name for name in RUN_FILES if (self.paths.root / name).exists()]
        if found:
            raise RunError(
                f"{self.paths.root}: a run already exists here ({', '.join(found)}); continue it with "
                f"--resume {self.paths.root}, or choose another --run-dir"
            )

    # The steps the whole run will take (epochs x steps per epoch unless capped).
    def _total_steps(self, epochs: int | None, steps: int | None) -> int:
        if steps:
            return steps
        return (epochs or self.config.train.epochs) * self.config.train.steps_per_epoch

    def fit(self, epochs: int | None = None, steps: int | None = None, max_minutes: float | None = None) -> dict:
        """Trains until ``steps`` (or ``epochs`` x steps_per_epoch) or ``max_minutes``; returns the final state.

        The chief holds the run directory's lock (:func:`locked_run`) from the moment the directory is
        created until training ends.
        """
        train = self.config.train
        total_steps = self._total_steps(epochs, steps)
        max_minutes = train.max_minutes if max_minutes is None else max_minutes
        session = self._new_session(total_steps)
        if not self.resume:
            self._initialise(session)
        creating = self.chief and not self.paths.root.exists()
        with contextlib.ExitStack() as stack:
            if self.chief:
                # Only now, once the model exists and its starting weights are in place: a run that cannot
                # start (a bad init_from, a model that does not build) leaves no half-made run directory.
                self.paths.root.mkdir(parents=True, exist_ok=True)
                stack.enter_context(locked_run(self.paths.root))
                if creating:
                    stack.callback(self._discard_if_unstarted, session)
                self._open_run()
            # Read under the lock: another fit may have saved checkpoints until a moment ago.
            session.manager = tf.train.CheckpointManager(session.checkpoint, str(session.checkpoint_dir), max_to_keep=2)
            if self.resume:
                self._restore(session)
            start_step = int(session.step.numpy())
            pending = self._epoch_end_pending(start_step, int(session.loss_count.numpy()), total_steps)
            if self.chief:
                self._write_run_config()
                completed_epochs = (start_step - 1 if pending else start_step) // train.steps_per_epoch
                self._truncate_history(completed_epochs)
            try:
                status, current = self._train(session, start_step, total_steps, max_minutes, pending)
            finally:
                if not self.chief:
                    shutil.rmtree(session.checkpoint_dir, ignore_errors=True)
            state = {
                "status": status,
                "step": current,
                "total_steps": total_steps,
                "epoch": current // train.steps_per_epoch,
                "best_metric": train.best_metric,
                "best_value": float(session.best_value.numpy()),
                "seconds_this_session": round(time.monotonic() - session.started, 1),
            }
            if self.chief:
                atomic_write_json(self.paths.state, state)
                self.log(f"{status} at step {current}; best {train.best_metric} = {state['best_value']:.4f}")
        self.model = session.model
        return state

    def _discard_if_unstarted(self, session: _Session) -> None:
        """Deletes the run directory this fit created if it ends without a checkpoint (failed at its first
        steps, e.g. on damaged records), so that no half-made run is left to refuse or confuse the next fit.
        Runs before the lock is released."""
        if (session.manager is None or session.manager.latest_checkpoint is None) and self.paths.root.is_dir():
            shutil.rmtree(self.paths.root, ignore_errors=True)
            self.log(f"removed {self.paths.root}: the run ended before its first checkpoint")

    def _new_session(self, total_steps: int) -> _Session:
        """The model, optimizer and checkpoint, before any file is written."""
        config, train = self.config, self.config.train
        checkpoint_dir = self.paths.checkpoints if self.chief else Path(tempfile.mkdtemp(prefix="kunet-worker-"))
        with self.strategy.scope():
            model = build_model(config, train.precision, self.manifest)
            optimizer = build_optimizer(config, total_steps, train.precision)
            optimizer.build(model.trainable_variables)
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            loss_sum = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="epoch_loss_sum")
            loss_count = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_loss_count")
            best_value = tf.Variable(float("nan"), dtype=tf.float64, trainable=False, name="best_value")
        # Dropout's random state is not part of the model's checkpointed weights; without it a resumed
        # run would draw different dropout masks than an uninterrupted one.
        dropout_states = [g.state for layer in model.layers for g in getattr(layer, "_seed_generators", [])]
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, dropout_states=dropout_states, step=step,
                                         epoch_loss_sum=loss_sum, epoch_loss_count=loss_count,
                                         best_value=best_value)  # fmt: skip
        return _Session(model, optimizer, step, loss_sum, loss_count, best_value, checkpoint, checkpoint_dir)

    def _initialise(self, session: _Session) -> None:
        """The starting weights of a run that starts from step 0: train.init_from's, if configured."""
        if self.config.train.init_from:
            initialise_from(session.model, self.config.path(self.config.train.init_from))
            self.log(f"initialised the weights from {self.config.train.init_from}")

    def _open_run(self) -> None:
        """Under the run lock: refuses a run that appeared meanwhile, and clears what killed runs left."""
        if not self.resume:
            self._refuse_existing_run()
        removed = remove_run_temporaries(self.paths)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) left by a killed run: "
                     + ", ".join(str(path.relative_to(self.paths.root)) for path in removed))  # fmt: skip

    def _restore(self, session: _Session) -> None:
        """Restores the latest intact checkpoint; a damaged one is reported and the one before it used."""
        candidates = list(reversed(session.manager.checkpoints))
        if not candidates:
            if self.chief and self.paths.config.is_file():
                self.log(f"{self.paths.root}: killed before its first checkpoint; starting it from step 0")
                self._initialise(session)
                return
            raise RunError(f"{self.paths.root}: nothing to resume (no checkpoint)")
        failures = []
        for path in candidates:
            try:
                session.checkpoint.restore(path).assert_existing_objects_matched()
            # A damaged file surfaces as any of OpError, IndexError, ValueError, a protobuf DecodeError...
            except Exception as error:  # every one of them means: use the one before
                failures.append(f"{Path(path).name}: {_first_line(error)}")
                self.log(f"checkpoint {path} cannot be restored ({_first_line(error)}); trying the one before it")
                continue
            used = f" from {Path(path).name}, the latest intact checkpoint" if failures else ""
            self.log(f"resumed {self.paths.root} at step {int(session.step.numpy())}{used}")
            return
        raise RunError(
            f"{self.paths.root}: no checkpoint can be restored, all damaged or not of this model "
            f"({'; '.join(failures)})"
        )

    def _epoch_end_pending(self, step: int, loss_count: int, total_steps: int) -> bool:
        """True if the checkpoint was taken at the end of an epoch whose validation and history row were
        cut short: it still holds that epoch's loss sums (they are reset once the row is written)."""
        if step == 0 or loss_count == 0:
            return False
        return step % self.config.train.steps_per_epoch == 0 or step >= total_steps

    def _write_run_config(self) -> None:
        atomic_write_json(
            self.paths.config,
            {
                "pipeline": self.config.to_dict(),
                "base_dir": self.config.base_dir,
                "records": str(self.records_dir),
                # The weight map is baked into the records, which `--records` may take from another
                # pipeline's build: keep what the net actually trained on, not only what was configured.
                "records_weight_map": self.manifest.get("weight_map"),
            },
        )

    def _train_step_function(self, session: _Session, placement: str):
        """The distributed training step: one batch per replica, the summed loss back."""
        config, train, strategy = self.config, self.config.train, self.strategy
        shape = tile_shape(config)
        global_pixels = float(train.batch_size * strategy.num_replicas_in_sync * shape.output * shape.output)
        model, optimizer = session.model, session.optimizer

        def step_fn(batch):
            if placement == "device":
                tiles, classes, weights = device_tiles(batch, config)
            else:
                tiles, classes, weights = batch
            with tf.GradientTape() as tape:
                logits = model(tiles, training=True)
                loss = segmentation_loss(classes, logits, weights, config.labels.num_classes, global_pixels,
                                         train.loss, train.dice_weight)  # fmt: skip
                scaled = optimizer.scale_loss(loss)
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            return loss

        compiled_step = tf.function(step_fn, jit_compile=train.jit_compile)

        @tf.function
        def train_step(iterator):
            per_replica = strategy.run(compiled_step, args=(next(iterator),))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return train_step

    def _batches(self, start_step: int, placement: str):
        strategy = self.strategy
        global_batch = self.config.train.batch_size * strategy.num_replicas_in_sync
        local_replicas = max(
            1, strategy.num_replicas_in_sync // max(1, getattr(strategy.extended, "_num_workers", 1) or 1)
        )

        def dataset_fn(context: tf.distribute.InputContext):
            return training_dataset(
                self.config,
                self.records_dir,
                context.get_per_replica_batch_size(global_batch),
                placement,
                start_step=start_step * local_replicas,
                num_pipelines=context.num_input_pipelines,
                pipeline_id=context.input_pipeline_id,
            )

        return iter(strategy.distribute_datasets_from_function(dataset_fn))

    def _train(
        self, session: _Session, start_step: int, total_steps: int, max_minutes: float, pending: bool
    ) -> tuple[str, int]:
        """The training loop; returns the status and the step reached."""
        config, train = self.config, self.config.train
        placement = resolve_placement(config.augment.on)
        train_step = self._train_step_function(session, placement)
        iterator = self._batches(start_step, placement)
        session.writer = tf.summary.create_file_writer(str(self.paths.tensorboard)) if self.chief else None
        session.started = time.monotonic()
        # "seconds" in the history is the run's training wall time, summed over resumed sessions.
        kept = [row for row in self._history_rows() if int(row["step"]) <= start_step]
        self._seconds_before = float(kept[-1]["seconds"]) if kept else 0.0
        shape = tile_shape(config)
        self.log(
            f"training {config.name}: steps {start_step}->{total_steps}, {self.strategy.num_replicas_in_sync} "
            f"replica(s), batch {train.batch_size * self.strategy.num_replicas_in_sync}, tile {shape.input}->"
            f"{shape.output}, {train.precision}, augmentation on {placement}"
        )
        if pending:
            epoch = (start_step - 1) // train.steps_per_epoch
            self.log(f"finishing epoch {epoch + 1}: its validation and history row were cut short")
            self._end_of_epoch(session, epoch, start_step, True, force_validation=start_step >= total_steps)
            session.manager.save(checkpoint_number=start_step)
        try:
            return self._run_epochs(session, train_step, iterator, start_step, total_steps, max_minutes)
        except tf.errors.OpError:
            # A damaged shard fails deep inside tf.data; read the shards again to name it.
            damaged = find_damaged_shard(self.records_dir, "train")
            if damaged is None:
                raise
            raise damaged from None

    def _run_epochs(self, session, train_step, iterator, current, total_steps, max_minutes) -> tuple[str, int]:
        train = self.config.train
        status = "completed"
        while current < total_steps:
            epoch = current // train.steps_per_epoch
            epoch_end = min((epoch + 1) * train.steps_per_epoch, total_steps)
            progress = keras.utils.Progbar(epoch_end - epoch * train.steps_per_epoch, stateful_metrics=["loss"])
            if self.chief:
                print(f"epoch {epoch + 1}/{math.ceil(total_steps / train.steps_per_epoch)}")
            while current < epoch_end:
                loss = float(train_step(iterator))
                if not math.isfinite(loss):
                    raise RunError(f"{self.paths.root}: loss became {loss} at step {current}; lower the learning rate")
                current += 1
                session.step.assign(current)
                session.loss_sum.assign_add(loss)
                session.loss_count.assign_add(1)
                if self.chief:
                    progress.update(current - epoch * train.steps_per_epoch, [("loss", loss)])
                # The checkpoint at the epoch's end comes before its validation, which may take long; a run
                # killed during it finishes that epoch's end when resumed (see _epoch_end_pending).
                if current % train.checkpoint_every_steps == 0 or current == epoch_end:
                    session.manager.save(checkpoint_number=current)
                if max_minutes and (time.monotonic() - session.started) / 60.0 >= max_minutes:
                    status = "time budget reached"
                    break
            epoch_complete = current == epoch_end
            if epoch_complete or status != "completed":
                force = status != "completed" or current >= total_steps
                self._end_of_epoch(session, epoch, current, epoch_complete, force_validation=force)
                session.manager.save(checkpoint_number=current)
            if status != "completed":
                break
        return status, current

    def _end_of_epoch(self, session: _Session, epoch: int, current: int, epoch_complete: bool, force_validation):
        """Validation, the history row, models, summaries and state.json of an epoch (or of the part of it a
        time budget allowed). The loss sums are reset only for a complete epoch, so an epoch stopped and
        resumed part-way gets one row with the loss over all its steps."""
        train, model = self.config.train, session.model
        row = {
            "epoch": epoch + 1,
            "step": current,
            "loss": float(session.loss_sum.numpy()) / max(1, int(session.loss_count.numpy())),
            "learning_rate": float(keras.ops.convert_to_numpy(session.optimizer.learning_rate)),
            "seconds": round(self._seconds_before + time.monotonic() - session.started, 1),
        }
        if epoch_complete:
            session.loss_sum.assign(0.0)
            session.loss_count.assign(0)
        validate_now = force_validation or (epoch + 1) % train.validate_every == 0
        if self.chief and validate_now and self.manifest["counts"]["val"]:
            scores, example = validate(
                model, self.records_dir, inference_settings(self.config, self.manifest), tiling=self.config.inference
            )
            row.update(scores)
            value = scores.get(train.best_metric, float("nan"))
            if metric_is_better(train.best_metric, value, float(session.best_value.numpy())):
                session.best_value.assign(value)
                atomic_save(self.paths.best_model, model.save)
            self._write_images(session.writer, example, current)
        elif self.chief and validate_now and not self.paths.best_model.exists():
            atomic_save(self.paths.best_model, model.save)
        if not self.chief:
            return
        atomic_save(self.paths.last_model, model.save)
        self._append_history(row)
        with session.writer.as_default(step=current):
            for key, value in row.items():
                if key not in ("epoch", "step", "seconds"):
                    tf.summary.scalar(key, value)
        session.writer.flush()
        self._plot()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        self.log(f"epoch {epoch + 1}: loss {row['loss']:.4f}" + (f", {shown}" if shown else ""))
        atomic_write_json(
            self.paths.state,
            {"status": "running", "step": current, "epoch": epoch + 1, "best_metric": train.best_metric,
             "best_value": float(session.best_value.numpy())},
        )  # fmt: skip

    def _write_images(self, writer, example: dict, current: int) -> None:
        if not example:
            return
        image = visualize.to_display(example["image"])
        foreground = example["probabilities"][..., -1]
        prediction = (np.stack([foreground] * 3, -1) * 255).astype(np.uint8)
        label = visualize.overlay_outlines(example["image"], example["classes"])
        with writer.as_default(step=current):
            tf.summary.image("validation/input_prediction_label", np.stack([image, prediction, label]), max_outputs=3)

    def _history_rows(self) -> list[dict]:
        if not self.paths.history.exists():
            return []
        with open(self.paths.history, newline="") as stream:
            return list(csv.DictReader(stream))

    def _truncate_history(self, completed_epochs: int) -> None:
        """Drops rows of epochs a resumed run will redo (written after the checkpoint it resumes from)."""
        rows = [row for row in self._history_rows() if int(row["epoch"]) <= completed_epochs]
        self._write_history(rows)

    def _append_history(self, row: dict) -> None:
        rows = self._history_rows() + [{k: str(v) for k, v in row.items()}]
        self._write_history(rows)

    def _write_history(self, rows: list[dict]) -> None:
        fields = list(HISTORY_FIELDS)
        for row in rows:
            fields += [key for key in row if key not in fields]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.paths.history, text.getvalue())

    def _plot(self) -> None:
        rows = self._history_rows()
        series = {"train loss": [(float(r["epoch"]), float(r["loss"])) for r in rows]}
        for key in ("val_loss", "val_foreground_iou", "val_pixel_error", "val_rand_error", "val_rand_error_grown"):
            if rows and key in rows[-1]:
                series[key] = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        visualize.plot_curves(self.paths.plot, series, title=f"{self.config.name}: training", x_label="epoch")
