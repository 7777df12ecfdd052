"""Time of the paper's weight map (eq. 2) for one 512x512 frame, against the naive full-image computation.

Measured in one run, on synthetic frames of touching cells with 15 objects (kunet.synthetic) and on real
frames where ../shared/data is present (DIC-HeLa: 9-14 cells; ISBI 2012: ~130 cells per slice):

* kunet: exact Euclidean distance transforms restricted to a window around each object
  (``kunet.weightmap.weight_map``);
* naive: one full-image distance transform per object (what most implementations do).

Usage: ``.venv/bin/python benchmarks/weightmap.py [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import median_ms  # noqa: E402

from kunet.config import LabelConfig, WeightMapConfig  # noqa: E402
from kunet.sources import interpret_label  # noqa: E402
from kunet.synthetic import make_cells_sample  # noqa: E402
from kunet.weightmap import class_balance_weights, weight_map  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def naive_weight_map(classes, objects, num_objects, params, class_weights):
    distances = np.stack(
        [cv2.distanceTransform((objects != k).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
         for k in range(1, num_objects + 1)]
    )  # fmt: skip
    distances.sort(axis=0)
    border = params.w0 * np.exp(-np.square(distances[0] + distances[1]) / (params.sigma_factor * params.sigma**2))
    return np.asarray(class_weights, np.float32)[classes] + border * (classes == 0)


def frames():
    rng = np.random.default_rng(0)
    for index in range(3):
        while True:
            _, instances = make_cells_sample(512, rng, num_cells=(15, 15))
            if instances.max() == 15:
                break
        yield f"synthetic, 15 cells #{index}", instances, LabelConfig(kind="instance")
    hela = SHARED / "DIC-C2DH-HeLa" / "01_GT" / "SEG" / "man_seg002.tif"
    if hela.exists():
        yield "DIC-HeLa 01/t002", cv2.imread(str(hela), cv2.IMREAD_UNCHANGED), LabelConfig(kind="instance")
    isbi = SHARED / "isbi2012" / "train" / "labels" / "slice_00.png"
    if isbi.exists():
        yield "ISBI 2012 slice_00", cv2.imread(str(isbi), cv2.IMREAD_UNCHANGED), LabelConfig()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    params = WeightMapConfig().resolved()
    for name, label, labels in frames():
        labelled = interpret_label(label, labels, name)
        weights = class_balance_weights(np.bincount(labelled.classes.ravel(), minlength=2))
        args_ = (labelled.classes, labelled.objects, labelled.num_objects, params, weights)
        fast = median_ms(lambda a=args_: weight_map(*a), args.repeats)
        naive = median_ms(lambda a=args_: naive_weight_map(*a), max(3, args.repeats // 4))
        difference = np.abs(weight_map(*args_) - naive_weight_map(*args_)).max()
        print(f"{name:<34} {labelled.num_objects:4d} objects: kunet {fast:6.1f} ms, naive {naive:7.1f} ms "
              f"({naive / fast:4.1f}x), max difference {difference:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
