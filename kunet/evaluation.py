"""``kunet evaluate``: a model scored on a records split with the paper's metrics, as a table, JSON and CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from kunet import metrics, visualize
from kunet._fs import atomic_write_json, building_directory, check_output, commit_directory, sweep_temporaries
from kunet.errors import KunetError
from kunet.records import iterate_frames, read_manifest
from kunet.scoring import (
    LeaderboardLabelError,
    frame_objects,
    leaderboard_scores,
    mean_scores,
    objects_report,
    score_frame,
)
from kunet.segmenter import Segmenter

SCORES = "scores.json"  # also the mark of an evaluation folder, which a new evaluation may replace


def evaluate(
    segmenter: Segmenter | str | os.PathLike,
    records_dir: str | os.PathLike,
    split: str = "val",
    out_dir: str | os.PathLike | None = None,
    progress=None,
    leaderboard: bool = False,
) -> dict:
    """Scores every frame of ``split``; writes ``scores.json``, ``scores.csv`` and overlay PNGs to ``out_dir``.

    ``segmenter`` is a :class:`Segmenter` or what it loads (a run directory, ``.keras`` file or export);
    ``progress`` is called once per frame (:mod:`kunet.progress`).

    The outputs are written to a temporary folder that replaces ``out_dir`` only once every frame is
    scored, so a damaged shard or a crash leaves the previous evaluation whole. An existing ``out_dir`` is
    replaced only if it is an evaluation (it holds ``scores.json``) or empty; this is checked first.

    With ``leaderboard`` the report also holds ``"leaderboard"``: the ISBI 2012 leaderboard's five scores of
    the whole split as one stack, in the challenge's definitions (:func:`kunet.scoring.leaderboard_scores`),
    on the probability map and on the stored decision rule.

    For a two-class net the report also holds ``"objects"``: the object matching of the whole split at IoU
    0.5:0.05:0.95 with every frame's counts summed (:func:`kunet.scoring.objects_report`), beside the
    per-frame ``ap50``, ``f1_50`` and ``ap50_95`` whose means ``"mean"`` holds.

    Returns:
        ``{"frames": {frame_id: scores}, "mean": {metric: mean}, "split": split, "model": path}``.

    Raises:
        LeaderboardLabelError: ``leaderboard`` for labels that are not binary (or frames of unequal size).
        RecordsError: a shard of ``split`` is missing, damaged or holds another split (the shard named).
        UnsafeOverwriteError: ``out_dir`` exists and is not an evaluation.
    """
    if not isinstance(segmenter, Segmenter):
        segmenter = Segmenter(segmenter)
    if not out_dir:
        return _score_split(segmenter, records_dir, split, None, progress, leaderboard)
    out = Path(out_dir)
    check_output(out, True, [SCORES])
    sweep_temporaries(out)
    with building_directory(out) as folder:
        report = _score_split(segmenter, records_dir, split, folder, progress, leaderboard)
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


def _check_leaderboard_labels(label_kind: str, num_classes: int) -> None:
    if label_kind != "binary" or num_classes != 2:
        raise LeaderboardLabelError(
            f"--leaderboard scores binary labels (ISBI 2012: 0 = membrane, 255 = cell) with a two-class net; "
            f"these records hold {label_kind} labels for a {num_classes}-class net"
        )


def _score_split(
    segmenter: Segmenter, records_dir, split: str, overlays: Path | None, progress, leaderboard: bool = False
) -> dict:
    """The report of :func:`evaluate`; overlay PNGs go to ``overlays`` if given."""
    label_kind = read_manifest(records_dir)["labels"]["kind"]
    if leaderboard:
        _check_leaderboard_labels(label_kind, segmenter.num_classes)
    per_frame, stacks, matchings = {}, {}, []
    min_object_size = segmenter.settings.min_object_size
    decided_classes = segmenter.rule.decided_classes(segmenter.num_classes)
    for frame in iterate_frames(records_dir, split):
        segmentation = segmenter.segment(frame["image"])
        classes = segmentation.classes
        if leaderboard:
            cut_map = segmenter.rule.cut_map(segmentation.probabilities) if segmenter.rule.step.cuts else None
            stacks[frame["frame_id"]] = (segmentation.probabilities[..., 1], classes, frame["classes"], cut_map)
        per_frame[frame["frame_id"]] = score_frame(classes, frame, decided_classes, label_kind, min_object_size,
                                                   warping=True)  # fmt: skip
        objects = frame_objects(classes, frame, label_kind, min_object_size) if decided_classes == 2 else None
        if objects is not None:
            # Matched again (a few ms beside the warping error's seconds): score_frame keeps only the ratios.
            matchings.append(metrics.object_matching(*objects))
        if overlays:
            if objects is not None and label_kind == "instance":  # a merge or a split is what matters here
                overlay = visualize.overlay_prediction(frame["image"], *objects, legend=True, instances=True)
            else:
                overlay = visualize.overlay_prediction(frame["image"], classes, frame["classes"], legend=True)
            visualize.save_png(overlays / f"{frame['frame_id']}_overlay.png", overlay)
        if progress:
            progress()
    if not per_frame:
        raise KunetError(f"{records_dir}: the {split} split has no frames")
    per_frame = dict(sorted(per_frame.items()))
    mean = mean_scores(list(per_frame.values()))
    report = {
        "model": str(segmenter.path),
        "records": str(records_dir),
        "split": split,
        "threshold": segmenter.settings.threshold,
        "frames": per_frame,
        "mean": mean,
    }
    if matchings:
        report["objects"] = objects_report(metrics.sum_matchings(matchings))
    if leaderboard:
        report["leaderboard"] = _leaderboard(stacks)
    return report


def _leaderboard(stacks: dict) -> dict:
    """The leaderboard scores of the split's frames, stacked in frame order (Fiji scores one stack)."""
    frames = [stacks[frame_id] for frame_id in sorted(stacks)]
    if len({truth.shape for _, _, truth, _ in frames}) != 1:
        raise LeaderboardLabelError("--leaderboard needs frames of one size (the challenge scores one stack)")
    probabilities, decided, truth = (np.stack(parts) for parts in list(zip(*frames, strict=True))[:3])
    cut_maps = None if frames[0][3] is None else np.stack([frame[3] for frame in frames])
    return {"frames": sorted(stacks), **leaderboard_scores(probabilities, decided, truth, cut_maps)}
