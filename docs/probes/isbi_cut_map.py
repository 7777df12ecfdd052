"""Probe (docs/RESULTS.md, issue 19): Table 1's pixel and Rand errors of a map with the watershed's cut lines.

The 2015 ISBI leaderboard scored one submitted map per method: pixel error and Rand error are each the best
over thresholds 0.0, 0.1, ..., 1.0 of the same map (:mod:`kunet.metrics.leaderboard`). A border-weighted
net's membranes come out thick, and in the foreground-restricted Rand index every pixel called membrane
inside a true cell is a segment of its own, so the plain map scores a large Rand error at every threshold.
This probe scores, for a trained model and the validation slices:

* the plain map p(cell) (as ``kunet evaluate --leaderboard``'s "ISBI, probs" row);
* the model's stored decision rule, a binary mask (its "ISBI, decision" row);
* "cut maps": p(cell) with the 1-px lines of a seeded watershed set to 0, the seeds p(cell) >= s (after a
  Gaussian blur of sigma b px, optional) flooded over every pixel down to p = 0. At threshold 0.0 the map
  is every pixel but the lines (thin membranes: the Rand error's segments); at 0.3 it is the thresholded map
  with the cuts (the pixel error's).

Usage: ``.venv/bin/python docs/probes/isbi_cut_map.py runs/isbi2012-s0/last.keras [--data ../shared/data/isbi2012]``
(bf16 prediction with test-time mirroring, slices 15-19; about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kunet.decision import DecisionRule  # noqa: E402
from kunet.metrics.leaderboard import leaderboard_pixel_error, leaderboard_rand_error  # noqa: E402
from kunet.segmenter import Segmenter  # noqa: E402


def cut_map(p_cell: np.ndarray, seed_threshold: float, blur: float) -> np.ndarray:
    """p(cell) with the lines of a watershed from seeds p >= ``seed_threshold``, flooded to p = 0, set to 0
    (what kunet now stores as a rule: :meth:`kunet.decision.DecisionRule.cut_map`)."""
    return DecisionRule(0.0, "watershed", seed_threshold, smoothing=blur).cut_map_from_maps(p_cell, p_cell)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / ".." / "shared/data/isbi2012"))
    parser.add_argument("--slices", default="15,16,17,18,19")
    args = parser.parse_args()
    ids = [f"slice_{int(i):02d}" for i in args.slices.split(",")]
    folder = Path(args.data) / "train"
    images = [cv2.imread(str(folder / "images" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids]
    truths = np.stack([cv2.imread(str(folder / "labels" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids])
    segmenter = Segmenter(args.model, precision="mixed_bfloat16")
    probabilities = [segmenter.probabilities(image) for image in images]
    p_cell = [p[..., -1] for p in probabilities]  # ISBI: classes (membrane, cell)
    decided = np.stack([segmenter.decide(p) for p in probabilities]).astype(np.float32)
    rule = segmenter.settings
    print(f"model {args.model}; slices {', '.join(ids)}; stored rule: threshold {rule.threshold}, "
          f"{rule.postprocess} seeds {rule.seed_threshold} blur {rule.seed_smoothing}")  # fmt: skip
    print(f"{'proposal':<40} {'pixel error (t)':>16} {'Rand error (t)':>16}")
    rows = [("plain map p(cell)", np.stack(p_cell), None), ("stored decision (binary)", decided, (0.0,))]
    rows += [(f"cut map, seeds {s}, blur {b}", np.stack([cut_map(p, s, b) for p in p_cell]), None)
             for s in (0.8, 0.9, 0.95) for b in (0.0, 4.0)]  # fmt: skip
    for name, proposals, thresholds in rows:
        options = {} if thresholds is None else {"thresholds": thresholds}
        pixel = leaderboard_pixel_error(proposals, truths, **options)
        rand = leaderboard_rand_error(proposals, truths, **options)
        print(f"{name:<40} {pixel.value:10.4f} ({pixel.threshold:.1f}) {rand.value:10.4f} ({rand.threshold:.1f})",
              flush=True)  # fmt: skip
    print("paper, Table 1 (ISBI test set): pixel error 0.0611, Rand error 0.0382")


if __name__ == "__main__":
    main()
