"""Probe (docs/RESULTS.md, issue 19): eight dihedral views at test time instead of kunet's four flips.

The paper averaged its ISBI submission "over 7 rotated versions of the input data". kunet's test-time mirroring
averages the four flips of the image; adding the transposed image's four flips gives all eight rotations and
reflections that keep the pixel grid. This probe predicts slices 15-19 both ways (bf16) and scores the cut map
(:meth:`kunet.decision.DecisionRule.cut_map`, the model's stored threshold, watershed seeds 0.9 / 0.95 / 0.98, no
blur) with Table 1's pixel and Rand errors.

Usage: ``.venv/bin/python docs/probes/isbi_dihedral.py MODEL.keras [MODEL.keras ...] [--data ../shared/data/isbi2012]``
(about a minute per model on 2 cores).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / ".." / "shared/data/isbi2012"))
    args = parser.parse_args()
    folder = Path(args.data) / "train"
    ids = [f"slice_{i}" for i in range(15, 20)]
    images = [cv2.imread(str(folder / "images" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids]
    truths = np.stack([cv2.imread(str(folder / "labels" / f"{i}.png"), cv2.IMREAD_UNCHANGED) for i in ids])
    for model in args.models:
        segmenter = Segmenter(model, precision="mixed_bfloat16", test_time_mirroring=True)
        flips = [segmenter.probabilities(image)[..., -1] for image in images]  # ISBI: classes (membrane, cell)
        transposed = [segmenter.probabilities(np.ascontiguousarray(image.T))[..., -1].T for image in images]
        views = {"4 flips": flips, "8 dihedral views": [(a + b) / 2 for a, b in zip(flips, transposed)]}
        threshold = segmenter.settings.threshold
        print(f"{model}: threshold {threshold}")
        for name, maps in views.items():
            for seeds in (0.9, 0.95, 0.98):
                rule = DecisionRule(threshold, "watershed", seeds)
                cuts = np.stack([rule.cut_map_from_maps(p, p) for p in maps])
                pixel, rand = leaderboard_pixel_error(cuts, truths), leaderboard_rand_error(cuts, truths)
                print(f"  {name:<17} seeds {seeds}: pixel {pixel.value:.4f}  Rand {rand.value:.4f}", flush=True)
    print("paper, Table 1 (ISBI test set, 7 rotated versions averaged): pixel error 0.0611, Rand error 0.0382")


if __name__ == "__main__":
    main()
