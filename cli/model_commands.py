"""The ``kunet`` subcommands that use a trained model: predict, evaluate, tune, export, serve-request.

Each is a thin wrapper that checks its options and calls the library (training and data: ``commands``).
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .app import app
from .common import (
    LOG_EVERY_OPTION,
    QUIET_OPTION,
    RECORDS_OPTION,
    SET_OPTION,
    VERIFY_RECORDS_OPTION,
    ExportFormat,
    MaskFormat,
    Objective,
    Precision,
    ProbabilityFormat,
    Signature,
    Split,
    fail,
    load_config,
    progress_bars,
    user_errors,
)

CONSTANT_WEIGHTS_OPTION = typer.Option(
    False,
    "--constant-weights",
    help="Compile the weights into the graph as constants (.keras models): oneDNN then keeps its own filter "
    "layout: faster per image once compiled (1.3x in float32, 1.0-1.15x in bf16 on an AMX CPU), but the first "
    "image of each tile size takes 4-6 s longer: in float32 worth it from about 6 images of 512x512 with --mirror "
    "and 24 without, measured on whole predict commands (docs/BENCHMARKS.md).",
)

PREDICT_CONSTANT_WEIGHTS_OPTION = typer.Option(
    None,
    "--constant-weights/--no-constant-weights",
    help="Compile the weights into the graph as constants (.keras models). kunet predict already lets oneDNN keep "
    "every filter (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS), which gives the same speed without the 5-10 s of compilation "
    "on the first image of each tile size, so the default is off; with TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=0 in the "
    "environment it is on in float32 from 6 images with test-time mirroring and from 24 without "
    "(docs/BENCHMARKS.md).",
)


@app.command()
def predict(
    model: str = typer.Argument(..., help="Run directory, .keras file or exported SavedModel version folder (or URI)."),
    inputs: list[Path] = typer.Argument(..., help="Images, folders or multi-page TIFFs."),
    out: Path = typer.Option(Path("predictions"), help="Output folder."),
    precision: Precision = typer.Option(
        "float32", help="Numeric precision: mixed_bfloat16 is about 2x faster on bf16 CPUs (auto picks)."
    ),
    tile_size: int = typer.Option(0, help="Input tile side; 0 chooses the cheapest tiling per image."),
    mirror: bool = typer.Option(
        None, "--mirror/--no-mirror", help="Test-time mirroring: average the four flips (default: as stored)."
    ),
    threshold: float = typer.Option(None, help="Foreground probability threshold (default: the model's)."),
    probabilities: ProbabilityFormat = typer.Option(
        None,
        help="Also write probabilities: tif (foreground), npy (all classes) or cut (the foreground with the decision "
        "rule's watershed lines at 0: one map for the ISBI 2012 leaderboard's threshold sweeps, as Table 1 scored it).",
    ),
    mask_format: MaskFormat = typer.Option(
        "png", help="Mask file format (a TIFF stack's masks are always one ImageJ TIFF stack)."
    ),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlay PNGs."),
    shard: str = typer.Option(
        None,
        help="Predict shard I of N (0-based, e.g. 2/8) of the inputs, skipping complete outputs; 'auto' or "
        "'auto/N' reads it from a Slurm array, Kubernetes indexed Job or TF_CONFIG (docs/SCALING.md).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --shard: predict again inputs already complete."),
    quiet: bool = QUIET_OPTION,
    log_every: int = LOG_EVERY_OPTION,
    axes: str = typer.Option(
        None,
        help="The axes of the input TIFFs, overriding what the files say (one letter per axis, e.g. ZCYX or "
        "TZCYX): Z, T and other letters make planes, C and S channels.",
    ),
    channel: int = typer.Option(None, min=0, help="Predict only this channel (0-based) of multi-channel images."),
    concurrency: int = typer.Option(
        None,
        min=0,
        help="Images the net works on at once (each in a thread) while the next images are read and the previous "
        "ones written; outputs are the same bit for bit. 0: one image at a time, nothing read ahead (least memory). "
        "Default: 2.",
    ),
    batch_images: int = typer.Option(
        1,
        min=1,
        help="Images of one size per model call: in float32 faster on small images (4 images of 512x512 on 2 cores: "
        "11 % less CPU per image), but probabilities then differ from one image per call in the 6th-7th digit. "
        "Not with --shard.",
    ),
    constant_weights: bool | None = PREDICT_CONSTANT_WEIGHTS_OPTION,
):
    """Segment images of any size with overlap-tile prediction."""
    from kunet.imageio import READABLE_SUFFIXES
    from kunet.predict_files import plan_predictions, predict_planned
    from kunet.runs import resolve_model_path
    from kunet.segmenter import Segmenter, check_prediction_options
    from kunet.sharding import parse_shard
    from kunet.tiling import TilingOptions

    with user_errors():
        # Everything that needs no model is checked first: a bad option or output folder costs no model load.
        check_prediction_options(precision, tile_size, threshold)
        if overwrite and shard is None:
            fail("--overwrite goes with --shard (without it, predict always writes every output anew)")
        if batch_images > 1 and shard is not None:
            fail("--batch-images goes without --shard (a shard predicts its inputs one file at a time)")
        shard_spec = None if shard is None else parse_shard(shard)
        model_path = resolve_model_path(model)
        plan = plan_predictions(inputs, out, mask_format, probabilities, overlays, axes, channel)
        for path in plan.skipped:
            typer.echo(f"skipped {path}: not an image kunet reads ({', '.join(READABLE_SUFFIXES)})", err=True)
        if shard_spec is not None:
            options = {"precision": precision, "tile_size": tile_size, "mirror": mirror, "threshold": threshold}
            # Only a set option joins the shard's settings digest: outputs of earlier runs stay complete.
            options |= {key: value for key, value in (("axes", axes), ("channel", channel)) if value is not None}
            options |= {"constant_weights": True} if constant_weights else {}
            _predict_shard(model, model_path, plan, shard_spec, options, overwrite, (quiet, log_every), concurrency)
            return
        segmenter = Segmenter(model, precision, TilingOptions(tile_size=tile_size), mirror, threshold, constant_weights,
                              expected_images=len(plan.images))  # fmt: skip
        if constant_weights is None and not quiet and segmenter.predictor and segmenter.predictor.constant_weights:
            typer.echo(f"constant weights for {len(plan.images)} images: the first takes a few seconds longer to "
                       "compile, the rest run faster (--no-constant-weights to turn off)", err=True)  # fmt: skip
        with progress_bars(quiet, log_every) as factory:
            started = time.perf_counter()
            written = predict_planned(segmenter, plan, progress=factory(_predicting(plan), len(plan.images)),
                                      concurrency=concurrency, batch_images=batch_images)  # fmt: skip
            seconds = time.perf_counter() - started
    typer.echo(f"wrote outputs for {len(written)} image(s) to {out}: {_rate(len(written), seconds)}")


def _rate(images: int, seconds: float) -> str:
    """``12.3 s, 5.20 images/s``: from the first image read to the last output written (no model loading)."""
    return f"{seconds:.1f} s, {images / max(seconds, 1e-9):.2f} images/s"


def _predicting(plan) -> str:
    """The progress description: images are counted by page, so a stack says how many files it came from."""
    files = len({image.path for image in plan.images})
    return "predicting" if files == len(plan.images) else f"predicting pages of {files} file(s)"


def _predict_shard(model: Path, model_path: Path, plan, shard, options: dict, overwrite: bool, reporting,
                   concurrency: int | None) -> None:  # fmt: skip
    """``predict --shard``: the shard's share of ``plan``, resumable; the model is loaded only if work is left."""
    from kunet.predict_shards import ShardJob
    from kunet.segmenter import Segmenter
    from kunet.tiling import TilingOptions

    with ShardJob(plan, shard, model_path, options, overwrite) as job:
        typer.echo(f"shard {shard} ({shard.origin}): {len(job.sources)} of {job.collection['inputs']} input(s); "
                   f"{len(job.skipped)} already complete, skipped")  # fmt: skip
        segmenter = None
        if job.todo:
            tiling = TilingOptions(tile_size=options["tile_size"])
            segmenter = Segmenter(model, options["precision"], tiling, options["mirror"], options["threshold"],
                                  options.get("constant_weights", False))  # fmt: skip
        with progress_bars(*reporting) as factory:
            started = time.perf_counter()
            summary = job.run(segmenter, progress=factory(f"predicting shard {shard}", job.image_count),
                              concurrency=concurrency)  # fmt: skip
            seconds = time.perf_counter() - started
    images = sum(item["images"] for item in summary["predicted"])
    typer.echo(f"shard {shard}: predicted {len(summary['predicted'])}, skipped {len(summary['skipped'])}, "
               f"failed {len(summary['failed'])} input(s) ({images} image(s): {_rate(images, seconds)}); "
               f"summary {job.summary_path}")  # fmt: skip
    for failure in summary["failed"]:
        typer.echo(f"failed {failure['source']}: {failure['error']}", err=True)
    if summary["failed"]:
        fail(f"{len(summary['failed'])} input(s) of shard {shard} failed; see {job.summary_path}")


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Run directory, .keras file or exported SavedModel version folder (or URI)."),
    pipeline: Path = typer.Argument(..., help="Pipeline TOML whose records to score."),
    split: Split = typer.Option("val", help="Records split."),
    records: str = RECORDS_OPTION,
    out: Path = typer.Option(
        None, help="Folder for scores.json, scores.csv and overlays (default: <model>/eval-<split>)."
    ),
    precision: Precision = typer.Option("float32", help="Numeric precision of the predictions."),
    mirror: bool = typer.Option(None, "--mirror/--no-mirror", help="Test-time mirroring (default: as stored)."),
    threshold: float = typer.Option(None, help="Foreground probability threshold (default: the model's)."),
    verify_records: bool = VERIFY_RECORDS_OPTION,
    set_: list[str] = SET_OPTION,
    leaderboard: bool = typer.Option(
        False,
        "--leaderboard",
        help="Also score the split as one stack with the ISBI 2012 leaderboard's metrics (Fiji's definitions), "
        "on the probability map and on the stored decision rule. Binary labels only.",
    ),
    quiet: bool = QUIET_OPTION,
    log_every: int = LOG_EVERY_OPTION,
    constant_weights: bool = CONSTANT_WEIGHTS_OPTION,
):
    """Score a model on a records split: pixel, Rand and warping errors, IoU/Dice, SEG, object AP/F1."""
    from rich.console import Console

    from kunet import uris
    from kunet.evaluation import evaluate as run_evaluation
    from kunet.records import check_shards, read_manifest
    from kunet.segmenter import Segmenter

    with user_errors():
        config = load_config(pipeline, list(set_))
        records = records or config.records_dir()
        if verify_records:
            check_shards(records, [split], checksums=True)
        if out is None and uris.is_remote(model):
            fail(f"{model}: give --out for a remote model (evaluation outputs are written to a local folder)")
        segmenter = Segmenter(model, precision, None, mirror, threshold, constant_weights)
        counts = read_manifest(records)["counts"]
        if split not in counts:
            fail(f"{records}: no {split!r} split; these records hold {' and '.join(counts)}")
        default_out = (Path(model) if Path(model).is_dir() else Path(model).parent) / f"eval-{split}"
        with progress_bars(quiet, log_every) as factory:
            progress = factory("scoring", counts[split])
            report = run_evaluation(segmenter, records, split, out or default_out, progress, leaderboard=leaderboard)
    Console().print(_scores_table(f"{config.name} {split}", report))
    if "objects" in report:
        Console().print(_objects_table(report["objects"]))
    if leaderboard:
        Console().print(_leaderboard_table(report))
        for line in _LEADERBOARD_NOTES:
            typer.echo(line)
    typer.echo(f"scores: {out or default_out}/scores.json")


