"""Time of the object matching scores (AP at IoU 0.5:0.05:0.95) per frame, against StarDist's ``matching``.

Measured in one run on synthetic frames of discs: 512x512 with 100 objects (the frame validation in fit
scores every epoch) and 2048x2048 with 1600. The prediction is the truth shifted by (2, 3) pixels and
relabelled, so most objects match at 0.5 and few at 0.95.

* ``score_frame``: everything kunet.scoring scores per frame (the object scores included), binary labels;
* ``object scores``: what the object scores add to it (components, matching at ten thresholds, AP/F1);
* ``kunet matching``: :func:`kunet.metrics.object_matching` at the ten thresholds;
* ``stardist matching``: ``stardist.matching.matching`` at the same thresholds (skipped if not installed;
  it is not a kunet dependency, and its first call compiles with numba, which is not timed).

Usage: ``.venv/bin/python benchmarks/object_metrics.py [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import median_ms  # noqa: E402

from kunet import metrics, scoring  # noqa: E402


def disc_frame(size: int, count: int, seed: int = 0) -> np.ndarray:
    """Instance labels of ``count`` discs on a grid (radius 40-80 % of the half spacing, jittered centres)."""
    rng = np.random.default_rng(seed)
    per_side = int(np.ceil(np.sqrt(count)))
    spacing = size // per_side
    labels = np.zeros((size, size), np.int32)
    for index in range(count):
        centre = [spacing * (index % per_side) + spacing // 2, spacing * (index // per_side) + spacing // 2]
        centre = tuple(int(c + rng.integers(-spacing // 10, spacing // 10 + 1)) for c in centre)
        cv2.circle(labels, centre, int(spacing / 2 * rng.uniform(0.4, 0.8)), index + 1, -1)
    return labels


def stardist_matching():
    try:
        from stardist.matching import matching
    except ImportError:
        return None
    return matching


def figures(size: int, count: int, stardist) -> dict:
    """The timed calls on one synthetic frame."""
    truth = disc_frame(size, count)
    prediction = np.roll(truth, (2, 3), axis=(0, 1)) * 7
    frame = {"classes": (truth > 0).astype(np.uint8), "label": truth}
    classes = (prediction > 0).astype(np.uint8)
    calls = {
        "score_frame": lambda: scoring.score_frame(classes, frame, 2, "binary"),
        "object scores": lambda: scoring.object_scores(
            metrics.object_matching(*scoring.frame_objects(classes, frame, "binary"))
        ),
        "kunet matching": lambda: metrics.object_matching(prediction, truth),
    }
    if stardist is not None:
        stardist(truth, prediction, thresh=metrics.IOU_THRESHOLDS)  # numba compiles on the first call
        calls["stardist matching"] = lambda: stardist(truth, prediction, thresh=metrics.IOU_THRESHOLDS)
    ap = metrics.mean_average_precision(metrics.object_matching(prediction, truth))
    print(f"{size}x{size}, {count} objects (AP50:95 {ap:.3f}):")
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    repeats = parser.parse_args().repeats
    stardist = stardist_matching()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for size, count in ((512, 100), (2048, 1600)):
        for name, function in figures(size, count, stardist).items():
            print(f"  {name:<18} {median_ms(function, repeats):8.1f} ms")
        if stardist is None:
            print("  stardist matching  not installed")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
