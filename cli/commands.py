"""The ``kunet`` subcommands; each is a thin wrapper that loads configuration and calls the library."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo"), help="Where the demo writes data, records, runs and results."),
):
    """Run the end-to-end job on data kunet generates itself."""
    from kunet import demo as demo_lib

    demo_lib.run(workdir)