_SHORT_NAMES = {
    "pixel_error": "pixel err",
    "rand_error": "Rand err",
    "adapted_rand_error": "V_rand",
    "adapted_rand_error_grown": "V_rand grown",
    "warping_error": "warping",
    "ap50": "AP50",
    "f1_50": "F1@50",
    "ap50_95": "AP50:95",
}


def _scores_table(title: str, report: dict):
    """evaluate's per-frame table with the mean as its last row."""
    from rich.table import Table

    table = Table(title=f"{title}: {report['model']} (threshold {report['threshold']:g})")
    keys = list(report["mean"])
    table.add_column("frame", no_wrap=True)
    for key in keys:
        table.add_column(_SHORT_NAMES.get(key, key), justify="right")
    for frame_id, scores in report["frames"].items():
        table.add_row(frame_id, *[f"{scores[k]:.4f}" for k in keys])
    table.add_row("mean", *[f"{report['mean'][k]:.4f}" for k in keys], style="bold")
    return table


def _objects_table(objects: dict):
    """The split's object matching (summed counts) at Cellpose's three IoU thresholds and AP50:95."""
    from rich.table import Table

    table = Table(title="Objects, all frames' counts summed (StarDist matching_dataset)")
    columns = ("tp", "fp", "fn", "precision", "recall", "accuracy", "f1", "panoptic_quality")
    table.add_column("IoU >=", justify="right")
    for column in columns:
        table.add_column({"accuracy": "AP", "panoptic_quality": "PQ"}.get(column, column), justify="right")
    for threshold in ("0.50", "0.75", "0.90"):
        row = objects["thresholds"][threshold]
        table.add_row(threshold, *[f"{row[k]}" if k in ("tp", "fp", "fn") else f"{row[k]:.4f}" for k in columns])
    table.caption = f"AP = tp/(tp+fp+fn); AP50:95 (mean over 0.50:0.05:0.95) = {objects['ap50_95']:.4f}"
    return table


