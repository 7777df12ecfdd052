"""The ``kunet`` command: a thin Typer layer over the :mod:`kunet` library (installed as ``kunet_cli``)."""
