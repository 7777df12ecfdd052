"""Timing and reporting shared by the benchmark scripts (run as ``python benchmarks/<name>.py``: this folder is on
sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def median_ms(function, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``function``, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def in_a_fresh_process(script: str, flag: str, argument: str, environment: dict | None = None) -> dict:
    """Runs ``python script flag argument`` in a new process and returns the JSON of its last stdout line: a
    measurement no earlier one in this process can warm up or slow down (a user's ``kunet predict`` starts fresh).
    ``environment``: variables set for that process only."""
    result = subprocess.run([sys.executable, script, flag, argument], capture_output=True, text=True, timeout=1800,
                            check=True, env={**os.environ, **(environment or {})})  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg()) + " (1, 5, 15 min)"


def header(title: str) -> None:
    """Prints the title, the CPU line of ``kunet info`` (model, cores, features) and the load average.

    The load average says whether the figures below were taken on a quiet machine; :func:`footer` prints it again.
    """
    from kunet.system_info import cpu_features, cpu_model

    features = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in cpu_features().items())
    print(f"# {title}\n\ncpu: {cpu_model()}, {os.cpu_count()} cores; {features}\n{_load()} at start")


def footer() -> None:
    """Prints the load average after the measurements."""
    print(f"{_load()} at the end")
