"""Graceful stop of ``kunet fit`` on SIGTERM or Ctrl-C: finish the step, checkpoint it, exit resumably.

Kubernetes, Slurm and preemptible cloud VMs announce the end of a job with SIGTERM and a grace period
(Kubernetes: ``terminationGracePeriodSeconds``, 30 s by default; Slurm: ``KillWait`` after ``--signal``) before
SIGKILL. :class:`StopRequests` turns the first SIGTERM or SIGINT into a request the training loop reads after
each step; the loop then saves a checkpoint at that step and returns, and ``kunet fit`` exits with
128 + the signal's number (:func:`stop_exit_code`). A second Ctrl-C raises ``KeyboardInterrupt`` at once,
for a user who will not wait.

In a multi-worker run the request is summed over all workers inside the training step (one all-reduce it
shares with the loss), so every worker stops after the same step even when only one was signalled.
"""

from __future__ import annotations

import signal
import threading

# The exit code of a stopped fit is the shell's for a process killed by that signal (128 + its number): what
# schedulers already read as "terminated, retry". Kubeflow's training operator, with restartPolicy ExitCode,
# restarts exactly 130, 137, 138 and 143 and fails the job on others (pkg/util/train/train_util.go); a
# worker that stops because another one was signalled exits as if sent SIGTERM. 0 means completed, 2 an input
# error, 1 a bug.
STOP_EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


def stop_exit_code(signal_name: str | None) -> int:
    """143 for SIGTERM (or a stop another worker was signalled into), 130 for Ctrl-C."""
    return STOP_EXIT_CODES.get(signal_name or "SIGTERM", STOP_EXIT_CODES["SIGTERM"])


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
