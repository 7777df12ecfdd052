"""Helpers shared by the CLI commands: configuration loading, user-facing errors, progress bars."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Literal

import typer

from kunet.choices import (
    EXPORT_FORMATS,
    MASK_FORMATS,
    OBJECTIVES,
    PROBABILITY_FORMATS,
    SPLITS,
    STRATEGIES,
    SYNTHETIC_KINDS,
)
from kunet.config import LABEL_KINDS
from kunet.precision import PRECISIONS
from kunet.serving.signatures import SIGNATURE_NAMES

# Set to 1 to see the traceback of an error the CLI would otherwise report as one line.
DEBUG_VARIABLE = "KUNET_DEBUG"
_MAX_MESSAGE_CHARS = 400
_MEMORY_HINT = "free memory, or use smaller tiles (predict --tile-size, train.tile_size) or batches"
# TensorFlow wraps op errors in "{{function_node ...}} message [Op:Name]"; only the message helps a user.
_TF_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def one_line(text: str, limit: int = _MAX_MESSAGE_CHARS) -> str:
    """``text`` with its lines joined and cut at ``limit`` characters (a red line, not a screenful)."""
    joined = " ".join(line.strip() for line in str(text).splitlines() if line.strip())
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


def describe_os_error(error: OSError) -> str:
    """``<path>: <reason>`` (``<path> -> <other path>`` for renames) instead of ``[Errno 28] ...``."""
    reason = error.strerror or str(error)
    if error.filename is None:
        return f"{reason} ({type(error).__name__})" if error.strerror else reason
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {reason}"


def _tensorflow_op_error(error: BaseException) -> bool:
    # Without TensorFlow imported no TensorFlow error can exist, and importing it here would slow --help.
    tensorflow = sys.modules.get("tensorflow")
    return tensorflow is not None and isinstance(error, tensorflow.errors.OpError)


def describe_user_error(error: BaseException) -> str | None:
    """The one-line message for an error caused by the input or the machine; None for a genuine bug."""
    from kunet.errors import KunetError

    if isinstance(error, KunetError):  # ConfigError, RecordsError, ImageReadError, ModelLoadError, ...
        return one_line(str(error))
    if isinstance(error, OSError):
        return one_line(describe_os_error(error))
    if isinstance(error, MemoryError):
        detail = f" ({error})" if str(error) else ""
        return one_line(f"out of memory{detail}") + f" ({_MEMORY_HINT})"
    if _tensorflow_op_error(error):
        message = f"TensorFlow {type(error).__name__}: {_TF_NOISE.sub('', error.message).strip()}"
        if type(error).__name__ == "ResourceExhaustedError":
            return one_line(message) + f" ({_MEMORY_HINT})"
        return one_line(message)
    return None


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


@contextlib.contextmanager
def user_errors():
    """Turns input, file-system, memory and TensorFlow errors into one red line and exit code 2.

    Anything else is a bug and keeps its traceback; ``KUNET_DEBUG=1`` shows the traceback of every error.
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - sorted into user errors and bugs below
        message = None if debugging() else describe_user_error(error)
        if message is None:
            raise
        fail(message)


def load_config(pipeline: Path | None, overrides: list[str]):
    """The pipeline TOML with ``--set`` overrides; without a file, defaults rooted at the working directory."""
    from kunet.fitting import resolve_pipeline

    return resolve_pipeline(pipeline, overrides, where="--set")


@contextlib.contextmanager
def progress_bars(quiet: bool = False, every: int | None = None):
    """Yields ``(description, total) -> advance()``: a rich bar per task on a terminal, plain lines every
    ``every`` items when standard output is a file or a pipe (no ANSI codes, no redraws), nothing if ``quiet``."""
    from kunet.progress import reporting

    with reporting("none" if quiet else "auto", log=typer.echo, every=every) as factory:
        yield factory


# Types of the options whose value is one of a fixed set, from the library's own tuples of names (light
# modules: no TensorFlow or NumPy before a command runs). Typer makes each a choice: --help lists the names,
# and the parser refuses any other value in one line before the command starts; values stay plain strings.
Precision = Literal[PRECISIONS]
Strategy = Literal[STRATEGIES]
Split = Literal[SPLITS]
Objective = Literal[tuple(OBJECTIVES)]
MaskFormat = Literal[MASK_FORMATS]
ProbabilityFormat = Literal[PROBABILITY_FORMATS]
Signature = Literal[SIGNATURE_NAMES]
SyntheticKind = Literal[SYNTHETIC_KINDS]
LabelKind = Literal[LABEL_KINDS]
ExportFormat = Literal[EXPORT_FORMATS]

# Options several commands share (Typer reads an option's settings; one object may serve many commands).
RECORDS_OPTION = typer.Option(None, help="Records folder or URI (default: records.out of the pipeline).")
VERIFY_RECORDS_OPTION = typer.Option(
    False, "--verify-records", help="Check the shards' sha256 first (their sizes are always checked)."
)
SET_OPTION = typer.Option([], "--set", help="Override a setting: section.key=value (repeatable).")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="No progress bars or progress lines.")
LOG_EVERY_OPTION = typer.Option(
    None, "--log-every", min=1, help="When output is not a terminal: a progress line every N items (steps for fit)."
)
