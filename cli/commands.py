"""The ``kunet`` subcommands; each is a thin wrapper that loads configuration and calls the library."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app
from .common import fail, load_config, progress_bars, user_errors


@app.command("build-records")
def build_records(
    pipeline: Path = typer.Argument(None, help="Pipeline TOML (pipelines/<name>.toml). Optional with --images."),
    images: Path = typer.Option(None, help="Flag form: folder of images (or a multi-page TIFF)."),
    labels: Path = typer.Option(None, help="Flag form: folder of labels matched by file stem (or a TIFF)."),
    out: Path = typer.Option(None, help="Output folder (default: records.out of the pipeline)."),
    label_kind: str = typer.Option(None, help="Flag form: binary, instance or multiclass."),
    foreground_value: int = typer.Option(None, help="Flag form: label value of the foreground class."),
    shards: int = typer.Option(None, help="Shards per split."),
    val_fraction: float = typer.Option(None, help="Fraction of frames for validation (evenly spread)."),
    val_ids: str = typer.Option(None, help="Comma-separated frame ids for validation (overrides the fraction)."),
    workers: int = typer.Option(None, help="Threads encoding frames."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    set_: list[str] = typer.Option([], "--set", help="Override a setting: section.key=value (repeatable)."),
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
        with progress_bars() as factory:
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
    records: Path = typer.Argument(..., help="A records folder written by build-records."),
    preview: Path = typer.Option(None, help="PNG to write (default: <records>-preview.png beside the folder)."),
    count: int = typer.Option(3, help="Frames in the preview."),
    verify: bool = typer.Option(False, "--verify", help="Also check every shard's sha256 against the manifest."),
):
    """Print a records manifest and write a PNG of frames with label outlines and weight maps."""
    from kunet.inspect_records import inspect
    from kunet.records import verify_checksums

    with user_errors():
        if verify:
            verify_checksums(records)
        default_preview = records.parent / f"{records.name}-preview.png"
        for line in inspect(records, preview or default_preview, count):
            typer.echo(line)
        if verify:
            typer.echo("checksums: all shards match the manifest")


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), help="Where the demo writes data, records, runs and results."),
):
    """Run the end-to-end job on data kunet generates itself."""
    from kunet import demo as demo_lib

    demo_lib.run(workdir)
