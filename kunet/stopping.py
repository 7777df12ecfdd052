"""Graceful stop of ``kunet fit`` on SIGTERM or Ctrl-C: finish the step, checkpoint it, exit resumably.

Kubernetes, Slurm and preemptible cloud VMs announce the end of a job with SIGTERM and a grace period
(Kubernetes: ``terminationGracePeriodSeconds``, 30 s by default; Slurm: ``KillWait`` after ``--signal``) before
SIGKILL. :class:`StopRequests` turns the first SIGTERM or SIGINT into a request the training loop reads after
each step; the loop then saves a checkpoint at that step and returns, and ``kunet fit`` exits with
:data:`EXIT_STOPPED`. A second Ctrl-C raises ``KeyboardInterrupt`` at once, for a user who will not wait.

In a multi-worker run the request is summed over all workers inside the training step (one all-reduce it
shares with the loss), so every worker stops after the same step even when only one was signalled.
"""

from __future__ import annotations

import signal
import threading

# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to retry" — a stopped run is resumed
# with `kunet fit --resume RUN`. Distinct from 0 (completed), 1 (a bug) and 2 (an input error).
EXIT_STOPPED = 75

_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}


class StopRequests:
    """Context manager that records SIGTERM/SIGINT instead of dying on them.

    Handlers are installed only in the main thread (Python allows no other); elsewhere, e.g. a notebook's
    worker thread, signals keep their default effect and :attr:`requested` stays None.

    Example:
        >>> with StopRequests() as stops:
        ...     while not stops.requested:
        ...         train_one_step()
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, number: int, frame) -> None:
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.requested = self.requested or _SIGNALS[number]

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in _SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
