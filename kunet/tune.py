"""``kunet tune``: choose the decision threshold and post-processing on the validation split.

The border weighting of eq. 2 pushes probabilities towards the boundary class, so 0.5 is rarely the
best threshold; gaps in thin membranes merge cells and dominate the Rand error. This sweeps thresholds
and post-processing on the validation frames (probabilities are computed once), picks the setting that
minimises the chosen objective, and stores it in the model's metadata (``best.keras`` and
``last.keras`` of a run), so ``kunet predict``, ``kunet evaluate`` and ``kunet export`` use it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np

from kunet._fs import atomic_save, atomic_write_json
from kunet.choices import OBJECTIVES  # name: (metric key, minimise?)
from kunet.decision import DecisionRule
from kunet.errors import KunetError
from kunet.progress import ProgressFactory, no_progress
from kunet.records import iterate_frames
from kunet.runs import RunPaths, check_run_free, locked_run
from kunet.scoring import mean_scores, score_frame
from kunet.segmenter import Segmenter

THRESHOLDS = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))
WATERSHED_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
# A border net's seeds are on p(cell), which its borders hold low whatever the foreground threshold.
BORDER_SEED_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
# Gaussian sigmas (px) of p(interior) before seeding: texture inside a cell breaks its seed without a blur.
SEED_SMOOTHINGS = (0.0, 2.0, 4.0)
# The leaderboard objective also tries seeds this confident: the cut map floods from them down to p = 0, and
# fewer, surer seeds split fewer true cells (on the ISBI 2012 validation slices the best of 3 models was 0.98).
LEADERBOARD_SEED_THRESHOLDS = (0.8, 0.9, 0.95, 0.98)


def sweep(
    segmenter: Segmenter,
    records_dir,
    split: str = "val",
    thresholds=THRESHOLDS,
    watershed_thresholds=WATERSHED_THRESHOLDS,
    seed_thresholds=None,
    seed_smoothings=SEED_SMOOTHINGS,
    progress_factory: ProgressFactory | None = None,
    leaderboard: bool = False,
) -> list[dict]:
    """Mean scores over ``split`` for every threshold, and the watershed on a coarser threshold grid.

    ``seed_thresholds`` default: 0.8, 0.9 and 0.95 above the threshold for a two-class net (with
    ``leaderboard``, :data:`LEADERBOARD_SEED_THRESHOLDS`), and :data:`BORDER_SEED_THRESHOLDS` on p(cell) for
    a border net; each watershed is tried with every blur of ``seed_smoothings``.

    With ``leaderboard`` every row also holds ``leaderboard_cut_map``: the ISBI 2012 leaderboard's Rand error
    plus its pixel error (Table 1's definitions, :mod:`kunet.metrics.leaderboard`) of the rule's cut map
    (:meth:`~kunet.decision.DecisionRule.cut_map`) over the split's frames as one stack, as the challenge
    scores a submitted map. It depends on the seeds and blur only, not on the threshold.

    ``progress_factory`` (:mod:`kunet.progress`) reports the predictions (one per frame) and the decision
    rules scored (one per rule).
    """
    frames = list(iterate_frames(records_dir, split))
    if not frames:
        raise KunetError(f"{records_dir}: no {split} frames to tune on")
    settings = segmenter.settings
    progress_factory = progress_factory or no_progress
    predicted = progress_factory("predicting", len(frames))
    stored, border_class = segmenter.rule, segmenter.rule.border_class
    maps = []  # p(foreground) and p(interior): all any rule of the sweep reads
    for frame in frames:
        probabilities = segmenter.probabilities(frame["image"])
        maps.append((stored.foreground(probabilities), stored.interior(probabilities)))
        predicted()
    rows = []
    if seed_thresholds is None:
        two_class = LEADERBOARD_SEED_THRESHOLDS if leaderboard else (0.8, 0.9, 0.95)
        seed_thresholds = BORDER_SEED_THRESHOLDS if border_class else two_class
    combinations = [(t, "none", None, 0.0) for t in thresholds] + [
        (t, "watershed", s, sigma)
        for t in watershed_thresholds
        for s in seed_thresholds
        if s > t or border_class
        for sigma in seed_smoothings
    ]
    if leaderboard:
        stack_maps, stack_truth = _leaderboard_stack(maps, frames)
    scored = progress_factory("scoring decision rules", len(combinations))
    cut_map_scores = {}  # (postprocess, seeds, blur) -> leaderboard score of the cut maps
    for threshold, postprocess, seed_threshold, smoothing in combinations:
        rule = DecisionRule(float(threshold), postprocess, seed_threshold or 0.9, border_class, smoothing)
        if leaderboard and (postprocess, seed_threshold, smoothing) not in cut_map_scores:
            cut_map_scores[postprocess, seed_threshold, smoothing] = _cut_map_score(rule, stack_maps, stack_truth)
        per_frame = [
            score_frame(rule.decide_maps(*pair), frame, 2, settings.label_kind, settings.min_object_size)
            for pair, frame in zip(maps, frames)
        ]
        mean = mean_scores(per_frame)
        mean["rand_plus_pixel"] = mean["adapted_rand_error_grown"] + mean["pixel_error"]
        if leaderboard:
            mean["leaderboard_cut_map"] = cut_map_scores[postprocess, seed_threshold, smoothing]
        rows.append(
            {
                "threshold": float(threshold),
                "postprocess": postprocess,
                "seed_threshold": seed_threshold,
                "seed_smoothing": smoothing,
                **mean,
            }  # fmt: skip
        )
        scored()
    return rows


def _leaderboard_stack(maps: list, frames: list[dict]) -> tuple[list, np.ndarray]:
    """The frames' (p(foreground), p(interior)) maps and their true classes [S, H, W], in frame-id order (the
    stack the challenge scores)."""
    if len({frame["classes"].shape for frame in frames}) != 1 or any(frame["classes"].max() > 1 for frame in frames):
        raise KunetError("the leaderboard objective needs binary labels and frames of one size (ISBI 2012)")
    order = np.argsort([frame["frame_id"] for frame in frames])
    return [maps[i] for i in order], np.stack([frames[i]["classes"] for i in order])


def _cut_map_score(rule: DecisionRule, maps: list, truth: np.ndarray) -> float:
    """Table 1's Rand error + pixel error of ``rule``'s cut maps of the stack's ``maps``."""
    from kunet.metrics import leaderboard_pixel_error, leaderboard_rand_error

    cut_maps = np.stack([rule.cut_map_from_maps(*pair) for pair in maps])
    return leaderboard_rand_error(cut_maps, truth).value + leaderboard_pixel_error(cut_maps, truth).value


