"""Issue 15: every careless or hostile input ends in one red line naming the file, and nothing is lost.

Each test asserts the message and that no file was deleted or half written.
"""

from __future__ import annotations

import errno

import pytest
import tensorflow as tf
from kunet_cli.common import user_errors
from kunet_cli.main import app
from typer.testing import CliRunner

runner = CliRunner()


def _one_red_line(result) -> str:
    """The single error line of a failed command (exit code 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _raise_inside_user_errors(error: BaseException) -> str:
    """The red line ``user_errors`` prints for ``error`` (captured from stderr via typer.Exit)."""
    import typer

    app_ = typer.Typer()

    @app_.command()
    def explode():
        with user_errors():
            raise error

    return _one_red_line(runner.invoke(app_, []))


@pytest.mark.parametrize(
    "error, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/a_mask.png"),
         "error: /data/out/a_mask.png: No space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), "error: /ro/out: Permission denied"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "/a/x", None, "/b/x"),
         "error: /a/x -> /b/x: Invalid cross-device link"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "img.png/out"), "error: img.png/out: Not a directory"),
        (MemoryError("Unable to allocate 5.8 GiB for an array with shape (20000, 20000, 2)"),
         "error: out of memory (Unable to allocate 5.8 GiB"),
        (ValueError("x.png: first line\n  second line"), "error: x.png: first line second line"),
    ],
)  # fmt: skip
def test_os_memory_and_library_errors_become_one_line(error, expected):
    assert _raise_inside_user_errors(error).startswith(expected)


def test_tensorflow_op_errors_become_one_line_without_graph_noise():
    try:
        tf.io.read_file("/nonexistent-kunet/checkpoint.index")
    except tf.errors.OpError as error:
        line = _raise_inside_user_errors(error)
    assert line.startswith("error: TensorFlow NotFoundError: /nonexistent-kunet/checkpoint.index")
    assert "function_node" not in line and "[Op:" not in line
    exhausted = tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1,64,9000,9000]")
    assert "smaller tiles" in _raise_inside_user_errors(exhausted)


def test_genuine_bugs_keep_their_traceback_and_kunet_debug_shows_every_traceback(monkeypatch):
    import typer

    app_ = typer.Typer()

    @app_.command()
    def explode(kind: str):
        with user_errors():
            raise KeyError("bug") if kind == "bug" else OSError(errno.ENOSPC, "No space left on device", "/x")

    assert isinstance(runner.invoke(app_, ["bug"]).exception, KeyError)
    assert runner.invoke(app_, ["disk"]).exit_code == 2
    monkeypatch.setenv("KUNET_DEBUG", "1")
    assert isinstance(runner.invoke(app_, ["disk"]).exception, OSError)
