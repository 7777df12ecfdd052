"""Probe (docs/RESULTS.md, issue 19): where Table 1's Rand error comes from, slice by slice, and model averaging.

Table 1's Rand error is one F-score over the whole stack of validation slices (slices 15-19), in which every
pair of pixels inside the truth's cells counts; one large true cell cut in two, or two merged, moves it by
several points. For each model (its stored rule's cut map, :meth:`kunet.decision.DecisionRule.cut_map`, bf16
with test-time mirroring) this prints:

* the stack's Rand error, each slice's own, and the stack's without each slice in turn;
* per slice, the largest split (a true cell spread over several proposed segments) and the largest merge (a
  proposed segment over several true cells), each as its share of the slice's truth pairs;
* with ``--average``, the Rand and pixel error of the models' averaged probability maps (an ensemble), at
  watershed seeds 0.85 / 0.9 / 0.95 / 0.98, with the first model's threshold.

``--figure PATH`` writes a PNG of the slice with the largest split of the first model: the image with that
true cell tinted, the proposed segments over it outlined (green: mostly inside it; blue: mostly outside), the cut
map and the truth.

Usage: ``.venv/bin/python docs/probes/isbi_rand_by_slice.py MODEL.keras [MODEL.keras ...] [--average]
[--figure split.png] [--data ../shared/data/isbi2012]`` (about 10 s of prediction per model on 2 cores, and
about 25 s of scoring per averaged set of maps and seed threshold).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kunet.decision import DecisionRule  # noqa: E402
from kunet.metrics.leaderboard import _components as components  # noqa: E402  (segments as the metric labels them)
from kunet.metrics.leaderboard import leaderboard_pixel_error, leaderboard_rand_error  # noqa: E402
from kunet.segmenter import Segmenter  # noqa: E402

SLICES = range(15, 20)


def worst_errors(cut: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[tuple, tuple]:
    """((true cell, its pixels, share), (proposed segment, its pixels, share, true cells > 50 px in it)).

    A split's share is what the cell loses from the Rand index's true positives, (a_i^2 - sum_j n_ij^2) over the
    slice's truth pairs sum_i a_i^2 (pixels the proposal leaves at 0 count as segments of one pixel); a merge's
    is b_j^2 - sum_i n_ij^2 over the same pairs.
    """
    true_cells, proposed = components(truth > 0), components(cut > threshold)
    inside = true_cells > 0
    overlap = np.zeros((true_cells.max() + 1, proposed.max() + 1), np.int64)
    np.add.at(overlap, (true_cells[inside], proposed[inside]), 1)
    sizes, segment_sizes = overlap.sum(1), overlap[:, 1:].sum(0)
    pairs = float((sizes**2).sum())
    splits = sizes**2 - (overlap[:, 1:] ** 2).sum(1) - overlap[:, 0]
    merges = segment_sizes**2 - (overlap[:, 1:] ** 2).sum(0)
    i, j = int(np.argmax(splits)), int(np.argmax(merges))
    cells_in_merge = int((overlap[:, j + 1] > 50).sum())
    return (i, int(sizes[i]), splits[i] / pairs), (j + 1, int(segment_sizes[j]), merges[j] / pairs, cells_in_merge)


def split_figure(image: np.ndarray, cut: np.ndarray, truth: np.ndarray, threshold: float, cell: int) -> np.ndarray:
    true_cells, proposed = components(truth > 0), components(cut > threshold)
    picture = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    tinted = picture.copy()
    tinted[true_cells == cell] = (0.5 * tinted[true_cells == cell] + (0, 0, 127)).astype(np.uint8)
    for segment in np.unique(proposed[true_cells == cell]):
        if segment == 0:
            continue
        inside = (true_cells[proposed == segment] == cell).mean() > 0.5
        outline = cv2.findContours((proposed == segment).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, outline[0], -1, (0, 255, 0) if inside else (255, 0, 0), 1)
    cut_picture = cv2.cvtColor(np.round(np.clip(cut, 0, 1) * 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    return np.vstack([np.hstack([tinted, picture]), np.hstack([cut_picture, cv2.cvtColor(truth, cv2.COLOR_GRAY2BGR)])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--average", action="store_true", help="also score the models' averaged maps")
    parser.add_argument("--figure", help="PNG of the first model's largest split")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / ".." / "shared/data/isbi2012"))
    args = parser.parse_args()
    folder = Path(args.data) / "train"
    images = [cv2.imread(str(folder / "images" / f"slice_{i}.png"), cv2.IMREAD_UNCHANGED) for i in SLICES]
    truths = np.stack([cv2.imread(str(folder / "labels" / f"slice_{i}.png"), cv2.IMREAD_UNCHANGED) for i in SLICES])
    averaged, first_threshold = [], None
    for number, model in enumerate(args.models):
        segmenter = Segmenter(model, precision="mixed_bfloat16", test_time_mirroring=True)
        maps = np.stack([segmenter.probabilities(image)[..., -1] for image in images])  # classes (membrane, cell)
        averaged.append(maps)
        rule = DecisionRule.of(segmenter.settings)
        first_threshold = rule.threshold if first_threshold is None else first_threshold
        cuts = np.stack([rule.cut_map_from_maps(p, p) for p in maps])
        stack = leaderboard_rand_error(cuts, truths)
        print(
            f"{model}: seeds {rule.seed_threshold}, blur {rule.smoothing}; stack Rand error {stack.value:.4f} "
            f"(at threshold {stack.threshold:.1f})"
        )
        largest_split = (-1.0, 0, 0)  # share, slice index, true cell
        for k, slice_id in enumerate(SLICES):
            rest = [r for r in range(len(SLICES)) if r != k]
            own = leaderboard_rand_error(cuts[k : k + 1], truths[k : k + 1]).value
            without = leaderboard_rand_error(cuts[rest], truths[rest]).value
            split, merge = worst_errors(cuts[k], truths[k], stack.threshold)
            largest_split = max(largest_split, (split[2], k, split[0]))
            print(
                f"  slice {slice_id}: Rand {own:.4f}, stack without it {without:.4f}; largest split: a "
                f"{split[1]}-px cell, {split[2]:.4f} of the slice's pairs; largest merge: a {merge[1]}-px "
                f"segment over {merge[3]} cells, {merge[2]:.4f}",
                flush=True,
            )
        if args.figure and number == 0:
            _, k, cell = largest_split
            cv2.imwrite(args.figure, split_figure(images[k], cuts[k], truths[k], stack.threshold, cell))
            print(f"  wrote {args.figure} (slice {SLICES[k]})")
    if args.average and len(averaged) > 1:
        maps = np.mean(averaged, axis=0)
        for seeds in (0.85, 0.9, 0.95, 0.98):
            rule = DecisionRule(first_threshold, "watershed", seeds)
            cuts = np.stack([rule.cut_map_from_maps(p, p) for p in maps])
            pixel, rand = leaderboard_pixel_error(cuts, truths), leaderboard_rand_error(cuts, truths)
            print(
                f"average of {len(averaged)} models, seeds {seeds}: pixel {pixel.value:.4f}  Rand {rand.value:.4f}",
                flush=True,
            )
    print("paper, Table 1 (ISBI test set): pixel error 0.0611, Rand error 0.0382")


if __name__ == "__main__":
    main()