def choose(rows: list[dict], objective: str) -> dict:
    """The row with the best ``objective``; for ``leaderboard`` (which the threshold does not change), the best
    rand+pixel among the rows that share the best cut map."""
    key, minimise = OBJECTIVES[objective]
    values = [row.get(key, np.nan) for row in rows]
    index = int(np.nanargmin(values) if minimise else np.nanargmax(values))
    if objective == "leaderboard":
        ties = [row for row in rows if row[key] == rows[index][key]]
        return min(ties, key=lambda row: row["rand_plus_pixel"])
    return rows[index]


def store_settings(model_path: Path, chosen: dict) -> None:
    """Rewrites a ``.keras`` file with the chosen threshold/post-processing in its metadata (atomically)."""
    model = keras.models.load_model(model_path)
    metadata = dict(model.metadata)
    metadata.update(
        threshold=chosen["threshold"],
        postprocess=chosen["postprocess"],
        seed_threshold=chosen["seed_threshold"] or 0.9,
        seed_smoothing=chosen.get("seed_smoothing") or 0.0,
        test_time_mirroring=bool(chosen.get("test_time_mirroring", False)),
    )
    rebuilt = model.__class__.from_config({**model.get_config(), "metadata": metadata})
    rebuilt.set_weights(model.get_weights())
    atomic_save(model_path, rebuilt.save)


def tune(
    run_or_model,
    records_dir,
    objective: str = "rand",
    split: str = "val",
    store: bool = True,
    test_time_mirroring: bool = False,
    precision: str = "float32",
    progress_factory: ProgressFactory | None = None,
) -> dict:
    """Sweeps, chooses by ``objective`` and (with ``store``) writes the choice into the model files.

    With ``test_time_mirroring`` the probabilities average the four flips, and the stored settings
    switch mirroring on for predict and export. Storing into a run directory holds its lock (see
    :func:`kunet.runs.locked_run`).

    Raises:
        RunError: a fit (or another tune) is working in the run directory.
        RecordsError: a shard of ``split`` is missing, damaged or holds another split (the shard named).
    """
    if objective not in OBJECTIVES:
        raise KunetError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    path = Path(run_or_model)
    run = RunPaths(path if path.is_dir() else path.parent)
    in_run = run.config.is_file()
    report_dir = run.root
    if store and in_run:
        check_run_free(report_dir)  # before the sweep: a fit training this run would overwrite the result
    segmenter = Segmenter(run_or_model, precision=precision, test_time_mirroring=test_time_mirroring)
    if objective == "leaderboard" and segmenter.num_classes != 2:
        raise KunetError("the leaderboard objective scores a two-class net's map (ISBI 2012: membrane, cell)")
    rows = sweep(
        segmenter, records_dir, split, progress_factory=progress_factory, leaderboard=objective == "leaderboard"
    )
    for row in rows:
        row["test_time_mirroring"] = test_time_mirroring
    chosen = choose(rows, objective)
    targets = run.models() if path.is_dir() else [path]
    if store:
        # A fit rewrites best.keras and last.keras: hold the run's lock so the two never interleave.
        with locked_run(report_dir) if in_run else contextlib.nullcontext():
            for target in targets:
                store_settings(target, chosen)
            atomic_write_json(run.tune_report, {"objective": objective, "chosen": chosen, "rows": rows})
    return {
        "objective": objective,
        "chosen": chosen,
        "rows": rows,
        "stored_in": [str(t) for t in targets] if store else [],
    }


# The metadata entries that make up a model's decision rule (what `kunet tune` stores, and min_object_size).
RULE_KEYS = ("threshold", "postprocess", "seed_threshold", "seed_smoothing", "test_time_mirroring", "min_object_size")


def rule_overrides(model_path: Path | str, class_names: list[str]) -> list[str]:
    """``inference.*`` overrides that give a new run the decision rule stored in a model: for the paper's final
    model, retrained on every labelled frame with the rule `kunet tune` chose on the validation frames.

    Args:
        model_path: A ``.keras`` model (a run's tuned ``best.keras``).
        class_names: The new run's classes; the rule must decide between the same ones.

    Example:
        >>> rule_overrides("runs/isbi2012-s0/best.keras", ["membrane", "cell"])
        ['inference.threshold=0.3', 'inference.postprocess="watershed"', ...]
    """
    import json

    from kunet.segmenter import load_unet

    metadata = load_unet(model_path).metadata
    if list(metadata.get("class_names", class_names)) != list(class_names):
        raise KunetError(
            f"{model_path}: its rule decides between the classes {list(metadata['class_names'])}, "
            f"the pipeline has {list(class_names)}"
        )
    return [f"inference.{key}={json.dumps(metadata[key])}" for key in RULE_KEYS if key in metadata]
