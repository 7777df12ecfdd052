"""Entry point of the ``kunet`` command: the Typer app with every command module registered."""

from __future__ import annotations

import os
import sys
import tempfile

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


def main():
    # After parsing, not before: --help, --version and a wrong option or choice answer at once.
    KunetCommand.prepare = _import_tensorflow_quietly
    app()


if __name__ == "__main__":
    main()
