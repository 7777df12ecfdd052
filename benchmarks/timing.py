"""Timing shared by the benchmark scripts (run as ``python benchmarks/<name>.py``: this folder is on sys.path)."""

from __future__ import annotations

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
