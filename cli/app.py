"""The Typer application and its always-available commands (``--version``, ``info``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import typer
from typer.core import TyperCommand

import kunet


class KunetCommand(TyperCommand):
    """A command that calls :attr:`prepare` once its command line has parsed, before its body runs.

    ``kunet_cli.main`` sets ``prepare`` to its quiet TensorFlow import, so that a wrong option or choice is
    refused by the parser at once rather than after the seconds that import takes (``--help`` never gets here).
    """

    prepare: Callable[[], None] | None = None

    def invoke(self, ctx):
        if KunetCommand.prepare is not None:
            KunetCommand.prepare()
        return super().invoke(ctx)


class _Typer(typer.Typer):
    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", KunetCommand)  # every kunet command parses before anything slow happens
        return super().command(*args, **kwargs)


app = _Typer(
    name="kunet",
    help="U-Net (Ronneberger et al. 2015) for microscopy segmentation: records, fit, predict, evaluate, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool):
    if value:
        typer.echo(f"kunet {kunet.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of every error, not one line (same as KUNET_DEBUG=1)."
    ),
):
    """kunet command line."""
    from .common import DEBUG_VARIABLE

    if debug:  # the environment, so that worker processes kunet starts show tracebacks too
        os.environ[DEBUG_VARIABLE] = "1"


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
    """Show TensorFlow/Keras versions, the devices TensorFlow sees and the CPU's features."""
    from kunet import system_info

    data = system_info.collect()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key == "cpu_features":
            value = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in value.items())
        elif key == "devices":
            value = "; ".join(value)
        typer.echo(f"{key:>12}: {value}")