_LEADERBOARD_NOTES = (
    "ISBI rows: the challenge's Fiji definitions, the whole split as one stack (kunet.metrics.leaderboard);",
    "  probs = the probability map swept over thresholds, decision = the stored rule's binary mask,",
    "  cut map = probs with the rule's watershed lines (flooded to p = 0) set to 0, swept like probs:",
    "  pixel err = 1 - max F of pixel similarity over thresholds (whole-stack counts);",
    "  Rand err = 1 - max F of the foreground-restricted Rand index (N^2 pairs, whole-stack counts);",
    "  warping = min over thresholds of split + merger pixels / all pixels;",
    "  V_rand, V_info = max F after border thinning, mean over slices (higher is better; today's ranking).",
    "  probs sweeps thresholds 0.0..1.0 (warping 0.0..0.9); decision is scored at the one threshold 0.0.",
    "kunet row: per-frame means at the decision rule: fraction of misclassified pixels, adapted Rand error"
    " (n(n-1) pairs, predicted boundary one segment) and the classic warping error (all topological pixels).",
    "Table 1 of the paper (test set: 0.0611 pixel, 0.0382 Rand, 0.000353 warping) uses the ISBI probs"
    " definitions; held-out training slices are not its test set, and the kunet row is never comparable.",
)


def _leaderboard_table(report: dict):
    """The ISBI 2012 leaderboard rows beside kunet's own scores of the same frames (fits 80 columns)."""
    from rich.table import Table

    board, mean = report["leaderboard"], report["mean"]
    table = Table(title=f"ISBI 2012 leaderboard metrics, {len(board['frames'])} frames as one stack")
    table.add_column("definition", no_wrap=True)
    for column in ("pixel", "Rand", "warping", "V_rand", "V_info"):
        table.add_column(column, justify="right", no_wrap=True)
    keys = ("pixel_error", "rand_error", "warping_error", "v_rand", "v_info")
    for name, caption in (
        ("probabilities", "ISBI, probs"),
        ("decision", "ISBI, decision"),
        ("cut_map", "ISBI, cut map"),
    ):
        if name in board:
            table.add_row(caption, *[f"{board[name][k]:.6f}" for k in keys])
    own = ("pixel_error", "adapted_rand_error", "warping_error")
    table.add_row("kunet, decision", *[f"{mean[k]:.6f}" if k in mean else "-" for k in own], "-", "-")
    table.caption = "\n".join(
        f"best thresholds ({caption}): " + ", ".join(f"{board[name][k + '_threshold']:.1f}" for k in keys)
        for name, caption in (("probabilities", "probs"), ("cut_map", "cut map"))
        if name in board
    )
    return table


