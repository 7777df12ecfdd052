"""``kunet fit``: training with the paper's weighted loss — checkpointed, resumable, observable, distributable.

A custom loop rather than ``model.fit``: the data stream, the optimizer and the step counter are
checkpointed together, so a run killed with SIGKILL resumes exactly where its last checkpoint was
(``training_dataset(start_step=...)`` replays the stream deterministically), and the same code runs under
the default strategy, MirroredStrategy and MultiWorkerMirroredStrategy (``TF_CONFIG``).

The run directory and its protection (lock, refusal of an existing run, removal of a killed run's
temporaries) are :mod:`kunet.runs`'s; what is trained is built by :mod:`kunet.builders`; validation scores
frames with :mod:`kunet.scoring`, as ``tune`` and ``evaluate`` do. Here: the loop. The checkpoint at an
epoch's end is taken before its validation; a run killed during the validation finishes that epoch's end
(validation and history row, with that epoch's loss) when resumed. When the latest checkpoint is damaged,
resuming falls back to the one before it and says so. Records are checked against their manifest before
training, and a shard that fails to read is named. SIGTERM/SIGINT stop the loop after a step with a checkpoint
(:mod:`kunet.stopping`), voted on by all workers inside the step.

About 430 lines: what a step, an epoch's end, a stop and a resume write must agree with one another (the
step counter, the epoch's loss sums, the checkpoint taken before validation), so the loop stays in one module;
the run directory, builders, checkpoints and scoring are elsewhere.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from kunet import uris, visualize
from kunet._fs import atomic_save
from kunet.builders import build_model, build_optimizer, finish_switch_step, initialise_from, is_chief
from kunet.checkpoints import restore_latest_intact, save_checkpoint
from kunet.config import PipelineConfig
from kunet.losses import segmentation_loss
from kunet.model import UNet
from kunet.onednn import FROZEN_WEIGHTS_VARIABLE, weights_assumed_frozen
from kunet.optimizers import sum_of_squares
from kunet.pipeline import device_tiles, resolve_placement, tile_shape, training_dataset, training_frame_count
from kunet.precision import resolve_precision
from kunet.progress import LineProgress, no_progress, reporting, resolve_mode
from kunet.records import check_shards, find_damaged_shard, read_manifest
from kunet.runs import (
    RunError,
    RunPaths,
    append_history,
    check_run_free,
    locked_run,
    read_history,
    refuse_existing_run,
    remove_run_temporaries,
    truncate_history,
    write_run_config,
    write_state,
)
from kunet.scoring import VALIDATION_METRICS, metric_is_better, validate
from kunet.stopping import StopRequests


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


# A run whose loss or gradients stay non-finite this long diverged; in single such steps the optimizer leaves
# the variables with non-finite gradients as they were (kunet.optimizers' skip_non_finite). Without that,
# non-finite gradients in one step (bfloat16 runs of DIC-HeLa on a 2-core Xeon; a rerun of the same seed did not
# hit them) turned the first layers' weights into NaN; ReLU maps NaN to 0, so the loss stayed finite and the net
# trained on as a constant predictor. A non-finite loss gives non-finite gradients everywhere: nothing is updated.
MAX_SKIPPED_STEPS_IN_A_ROW = 25


class Trainer:
    """Trains one run. See the module docstring for the run directory.

    Args:
        config: The pipeline configuration (overrides already applied).
        run_dir: Where the run lives.
        records_dir: Records from ``kunet build-records`` (default: the pipeline's records folder).
        strategy: A tf.distribute strategy (default: the default strategy).
        resume: Continue the run in ``run_dir`` from its latest intact checkpoint.
        log: Receives every line the run writes: messages, epoch headers and (unless ``progress`` is
            ``bar``) the progress lines (default: print).
        verify_records: Also check every shard's sha256 against the manifest before training (existence
            and byte sizes are always checked).
        callbacks: ``keras.callbacks.Callback`` objects. They get ``on_train_begin``/``end``,
            ``on_epoch_begin``/``end`` (logs: ``loss``, ``learning_rate`` and the ``val_*`` scores of the
            epoch's validation) and ``on_train_batch_begin``/``end`` (logs: ``loss``), on the chief; setting
            ``model.stop_training`` (as ``EarlyStopping`` does) stops every worker at the epoch's end. Their
            own state (e.g. EarlyStopping's patience count) is not checkpointed: a resumed run starts it anew.
        progress: ``auto`` (a bar on a terminal, plain lines otherwise), ``bar``, ``lines`` or ``none``.
        log_every: Steps between two progress lines in ``lines`` mode (default: about ten per epoch).

    Raises:
        RunError: a fresh run into a directory that already holds one, or a directory another fit holds.
        RecordsError: records missing, truncated or (``verify_records``) altered; the shard is named.

    Example:
        >>> Trainer(load_pipeline("pipelines/isbi2012.toml"), "runs/isbi").fit(max_minutes=60)
        >>> stop = keras.callbacks.EarlyStopping("val_pixel_error", patience=3)
        >>> Trainer(config, "runs/early", callbacks=[stop], progress="lines", log_every=50).fit()
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
        callbacks: list | None = None,
        progress: str = "auto",
        log_every: int | None = None,
    ):
        if weights_assumed_frozen():
            raise RunError(
                f"{FROZEN_WEIGHTS_VARIABLE}=1 is set: oneDNN would keep computing with the first filters it "
                "sees, so the net would not train; unset it for kunet fit (kunet sets it only for commands that "
                "predict)"
            )
        self.config = config
        self.paths = RunPaths(run_dir)  # a local folder or a URI (gs://, ram://)
        records_dir = records_dir or config.records_dir()
        # Remote folders (gs://, s3://) stay strings: pathlib would fold their "//".
        self.records_dir = records_dir if uris.is_remote(records_dir) else Path(records_dir).resolve()
        self.strategy = strategy or tf.distribute.get_strategy()
        self.chief = is_chief(self.strategy)
        self.log = log if self.chief else (lambda *args, **kwargs: None)
        self.progress = resolve_mode(progress) if self.chief else "none"
        self.log_every = log_every
        self.callbacks = list(callbacks or [])
        self._agree = None  # the tf.function all-reducing callbacks' stop requests, once traced
        self._epoch_logs: dict | None = None  # what the callbacks got at the last epoch's end
        self.resume = resume
        self.stop_signal: str | None = None  # set when a signal stopped fit() on this worker
        self.skipped_steps = 0  # steps of this session with a non-finite loss or gradient (not, or partly, applied)
        self._skipped_in_a_row = 0
        self.manifest = read_manifest(self.records_dir)
        if training_frame_count(config, self.manifest) == 0:
            raise RunError(f"{self.records_dir}: no training frames")
        check_shards(self.records_dir, checksums=verify_records, manifest=self.manifest)
        if self.chief:  # other workers of a multi-worker job share the chief's run directory
            check_run_free(self.paths.root)
            if not resume:
                refuse_existing_run(self.paths)

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
        creating = self.chief and not uris.exists(self.paths.root)
        with contextlib.ExitStack() as stack:
            if self.chief:
                # Only now, once the model exists and its starting weights are in place: a run that cannot
                # start (a bad init_from, a model that does not build) leaves no half-made run directory.
                uris.makedirs(self.paths.root)
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
                write_run_config(self.paths, self.config, self.records_dir, self.manifest.get("weight_map"))
                completed_epochs = (start_step - 1 if pending else start_step) // train.steps_per_epoch
                truncate_history(self.paths, completed_epochs)
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
            if status == "stopped":  # by a signal here, or (None) on another worker
                state["stop_signal"] = self.stop_signal
            if self.chief:
                write_state(self.paths, state)
                skipped = f"; {self.skipped_steps} step(s) with non-finite gradients" if self.skipped_steps else ""
                best = state["best_value"]
                # A final run (or one stopped before its first validation) has no best score to show.
                best = f"best {train.best_metric} = {best:.4f}" if math.isfinite(best) else "nothing validated"
                self.log(f"{status} at step {current}; {best}{skipped}")
        self.model = session.model
        return state

    def _discard_if_unstarted(self, session: _Session) -> None:
        """Deletes the run directory this fit created if it ends without a checkpoint (failed at its first
        steps, e.g. on damaged records), so that no half-made run is left to refuse or confuse the next fit.
        Runs before the lock is released."""
        if (session.manager is None or session.manager.latest_checkpoint is None) and uris.isdir(self.paths.root):
            uris.remove(self.paths.root)
            self.log(f"removed {self.paths.root}: the run ended before its first checkpoint")

    def _new_session(self, total_steps: int) -> _Session:
        """The model, optimizer and checkpoint, before any file is written."""
        config, train = self.config, self.config.train
        checkpoint_dir = self.paths.checkpoints if self.chief else Path(tempfile.mkdtemp(prefix="kunet-worker-"))
        with self.strategy.scope():
            precision = resolve_precision(train.precision)
            model = build_model(config, precision, self.manifest)
            optimizer = build_optimizer(config, total_steps, precision)
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
            refuse_existing_run(self.paths)
        removed = remove_run_temporaries(self.paths)
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) left by a killed run: "
                     + ", ".join(str(path).removeprefix(f"{self.paths.root}/") for path in removed))  # fmt: skip

    def _restore(self, session: _Session) -> None:
        """Restores the run's latest intact checkpoint (:mod:`kunet.checkpoints`); a run killed before its first
        checkpoint starts from step 0."""
        paths = self.paths
        restored, fell_back = restore_latest_intact(session.checkpoint, paths.checkpoints, self.log, paths.root)
        if restored is not None:
            used = f" from {uris.name(restored)}, the latest intact checkpoint" if fell_back else ""
            self.log(f"resumed {self.paths.root} at step {int(session.step.numpy())}{used}")
        elif uris.isfile(self.paths.config):
            self.log(f"{self.paths.root}: killed before its first checkpoint; starting it from step 0")
            self._initialise(session)
        else:
            raise RunError(f"{self.paths.root}: nothing to resume (no checkpoint)")

    def _epoch_end_pending(self, step: int, loss_count: int, total_steps: int) -> bool:
        """True if the checkpoint was taken at the end of an epoch whose validation and history row were
        cut short: it still holds that epoch's loss sums (they are reset once the row is written)."""
        if step == 0 or loss_count == 0:
            return False
        return step % self.config.train.steps_per_epoch == 0 or step >= total_steps

    def _train_step_function(self, session: _Session, placement: str):
        """The distributed training step: one batch per replica, the summed loss back."""
        config, train, strategy = self.config, self.config.train, self.strategy
        shape = tile_shape(config)
        global_pixels = float(train.batch_size * strategy.num_replicas_in_sync * shape.output * shape.output)
        model, optimizer = session.model, session.optimizer

        def step_fn(batch, stop_votes):
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
            # One pass over the gradients gives both the norm and, for the log line of such a step, which
            # variables' gradients were not finite or so large that their square overflows (the optimizer tests
            # each gradient again where it updates its variable: there nothing waits for the other gradients).
            squares = [sum_of_squares(gradient) for gradient in gradients]
            gradient_norm = tf.sqrt(tf.add_n(squares))
            # Non-finite updates are skipped by the optimizer: per variable by kunet's (build_optimizer), so no
            # update waits for the whole backward pass; the whole step by LossScaleOptimizer (mixed_float16).
            optimizer.apply(gradients, model.trainable_variables)
            broken = tf.cast(~tf.math.is_finite(tf.stack(squares)), tf.float32)
            # The stop votes ride on the loss's all-reduce: every worker learns of a stop after the same step.
            return tf.concat([tf.reshape(tf.cast(loss, tf.float32), [1]), tf.reshape(gradient_norm, [1]), stop_votes,
                              broken], axis=0)  # fmt: skip

        compiled_step = tf.function(step_fn, jit_compile=train.jit_compile)
        self._gradient_names = [variable.path for variable in model.trainable_variables]

        @tf.function
        def train_step(iterator, stop_votes):
            """[summed loss, signal votes, time-budget votes] over all replicas of all workers, and the epoch's
            mean loss so far. The step is counted here rather than by eager assigns and reads between steps:
            those cost more host time than the graph's small ops (about 10 ms a step on a busy 2-core machine)."""
            per_replica = strategy.run(compiled_step, args=(next(iterator), stop_votes))
            summed = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            session.step.assign_add(1)
            # A step with a non-finite loss (nothing updated) leaves the epoch's mean loss to the other steps.
            taken = tf.math.is_finite(summed[0])
            session.loss_sum.assign_add(tf.where(taken, tf.cast(summed[0], tf.float64), tf.constant(0.0, tf.float64)))
            session.loss_count.assign_add(tf.cast(taken, tf.int64))
            return summed, session.loss_sum / tf.cast(tf.maximum(session.loss_count, 1), tf.float64)

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
        kept = [row for row in read_history(self.paths) if int(row["step"]) <= start_step]
        self._seconds_before = float(kept[-1]["seconds"]) if kept else 0.0
        shape = tile_shape(config)
        self.log(
            f"training {config.name}: steps {start_step}->{total_steps}, {self.strategy.num_replicas_in_sync} "
            f"replica(s), batch {train.batch_size * self.strategy.num_replicas_in_sync}, tile {shape.input}->"
            f"{shape.output}, {resolve_precision(train.precision)}, augmentation on {placement}"
        )
        if train.finish.epochs:
            finish = train.finish
            self.log(
                f"Adam until step {finish_switch_step(config, total_steps)}, then SGD (momentum {finish.momentum}, "
                f"learning rate {finish.learning_rate}, {finish.schedule}) for the last {finish.epochs} epochs"
            )
        if pending:
            epoch = (start_step - 1) // train.steps_per_epoch
            self.log(f"finishing epoch {epoch + 1}: its validation and history row were cut short")
            self._end_of_epoch(session, epoch, start_step, True, force_validation=start_step >= total_steps)
            save_checkpoint(session.manager, start_step)
        callbacks = self._callback_list(session, total_steps)
        try:
            with StopRequests() as stops, reporting(self.progress, self.log, self.log_every, transient=True) as bars:
                callbacks.on_train_begin()
                result = self._run_epochs(session, train_step, iterator, start_step, total_steps, max_minutes,
                                          stops, bars, callbacks)  # fmt: skip
                callbacks.on_train_end(self._epoch_logs)
                return result
        except tf.errors.OpError:
            # A damaged shard fails deep inside tf.data; read the shards again to name it.
            damaged = find_damaged_shard(self.records_dir, "train")
            if damaged is None:
                raise
            raise damaged from None

    def _callback_list(self, session: _Session, total_steps: int) -> keras.callbacks.CallbackList:
        """The user's callbacks (on the chief only: validation scores exist there) bound to the model."""
        session.model.stop_training = False
        steps_per_epoch = self.config.train.steps_per_epoch
        return keras.callbacks.CallbackList(
            self.callbacks if self.chief else [], add_history=False, add_progbar=False, model=session.model,
            verbose=0, epochs=math.ceil(total_steps / steps_per_epoch), steps=steps_per_epoch,
        )  # fmt: skip

    def _stop_agreed(self, vote: bool) -> bool:
        """True on every worker if any worker's callbacks asked to stop (an all-reduce at the epoch's end)."""
        if self._agree is None:
            strategy = self.strategy

            @tf.function
            def agree(value):
                per_replica = strategy.run(tf.identity, args=(value,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

            self._agree = agree
        return float(self._agree(tf.constant(1.0 if vote else 0.0))) > 0

    def _run_epochs(
        self, session, train_step, iterator, current, total_steps, max_minutes, stops, bars, callbacks
    ) -> tuple[str, int]:
        train = self.config.train
        status = "completed"
        epochs = math.ceil(total_steps / train.steps_per_epoch)
        while current < total_steps:
            epoch = current // train.steps_per_epoch
            epoch_start, epoch_end = (
                epoch * train.steps_per_epoch,
                min((epoch + 1) * train.steps_per_epoch, total_steps),
            )
            advance = bars(f"epoch {epoch + 1}/{epochs}: step", epoch_end - epoch_start, current - epoch_start)
            callbacks.on_epoch_begin(epoch)
            while current < epoch_end:
                out_of_time = bool(max_minutes) and (time.monotonic() - session.started) / 60.0 >= max_minutes
                _, signal_votes, time_votes = self._step(
                    train_step, iterator, current, current - epoch_start, bool(stops.requested), out_of_time, advance,
                    callbacks,
                )  # fmt: skip
                current += 1
                # The checkpoint at the epoch's end comes before its validation, which may take long; a run
                # killed during it finishes that epoch's end when resumed (see _epoch_end_pending).
                if current % train.checkpoint_every_steps == 0 or current == epoch_end:
                    save_checkpoint(session.manager, current)
                if signal_votes:
                    self.stop_signal = stops.requested
                    return self._stop(session, current, stops.requested), current
                if time_votes:
                    status = "time budget reached"
                    break
            epoch_complete = current == epoch_end
            if epoch_complete or status != "completed":
                force = status != "completed" or current >= total_steps
                row = self._end_of_epoch(session, epoch, current, epoch_complete, force_validation=force)
                save_checkpoint(session.manager, current)
                self._epoch_logs = {k: v for k, v in (row or {}).items() if k not in ("epoch", "step", "seconds")}
                callbacks.on_epoch_end(epoch, self._epoch_logs)
                if self.callbacks and self._stop_agreed(bool(getattr(session.model, "stop_training", False))):
                    if status == "completed" and current < total_steps:
                        status = "stopped by callback"
                        self.log(f"a callback stopped training at the end of epoch {epoch + 1} (step {current})")
            if status != "completed":
                break
        return status, current

    def _step(
        self, train_step, iterator, current, batch_index, stop_requested, out_of_time, advance, callbacks
    ) -> tuple[float, float, float]:
        """One step as the loop runs it (the compiled step and its host work); returns the loss and the votes."""
        callbacks.on_train_batch_begin(batch_index)
        votes = tf.constant([1.0 if stop_requested else 0.0, 1.0 if out_of_time else 0.0])
        summed, epoch_mean = train_step(iterator, votes)
        loss, gradient_norm, signal_votes, time_votes, *broken = summed.numpy().tolist()  # one read: eager ops cost
        if math.isfinite(loss) and math.isfinite(gradient_norm):
            self._skipped_in_a_row = 0
        else:
            self._skipped_in_a_row += 1
            self.skipped_steps += 1
            names = [name for name, flag in zip(self._gradient_names, broken) if flag]
            shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            self.log(f"step {current + 1}: loss {loss}, gradient norm {gradient_norm} (not finite: {shown or 'none'});"
                     " those variables were not updated")  # fmt: skip
            if self._skipped_in_a_row >= MAX_SKIPPED_STEPS_IN_A_ROW:
                raise RunError(
                    f"{self.paths.root}: loss or gradients were not finite in {self._skipped_in_a_row} steps in a "
                    f"row (up to step {current + 1}); lower the learning rate"
                )
        # The epoch's mean loss so far: one step's loss jumps with its tile.
        advance(loss=float(epoch_mean))
        callbacks.on_train_batch_end(batch_index, {"loss": loss})
        return loss, signal_votes, time_votes

    def step_for_benchmark(self, batch):
        """A callable running exactly the step fit() runs (its compiled step, all-reduce and per-step host work:
        sync, counters, progress lines, callbacks), fed ``batch`` = (tiles, classes, weights) every time; returns the
        step's loss. Checkpoints, validation and the input pipeline are left out. For benchmarks/train_step.py.
        """
        session = self._new_session(self._total_steps(None, None))
        train_step = self._train_step_function(session, "host")
        iterator = iter(self.strategy.distribute_datasets_from_function(
            lambda context: tf.data.Dataset.from_tensors(tuple(batch)).repeat()))  # fmt: skip
        callbacks = self._callback_list(session, self._total_steps(None, None))
        total = self.config.train.steps_per_epoch
        lines = self.progress == "lines"
        advance = LineProgress("step", total, self.log, self.log_every) if lines else no_progress("step", total)
        steps = iter(range(1 << 62))

        def step() -> float:
            current = next(steps)
            return self._step(train_step, iterator, current, current, False, False, advance, callbacks)[0]

        return step

    def _stop(self, session: _Session, current: int, signal_name: str | None) -> str:
        """A stop asked for by SIGTERM/SIGINT (here or on another worker): the step's checkpoint, no validation
        (a grace period is short); resuming finishes the epoch with the loss over all its steps."""
        latest = session.manager.latest_checkpoint
        if latest is None or not latest.endswith(f"-{current}"):
            save_checkpoint(session.manager, current)
        where = f"{signal_name} received" if signal_name else "another worker was signalled"
        self.log(f"stopping at step {current} ({where}): checkpoint saved; continue with kunet fit --resume "
                 f"{self.paths.root}")  # fmt: skip
        return "stopped"

    def _end_of_epoch(
        self, session: _Session, epoch: int, current: int, epoch_complete: bool, force_validation
    ) -> dict:
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
        validates = self.manifest["counts"]["val"] and not train.final  # a final run trains on the val frames
        if self.chief and validate_now and validates:
            scores, example = validate(model, self.records_dir, self.config.inference.tiling())
            row.update(scores)
            value = scores.get(train.best_metric, float("nan"))
            if metric_is_better(train.best_metric, value, float(session.best_value.numpy())):
                session.best_value.assign(value)
                atomic_save(self.paths.best_model, model.save)
            if example:
                with session.writer.as_default(step=current):
                    triptych = visualize.validation_triptych(example)
                    tf.summary.image("validation/input_prediction_label", triptych, max_outputs=3)
        elif self.chief and validate_now:  # nothing to choose by: the best model is the latest
            atomic_save(self.paths.best_model, model.save)
        if not self.chief:
            return row
        atomic_save(self.paths.last_model, model.save)
        append_history(self.paths, row)
        with session.writer.as_default(step=current):
            for key, value in row.items():
                if key not in ("epoch", "step", "seconds"):
                    tf.summary.scalar(key, value)
        session.writer.flush()
        title = f"{self.config.name}: training"
        visualize.plot_history(read_history(self.paths), self.paths.plot, title, VALIDATION_METRICS)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        self.log(f"epoch {epoch + 1}: loss {row['loss']:.4f}" + (f", {shown}" if shown else ""))
        best = float(session.best_value.numpy())
        state = {"status": "running", "step": current, "epoch": epoch + 1, "best_metric": train.best_metric}
        write_state(self.paths, state | {"best_value": best})
        return row
