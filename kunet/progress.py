"""Progress that reads well wherever it lands: a live bar on a terminal, plain lines in a log file, or nothing.

A redrawn bar is right on a terminal and wrong everywhere else: redirected to a file (``nohup``, Slurm, a CI
log) it leaves ANSI codes and a carriage-return redraw per step. So the mode follows the output:

* ``bar``: a rich progress bar (a terminal);
* ``lines``: one plain line every ``every`` items and at the end (a file, a pipe, a notebook cell);
* ``none``: nothing (``--quiet``);
* ``auto``: ``bar`` if standard output is a terminal, else ``lines``.

Every task is driven the same way: ``advance = factory(description, total)``, then ``advance()`` per item
(``advance(loss=0.41)`` adds values to the line; ``factory(description, total, completed)`` starts a task part
done, e.g. a resumed epoch). Library functions take such a factory (or one advance
callable), so they never print progress themselves.

Example:
    >>> with reporting("lines", log=print, every=2) as factory:
    ...     advance = factory("scoring", 4)
    ...     for _ in range(4):
    ...         advance()
    scoring 2/4 (50%), 0s
    scoring 4/4 (100%), 0s
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator

MODES = ("auto", "bar", "lines", "none")
# Lines a task writes at most in ``lines`` mode when no interval is given (plus its last line).
DEFAULT_LINES_PER_TASK = 10

Advance = Callable[..., None]
ProgressFactory = Callable[..., Advance]  # (description, total, completed=0) -> advance


def _ignore(count: int = 1, **values) -> None:
    pass


def no_progress(description: str, total: int, completed: int = 0) -> Advance:
    """The factory of ``none`` mode: tasks that report nothing (the default of library functions)."""
    return _ignore


def resolve_mode(mode: str = "auto", stream=None) -> str:
    """``mode``, with ``auto`` made ``bar`` on a terminal and ``lines`` otherwise (``stream``: default stdout)."""
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r} (known: {', '.join(MODES)})")
    if mode != "auto":
        return mode
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _format_values(values: dict) -> str:
    return "".join(f", {key} {value:.4g}" if isinstance(value, float) else f", {key} {value}"
                   for key, value in values.items())  # fmt: skip


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (
        f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
    )


class LineProgress:
    """Writes ``"<description> <done>/<total> (<percent>), <elapsed>[, key value...]"`` every ``every`` items.

    Args:
        description: What is counted, e.g. ``"epoch 3/10"`` or ``"predicting"``.
        total: Items in the task.
        log: Receives each line.
        every: Items between lines (default: about :data:`DEFAULT_LINES_PER_TASK` lines per task). The last
            item always gets a line.
        completed: Items already done when the task starts (no line is written for them).
    """

    def __init__(
        self, description: str, total: int, log: Callable[[str], None], every: int | None = None, completed: int = 0
    ):
        self.description, self.total, self.log = description, max(int(total), 0), log
        self.every = max(1, int(every) if every else math.ceil(self.total / DEFAULT_LINES_PER_TASK) or 1)
        self.done = completed
        self.started = time.monotonic()

    def __call__(self, count: int = 1, **values) -> None:
        before, self.done = self.done, self.done + count
        if self.done // self.every > before // self.every or (self.done >= self.total > before):
            percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            elapsed = _format_seconds(time.monotonic() - self.started)
            self.log(f"{self.description} {self.done}/{self.total}{percent}, {elapsed}{_format_values(values)}")


@contextlib.contextmanager
def _rich_bars(transient: bool) -> Iterator[ProgressFactory]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[values]}"))  # fmt: skip
    with Progress(*columns, transient=False) as bars:

        def factory(description: str, total: int, completed: int = 0) -> Advance:
            task = bars.add_task(description, total=total, completed=completed, values="")
            done = [completed]

            def advance(count: int = 1, **values) -> None:
                if transient and done[0] >= total:  # already removed
                    return
                done[0] += count
                bars.update(task, advance=count, values=_format_values(values).removeprefix(", "))
                if transient and done[0] >= total:
                    bars.remove_task(task)

            return advance

        yield factory


@contextlib.contextmanager
def reporting(
    mode: str = "auto", log: Callable[[str], None] = print, every: int | None = None, transient: bool = False
) -> Iterator[ProgressFactory]:
    """Yields a factory ``(description, total) -> advance`` whose tasks report in ``mode`` (see module docstring).

    Args:
        mode: ``auto``, ``bar``, ``lines`` or ``none``.
        log: Receives the plain lines of ``lines`` mode.
        every: Items between two lines in ``lines`` mode (default: about ten lines per task).
        transient: In ``bar`` mode, remove a task's bar once it is complete (a training run's epochs: each
            epoch's end is logged as a line instead of leaving a hundred finished bars).
    """
    mode = resolve_mode(mode)
    if mode == "bar":
        with _rich_bars(transient) as factory:
            yield factory
    elif mode == "lines":
        yield lambda description, total, completed=0: LineProgress(description, total, log, every, completed)
    else:
        yield no_progress


class Stages:
    """Numbered, timed lines for work made of a few long stages (export, its check): ``[2/4, 13s] tracing ...``.

    A bar cannot move during one long TensorFlow call; a line per stage with the time so far says what is
    running and how long the others took, on a terminal and in a log file alike.

    Args:
        log: Receives the lines.
        total: Stages expected (``None``: lines are numbered without a total).
    """

    def __init__(self, log: Callable[[str], None], total: int | None = None):
        self.log, self.total, self.count = log, total, 0
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.count += 1
        total = f"/{max(self.total, self.count)}" if self.total else ""
        self.log(f"[{self.count}{total}, {_format_seconds(time.monotonic() - self.started)}] {message}")

    def done(self, message: str) -> None:
        """The closing line, unnumbered: ``[done, 41s] exported ...``."""
        self.log(f"[done, {_format_seconds(time.monotonic() - self.started)}] {message}")