@app.command()
def tune(
    model: Path = typer.Argument(..., help="Run directory (best.keras and last.keras are updated) or .keras file."),
    pipeline: Path = typer.Argument(..., help="Pipeline TOML whose validation records to tune on."),
    objective: Objective = typer.Option(
        "rand",
        help="What the sweep optimises: rand (V_rand grown), rand+pixel (their sum), rand_raw, pixel, iou, seg, "
        "ap (object AP at IoU 0.5), ap50_95 (AP averaged over IoU 0.5:0.05:0.95), leaderboard (ISBI 2012: Table 1's "
        "Rand + pixel error of the rule's cut map, the split as one stack; then rand+pixel among equals).",
    ),
    records: str = RECORDS_OPTION,
    mirror: bool = typer.Option(False, "--mirror", help="Tune with (and store) test-time mirroring."),
    precision: Precision = typer.Option("float32", help="Numeric precision of the sweep's predictions."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the sweep; leave the model unchanged."),
    verify_records: bool = VERIFY_RECORDS_OPTION,
    set_: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
    log_every: int = LOG_EVERY_OPTION,
):
    """Choose the threshold and post-processing on the validation split and store them with the model."""
    from kunet.records import check_shards
    from kunet.tune import OBJECTIVES
    from kunet.tune import tune as run_tune

    with user_errors():
        config = load_config(pipeline, list(set_))
        if verify_records:
            check_shards(records or config.records_dir(), ["val"], checksums=True)
        with progress_bars(quiet, log_every) as factory:
            result = run_tune(
                model, records or config.records_dir(), objective, store=not dry_run, test_time_mirroring=mirror,
                precision=precision, progress_factory=factory,
            )  # fmt: skip
    key = OBJECTIVES[objective][0]
    for row in result["rows"]:
        mark = "  <- chosen" if row is result["chosen"] else ""
        seeds = f" seeds>={row['seed_threshold']}" if row["seed_threshold"] else ""
        seeds += f" blur {row['seed_smoothing']:g}" if row.get("seed_smoothing") else ""
        typer.echo(
            f"threshold {row['threshold']:.2f} {row['postprocess']:>9}{seeds:<19} pixel {row['pixel_error']:.4f} "
            f"IoU {row['iou']:.4f} V_rand {row['adapted_rand_error']:.4f} grown {row['adapted_rand_error_grown']:.4f}"
            + (f" SEG {row['seg']:.4f}" if "seg" in row else "")
            + (f" AP50 {row['ap50']:.4f}" if "ap50" in row else "")
            + (f" cut map {row['leaderboard_cut_map']:.4f}" if "leaderboard_cut_map" in row else "")
            + mark
        )
    chosen = result["chosen"]
    typer.echo(f"best {key}: {chosen[key]:.4f} at threshold {chosen['threshold']:.2f}, {chosen['postprocess']}")
    for path in result["stored_in"]:
        typer.echo(f"stored in {path}")


@app.command()
def export(
    model: str = typer.Argument(None, help="Run directory or .keras file to export (a path or a URI)."),
    name: str = typer.Option("unet", help="Model name (the serving URL's /v1/models/<name>)."),
    base_dir: str = typer.Option("saved_models", help="Export root: a folder or a URI such as gs://bucket/models."),
    version: int = typer.Option(None, help="Integer version (default: the next free one; never overwritten)."),
    tile_size: int = typer.Option(0, help="Input tile inside the graph (0: cheapest for the training frame size)."),
    precision: Precision = typer.Option("float32", help="Numeric precision of the exported graph."),
    max_pixels: int = typer.Option(4096 * 4096, help="Serving bound: most pixels (H x W) of one image."),
    max_batch: int = typer.Option(8, help="Serving bound: most images in one request."),
    check: str = typer.Option(None, "--check", help="Validate an existing export version folder (or URI) instead."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the result line, no stage lines."),
    format_: ExportFormat = typer.Option(
        "tf-serving", "--format", help="tf-serving: a versioned SavedModel; bioimageio: a BioImage Model Zoo zip."
    ),
    out: Path = typer.Option(None, help="bioimageio: the package zip (default: <base-dir>/<name>.bioimageio.zip)."),
    author: list[str] = typer.Option([], "--author", help="bioimageio: an author's name (repeatable)."),
    description: str = typer.Option(None, help="bioimageio: one or two sentences about the model."),
    tag: list[str] = typer.Option([], "--tag", help="bioimageio: a search word (repeatable)."),
    license_: str = typer.Option(None, "--license", help="bioimageio: SPDX licence of the weights (CC-BY-4.0)."),
):
    """Write a versioned SavedModel for TensorFlow Serving (tiling inside the graph), or --check one; or a
    bioimage.io model package for Fiji (deepImageJ), ilastik and napari (--format bioimageio).

    bioimageio settings not given as flags come from the run's pipeline TOML, table "package"."""
    from kunet.serving import export as export_lib
    from kunet.serving.signatures import ServingLimits
    from kunet.tiling import TilingOptions

    with user_errors():
        if check is not None:
            from kunet.serving.check import check as check_export

            check_export(check, log=_silent if quiet else typer.echo)
            typer.echo(f"{check}: OK")
            return
        if model is None:
            fail("give a run directory or .keras file to export, or --check EXPORT_DIR")
        limits = ServingLimits(max_pixels=max_pixels, max_batch=max_batch)
        if format_ == "bioimageio":
            from kunet.serving.bioimageio import package_info, write_package

            flags = {"name": name if name != "unet" else "", "authors": author, "description": description,
                     "tags": tag, "license": license_}  # fmt: skip
            info = package_info(model, flags)
            destination = write_package(model, out or Path(base_dir) / f"{name}.bioimageio.zip", info,
                                        TilingOptions(tile_size=tile_size), precision,
                                        log=_silent if quiet else typer.echo, limits=limits)  # fmt: skip
            if quiet:
                typer.echo(f"wrote {destination}")
            return
        destination = export_lib.export(model, name, base_dir, version, TilingOptions(tile_size=tile_size),
                                        precision, log=_silent if quiet else typer.echo, limits=limits)  # fmt: skip
    if quiet:
        typer.echo(f"exported {destination}")


def _silent(message: str) -> None:
    pass


@app.command("serve-request")
def serve_request(
    url: str = typer.Argument(
        ...,
        help="Model URL: http://HOST:8501/v1/models/NAME (REST; a version: NAME/versions/N) or grpc://HOST:8500/NAME.",
    ),
    inputs: list[Path] = typer.Argument(..., help="Images (PNG for segment_png; PNG or TIFF for serving_default)."),
    out: Path = typer.Option(..., help="Mask file for one input, or a folder for several (<stem>_mask.png)."),
    signature: Signature = typer.Option(
        "segment_png", help="segment_png: PNG in, PNG out; serving_default: pixels in, labels out."
    ),
    timeout: float = typer.Option(600.0, help="Seconds to wait for each answer."),
):
    """Send images to a TensorFlow Serving model exported by kunet and write the masks it returns."""
    from kunet.serving.requests import request_masks

    with user_errors():
        written = request_masks(url, inputs, out, signature, timeout)
    for path in written:
        typer.echo(f"wrote {path}")
