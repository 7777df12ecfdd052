"""``kunet evaluate``: a model scored on a records split with the paper's metrics, as a table, JSON and CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from kunet import metrics, visualize
from kunet._fs import atomic_write_json, building_directory, check_output, commit_directory, sweep_temporaries
from kunet.records import iterate_frames, read_manifest
from kunet.segmenter import Segmenter

SCORES = "scores.json"  # also the mark of an evaluation folder, which a new evaluation may replace


def score_frame(segmenter: Segmenter, frame: dict, label_kind: str) -> tuple[dict, np.ndarray]:
    """Scores of one frame and its predicted classes."""
    result = segmenter.segment(frame["image"])
    truth = frame["classes"]
    if segmenter.num_classes == 2:
        instances = frame["label"] if label_kind == "instance" else None
        if instances is not None:
            predicted_instances = metrics.instances_from_foreground(
                result.classes > 0, segmenter.settings.min_object_size
            )
            scores = metrics.binary_segmentation_scores(result.classes > 0, truth > 0, None)
            scores["seg"] = metrics.seg_measure(predicted_instances, instances)
        else:
            scores = metrics.binary_segmentation_scores(result.classes > 0, truth > 0)
    else:
        iou = metrics.iou_per_class(result.classes, truth, segmenter.num_classes)
        scores = {"pixel_error": float(np.mean(result.classes != truth)), "mean_iou": float(np.nanmean(iou[1:]))}
        scores.update({f"iou_class{k}": float(v) for k, v in enumerate(iou)})
    return scores, result.classes


def evaluate(
    segmenter: Segmenter,
    records_dir: str | os.PathLike,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
    progress=None,
) -> dict:
    """Scores every frame of ``split``; writes ``scores.json``, ``scores.csv`` and overlay PNGs to ``out_dir``.

    The outputs are written to a temporary folder that replaces ``out_dir`` only once every frame is
    scored, so a damaged shard or a crash leaves the previous evaluation whole. An existing ``out_dir`` is
    replaced only if it is an evaluation (it holds ``scores.json``) or empty; this is checked first.

    Returns:
        ``{"frames": {frame_id: scores}, "mean": {metric: mean}, "split": split, "model": path}``.

    Raises:
        RecordsError: a shard of ``split`` is missing, damaged or holds another split (the shard named).
        UnsafeOverwriteError: ``out_dir`` exists and is not an evaluation.
    """
    if not out_dir:
        return _score_split(segmenter, records_dir, split, None, progress)
    out = Path(out_dir)
    check_output(out, True, [SCORES])
    sweep_temporaries(out)
    with building_directory(out) as folder:
        report = _score_split(segmenter, records_dir, split, folder, progress)
        atomic_write_json(folder / SCORES, report)
        keys = list(report["mean"])
        with open(folder / "scores.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["frame"] + keys)
            for frame_id, scores in report["frames"].items():
                writer.writerow([frame_id] + [f"{scores[k]:.6f}" for k in keys])
            writer.writerow(["mean"] + [f"{report['mean'][k]:.6f}" for k in keys])
        commit_directory(folder, out, overwrite=True, markers=[SCORES])
    return report


def _score_split(segmenter: Segmenter, records_dir, split: str, overlays: Path | None, progress) -> dict:
    """The report of :func:`evaluate`; overlay PNGs go to ``overlays`` if given."""
    label_kind = read_manifest(records_dir)["labels"]["kind"]
    per_frame = {}
    for frame in iterate_frames(records_dir, split):
        scores, classes = score_frame(segmenter, frame, label_kind)
        per_frame[frame["frame_id"]] = scores
        if overlays:
            overlay = visualize.overlay_prediction(frame["image"], classes, frame["classes"])
            visualize.save_png(overlays / f"{frame['frame_id']}_overlay.png", overlay)
        if progress:
            progress()
    if not per_frame:
        raise ValueError(f"{records_dir}: the {split} split has no frames")
    per_frame = dict(sorted(per_frame.items()))
    keys = list(next(iter(per_frame.values())))
    mean = {key: float(np.nanmean([scores[key] for scores in per_frame.values()])) for key in keys}
    return {
        "model": str(segmenter.path),
        "records": str(records_dir),
        "split": split,
        "threshold": segmenter.settings.threshold,
        "frames": per_frame,
        "mean": mean,
    }
