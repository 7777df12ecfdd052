"""The ``kunet`` subcommands for data and training: records, fit, synth, show-augment, demo.

Each is a thin wrapper that loads configuration and calls the library (model commands: ``model_commands``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import (
    LOG_EVERY_OPTION,
    QUIET_OPTION,
    RECORDS_OPTION,
    SET_OPTION,
    VERIFY_RECORDS_OPTION,
    LabelKind,
    Precision,
    Strategy,
    SyntheticKind,
    fail,
    load_config,
    progress_bars,
    user_errors,
)


@app.command("build-records")
def build_records(
    pipeline: Path = typer.Argument(None, help="Pipeline TOML (pipelines/<name>.toml). Optional with --images."),
    images: Path = typer.Option(None, help="Flag form: folder of images (or a multi-page TIFF)."),
    labels: Path = typer.Option(None, help="Flag form: folder of labels matched by file stem (or a TIFF)."),
    out: str = typer.Option(None, help="Output folder or URI, e.g. gs://bucket/records/x (default: records.out)."),
    label_kind: LabelKind = typer.Option(None, help="Flag form: what the label values mean (labels.kind)."),
    foreground_value: int = typer.Option(None, help="Flag form: label value of the foreground class."),
    shards: int = typer.Option(None, help="Shards per split."),
    val_fraction: float = typer.Option(None, help="Fraction of frames for validation (evenly spread)."),
    val_ids: str = typer.Option(None, help="Comma-separated frame ids for validation (overrides the fraction)."),
    workers: int = typer.Option(None, help="Threads encoding frames."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    set_: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
    log_every: int = LOG_EVERY_OPTION,
):
    """Turn a labelled dataset into sharded, GZIP-compressed TFRecords with the paper's weight maps."""
    from kunet.records import build_records as build

    overrides = list(set_)
    if images is not None or labels is not None:
        if images is None or labels is None:
            fail("--images and --labels go together")
        kind = "tiff_stack" if images.is_file() else "folders"
        overrides += [
            f"source.kind={kind}",
            f'source.images="{images.resolve()}"',
            f'source.labels="{labels.resolve()}"',
        ]
    elif pipeline is None:
        fail("give a pipeline TOML or --images and --labels")
    if label_kind:
        overrides.append(f"labels.kind={label_kind}")
    if foreground_value is not None:
        overrides.append(f"labels.foreground_value={foreground_value}")
    if val_fraction is not None:
        overrides.append(f"records.val_fraction={val_fraction}")
    if val_ids:
        overrides.append("records.val_ids=[" + ",".join(f'"{v.strip()}"' for v in val_ids.split(",")) + "]")
    with user_errors():
        config = load_config(pipeline, overrides)
        if out is None and pipeline is None:
            fail("--out is required without a pipeline TOML")
        with progress_bars(quiet, log_every) as factory:
            manifest = build(
                config, out=out, shards=shards, workers=workers, overwrite=overwrite, progress_factory=factory
            )
    destination = out or config.records_dir()
    typer.echo(
        f"wrote {manifest['counts']['train']} train + {manifest['counts']['val']} val frames "
        f"in {len(manifest['shards'])} shards to {destination}"
    )


@app.command("inspect-records")
def inspect_records(
    records: str = typer.Argument(..., help="A records folder (or gs://... URI) written by build-records."),
    preview: Path = typer.Option(None, help="PNG to write (default: <records>-preview.png beside the folder)."),
    count: int = typer.Option(3, help="Frames in the preview."),
    verify: bool = typer.Option(False, "--verify", help="Also check every shard's sha256 against the manifest."),
):
    """Print a records manifest and write a PNG of frames with label outlines and weight maps."""
    from kunet import uris
    from kunet.inspect_records import inspect
    from kunet.records import verify_checksums

    with user_errors():
        if verify:
            verify_checksums(records)
        # A remote folder's preview is written locally, in the working directory.
        folder = uris.location(records)
        default_preview = Path(f"{uris.name(folder)}-preview.png")
        if isinstance(folder, Path):
            default_preview = folder.parent / default_preview
        for line in inspect(records, preview or default_preview, count):
            typer.echo(line)
        if verify:
            typer.echo("checksums: all shards match the manifest")


