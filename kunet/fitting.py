"""Training in one call: from a pipeline TOML (:func:`fit`) or from arrays in memory (:func:`fit_arrays`).

Both are thin: :func:`fit` is ``kunet fit`` without the command line, and :func:`fit_arrays` writes the arrays
as records (:func:`kunet.records.build_records` with :func:`kunet.sources.array_frames`) and trains on them
with the same pipeline, loss and run directory as any other run: a notebook and a batch job train the
same way.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from kunet.config import PipelineConfig, apply_overrides, load_pipeline, pipeline_from_dict
from kunet.progress import reporting


def resolve_pipeline(
    pipeline: str | os.PathLike | PipelineConfig | None, overrides: Sequence[str] = (), where: str = "overrides"
) -> PipelineConfig:
    """A pipeline from a TOML path, a config (overrides applied to a copy) or ``None`` (the defaults, rooted at
    the working directory; ``where`` names the overrides in errors)."""
    if isinstance(pipeline, PipelineConfig):
        return pipeline_from_dict(apply_overrides(pipeline.to_dict(), list(overrides)), pipeline.base_dir)
    if pipeline is None:
        return pipeline_from_dict(apply_overrides({}, list(overrides)), base_dir=Path.cwd(), where=where)
    return load_pipeline(pipeline, list(overrides))


def fit(
    pipeline: str | os.PathLike | PipelineConfig,
    run_dir: str | os.PathLike | None = None,
    records_dir: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    epochs: int | None = None,
    steps: int | None = None,
    max_minutes: float | None = None,
    callbacks: list | None = None,
    log: Callable[[str], None] = print,
    progress: str = "auto",
    log_every: int | None = None,
) -> dict:
    """Trains a run as ``kunet fit`` does; returns its final state (``status``, ``step``, ``best_value``...).

    Args:
        pipeline: The pipeline TOML file or a :class:`~kunet.config.PipelineConfig`.
        run_dir: The run directory (default ``runs/<pipeline name>``).
        records_dir: Records from :func:`build_records` (default: the pipeline's ``records.out``).
        overrides: ``section.key=value`` settings, as ``--set`` takes them.
        resume: Continue the run in ``run_dir`` from its latest checkpoint.
        epochs, steps, max_minutes: When to stop (default: the pipeline's ``train`` section).
        callbacks, log, progress, log_every: As :class:`kunet.train.Trainer` takes them.

    Example:
        >>> state = kunet.fit("pipelines/isbi2012.toml", "runs/isbi", max_minutes=60)
    """
    from kunet.train import Trainer

    config = resolve_pipeline(pipeline, overrides)
    run_dir = run_dir or Path("runs") / config.name
    trainer = Trainer(config, run_dir, records_dir, resume=resume, log=log, callbacks=callbacks, progress=progress,
                      log_every=log_every)  # fmt: skip
    return trainer.fit(epochs=epochs, steps=steps, max_minutes=max_minutes)


def fit_arrays(
    images,
    labels,
    run_dir: str | os.PathLike,
    pipeline: str | os.PathLike | PipelineConfig | None = None,
    *,
    validation_data: tuple | None = None,
    records_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    epochs: int | None = None,
    steps: int | None = None,
    max_minutes: float | None = None,
    callbacks: list | None = None,
    log: Callable[[str], None] = print,
    progress: str = "auto",
    log_every: int | None = None,
) -> dict:
    """Trains a U-Net on images and labels in memory; returns the run's final state.

    The arrays are written as records (with the paper's weight maps) and trained on like any other run,
    so the run directory holds the same models, history and ``training.png``.

    Args:
        images: uint8, uint16, int16 or float32 images ``[N, H, W]`` or ``[N, H, W, C]`` (one dtype; float64
            is taken as float32), or a list of such arrays of any sizes.
        labels: Their integer labels, as ``labels.kind`` reads them (default ``binary``: 0 background, 255
            foreground; ``overrides=["labels.kind=instance"]`` for instance ids).
        run_dir: The run directory; it must not hold a run.
        pipeline: Settings (a TOML file, a config, or ``None`` for the defaults); its ``source`` is ignored.
        validation_data: ``(val_images, val_labels)`` to validate on; without it, ``records.val_fraction`` of
            ``images`` (evenly spread) is held out.
        records_dir: Where the records are written and kept (needed to resume or evaluate the run later);
            default: a temporary folder removed when training ends.
        overrides: ``section.key=value`` settings, e.g. ``["train.tile_size=188", "model.depth=3"]``.
        epochs, steps, max_minutes, callbacks, log, progress, log_every: As :func:`fit`.

    Example:
        >>> state = kunet.fit_arrays(images, masks, "runs/nuclei", validation_data=(val_images, val_masks),
        ...                          epochs=20, callbacks=[keras.callbacks.CSVLogger("log.csv")])
        >>> masks = kunet.Segmenter("runs/nuclei").segment(new_image).label_values
    """
    from kunet.records import build_records
    from kunet.sources import array_frames

    frames = array_frames(images, labels)
    overrides = list(overrides)
    if validation_data is not None:
        val_images, val_labels = validation_data
        val_frames = array_frames(val_images, val_labels, prefix="val_")
        frames += val_frames
        overrides.append("records.val_ids=[" + ",".join(f'"{frame.frame_id}"' for frame in val_frames) + "]")
    config = resolve_pipeline(pipeline, overrides)
    temporary = None
    if records_dir is None:
        temporary = records_dir = Path(tempfile.mkdtemp(prefix="kunet-arrays-")) / "records"
    try:
        with reporting(progress, log=log, every=log_every) as factory:
            build_records(config, out=records_dir, frames=frames, progress_factory=factory, log=log)
        return fit(config, run_dir, records_dir, epochs=epochs, steps=steps, max_minutes=max_minutes,
                   callbacks=callbacks, log=log, progress=progress, log_every=log_every)  # fmt: skip
    finally:
        if temporary is not None:
            shutil.rmtree(temporary.parent, ignore_errors=True)
