"""Helpers shared by the CLI commands: configuration loading, user-facing errors, progress bars."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def user_errors():
    """Turns the library's input errors into one red line and exit code 2 (no traceback)."""
    from kunet.config import ConfigError

    try:
        yield
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as error:
        fail(str(error))


def load_config(pipeline: Path | None, overrides: list[str]):
    """The pipeline TOML with ``--set`` overrides; without a file, defaults rooted at the working directory."""
    from kunet.config import apply_overrides, load_pipeline, pipeline_from_dict

    if pipeline is not None:
        return load_pipeline(pipeline, overrides)
    return pipeline_from_dict(apply_overrides({}, overrides), base_dir=Path.cwd())


@contextlib.contextmanager
def progress_bars():
    """Yields ``(description, total) -> advance()`` creating one rich progress bar per call."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as progress:

        def factory(description: str, total: int):
            task = progress.add_task(description, total=total)
            return lambda: progress.advance(task)

        yield factory