@app.command()
def fit(
    pipeline: Path = typer.Argument(None, help="Pipeline TOML. Omit with --resume."),
    run_dir: str = typer.Option(None, help="Run directory or URI (default: runs/<pipeline name>)."),
    resume: str = typer.Option(None, help="Continue the run in this directory (or URI) from its last checkpoint."),
    auto_resume: bool = typer.Option(
        False,
        "--auto-resume",
        help="Resume --run-dir if it holds a run, else start it: one command for a job a "
        "scheduler restarts after preemption.",
    ),
    records: str = RECORDS_OPTION,
    epochs: int = typer.Option(None, help="Epochs in total (each train.steps_per_epoch steps)."),
    steps: int = typer.Option(None, help="Steps in total (overrides --epochs)."),
    max_minutes: float = typer.Option(None, help="Stop after this many minutes (checkpointed, resumable)."),
    precision: Precision = typer.Option(
        None, help="Numeric precision (default: train.precision); auto: what this machine runs fastest."
    ),
    jit_compile: bool = typer.Option(None, "--jit-compile/--no-jit-compile", help="XLA-compile the train step."),
    strategy: Strategy = typer.Option("default", help="mirrored: all local devices; multiworker: TF_CONFIG's cluster."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the pipeline without data and exit."),
    verify_records: bool = VERIFY_RECORDS_OPTION,
    final: bool = typer.Option(
        False,
        "--final",
        help="The final model: train on the validation frames too, validate nothing "
        "(train.final); best.keras is the last model.",
    ),
    rule_from: str = typer.Option(
        None,
        "--rule-from",
        help="A tuned .keras model whose decision rule the new model keeps (with --final: "
        "the rule chosen on the validation frames).",
    ),
    set_: list[str] = SET_OPTION,
    quiet: bool = QUIET_OPTION,
    log_every: int = LOG_EVERY_OPTION,
):
    """Train a U-Net with the paper's weighted loss (checkpointed, resumable)."""
    from kunet.builders import dry_run as check_pipeline
    from kunet.builders import make_strategy
    from kunet.runs import load_run_config
    from kunet.train import Trainer

    overrides = list(set_) + [f"train.precision={precision}"] * bool(precision) + ["train.final=true"] * final
    if jit_compile is not None:
        overrides.append(f"train.jit_compile={str(jit_compile).lower()}")
    with user_errors():
        if rule_from is not None:
            if resume is not None or pipeline is None:
                fail("--rule-from sets the rule of a new run: give a pipeline TOML, not --resume")
            from kunet.tune import rule_overrides

            overrides = rule_overrides(rule_from, load_config(pipeline, overrides).labels.names()) + overrides
        if auto_resume and resume is None:
            resume = _existing_run(run_dir, pipeline, overrides)
        if resume is not None:
            config, saved_records = load_run_config(resume)
            if overrides:
                from kunet.config import apply_overrides, pipeline_from_dict

                config = pipeline_from_dict(apply_overrides(config.to_dict(), overrides), config.base_dir)
            run_dir, records = resume, records or saved_records
        elif pipeline is None:
            fail("give a pipeline TOML, or --resume RUN")
        else:
            config = load_config(pipeline, overrides)
            if dry_run:
                for key, value in check_pipeline(config).items():
                    typer.echo(f"{key:>10}: {value}")
                return
            run_dir = run_dir or Path("runs") / config.name
        trainer = Trainer(config, run_dir, records, make_strategy(strategy), resume=resume is not None,
                          log=typer.echo, verify_records=verify_records, progress="none" if quiet else "auto",
                          log_every=log_every)  # fmt: skip
        state = trainer.fit(epochs=epochs, steps=steps, max_minutes=max_minutes)
    typer.echo(f"run: {run_dir} ({state['status']}, step {state['step']}/{state['total_steps']})")
    if state["status"] == "stopped":  # by SIGTERM/SIGINT, checkpointed: a scheduler may requeue on this code
        from kunet.stopping import stop_exit_code

        raise typer.Exit(stop_exit_code(state.get("stop_signal")))


def _existing_run(run_dir: str | None, pipeline: Path | None, overrides: list[str]) -> str | None:
    """``--auto-resume``: the run directory to resume, or None when there is no run there to resume yet."""
    from kunet import uris
    from kunet.runs import RunPaths

    if run_dir is None:
        if pipeline is None:
            fail("--auto-resume needs --run-dir or a pipeline TOML")
        run_dir = str(Path("runs") / load_config(pipeline, overrides).name)
    return run_dir if uris.isfile(RunPaths(run_dir).config) else None


@app.command()
def synth(
    kind: SyntheticKind = typer.Argument(..., help="em: ISBI-like membranes; cells: touching cells, CTC layout."),
    out: Path = typer.Option(..., help="Output folder (must not exist unless --overwrite)."),
    count: int = typer.Option(20, help="Number of images."),
    size: int = typer.Option(512, help="Image side in pixels."),
    seed: int = typer.Option(0, help="Random seed (same seed, same data)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
):
    """Generate a synthetic labelled dataset (used by the demo and the tests)."""
    from kunet import synthetic

    with user_errors():
        if kind == "em":
            path = synthetic.write_em_dataset(out, count, size, seed, overwrite)
        else:  # cells (the parser refuses any kind outside SYNTHETIC_KINDS)
            path = synthetic.write_cells_dataset(out, count, size, seed, overwrite=overwrite)
    typer.echo(f"wrote {count} {kind} images to {path}")


@app.command("show-augment")
def show_augment(
    pipeline: Path = typer.Argument(..., help="Pipeline TOML (its augment, model and train sections are used)."),
    records: str = RECORDS_OPTION,
    out: Path = typer.Option(None, help="PNG to write (default: augment-<name>.png)."),
    frame: int = typer.Option(0, help="Which training frame to show."),
    count: int = typer.Option(8, help="Augmented tiles beside the original."),
    seed: int = typer.Option(0, help="Seed of the first augmented tile."),
    set_: list[str] = SET_OPTION,
):
    """Write a PNG grid: the original tile and augmented tiles with label outlines and a deformed grid."""
    from itertools import islice

    from kunet.augment import AugmentParams
    from kunet.augment_preview import write_augmentation_grid
    from kunet.pipeline import tile_shape
    from kunet.preprocess import to_unit_range
    from kunet.records import iterate_frames

    with user_errors():
        config = load_config(pipeline, list(set_))
        records = records or config.records_dir()
        chosen = list(islice(iterate_frames(records, "train"), frame, frame + 1))
        if not chosen:
            fail(f"{records}: no training frame {frame}")
        shape = tile_shape(config)
        path = out or Path(f"augment-{config.name}.png")
        write_augmentation_grid(
            path, to_unit_range(chosen[0]["image"]), chosen[0]["classes"], chosen[0]["weight"],
            AugmentParams.from_config(config.augment), shape.input, shape.output, seed=seed, count=count,
        )  # fmt: skip
    typer.echo(f"wrote {path}")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), help="Where the demo writes data, records, runs and results."),
    pipeline: Path = typer.Option(None, help="Pipeline TOML (default: pipelines/synthetic-em.toml)."),
    export_root: Path = typer.Option(Path("saved_models"), help="Where the export goes."),
):
    """Run the end-to-end job on data kunet generates itself: synth, records, fit, evaluate, export, predict."""
    from kunet import demo as demo_lib

    with user_errors():
        result = demo_lib.run(workdir, pipeline, export_root=export_root)
    if not result["passed"]:
        raise typer.Exit(code=1)
