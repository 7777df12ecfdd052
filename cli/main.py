"""Entry point of the ``kunet`` command: the Typer app with every command module registered."""

from __future__ import annotations

import os
import sys
import tempfile

import typer

try:  # Typer 0.2x vendors click; older Typer depends on it
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - depends on the installed Typer
    from click.exceptions import ClickException, NoArgsIsHelpError

from kunet.onednn import INFERENCE_COMMANDS, assume_frozen_weights

from . import commands, model_commands  # noqa: F401  (register the subcommands on ``app``)
from .app import KunetCommand, app

__all__ = ["app", "main"]


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up lines (oneDNN, CUDA probing) kept off the terminal.

    They are written to file descriptor 2 before absl logging is initialised, so no environment
    variable silences them. If the import fails, the captured lines are replayed before the error.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow

            tensorflow.config.list_physical_devices()  # CUDA probing also logs on first use
        except BaseException:
            os.dup2(saved_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def _command_name(arguments: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option of ``kunet`` itself)."""
    return next((argument for argument in arguments if not argument.startswith("-")), None)


def main():
    if _command_name(sys.argv[1:]) in INFERENCE_COMMANDS:
        # Before TensorFlow starts: it reads the variable once, when it builds its first oneDNN kernel.
        assume_frozen_weights()
    # After parsing, not before: --help, --version and a wrong option or choice answer at once.
    KunetCommand.prepare = _import_tensorflow_quietly
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as error:
        error.show()
        sys.exit(error.exit_code)
    except ClickException as error:
        # A bad option or value: one line, as kunet's own errors are (rich would draw a box of several lines
        # that a log file keeps as box-drawing characters).
        sys.exit(_report_usage_error(error))
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _report_usage_error(error) -> int:
    from .common import one_line

    where = error.ctx.command_path if getattr(error, "ctx", None) is not None else "kunet"
    message = one_line(error.format_message().replace("Value error, ", ""))
    typer.secho(f"error: {where}: {message} (see {where} --help)", fg=typer.colors.RED, err=True)
    return error.exit_code


if __name__ == "__main__":
    main()
