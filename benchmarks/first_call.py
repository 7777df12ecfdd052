"""What the first image costs: a Predictor's first call (tracing, graph optimisation) against its later calls.

One 512x512 image through the paper's net (or ``--base32``), in each precision, with variable or constant
weights (``Predictor(constant_weights=True)``), without and with test-time mirroring. Each row runs in a fresh
Python process, as a user's ``kunet predict`` does: the first call is what a one-image job waits for, and
``first - later`` is the compile cost that more images pay back. Later = the fastest of ``--repeats`` calls.

Usage: ``.venv/bin/python benchmarks/first_call.py [--base32] [--repeats 3] [--precisions float32,mixed_bfloat16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import footer, header, in_a_fresh_process  # noqa: E402


def row(base: int, precision: str, constant: bool, mirroring: bool, repeats: int) -> dict:
    """Runs in the child process: first call and the fastest later call, in seconds."""
    import numpy as np

    from kunet.inference import Predictor
    from kunet.model import UNet
    from kunet.segmenter import with_precision

    image = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    net = with_precision(UNet(base_filters=base, seed=0), precision)
    predictor = Predictor(net, test_time_mirroring=mirroring, constant_weights=constant)
    started = time.perf_counter()
    predictor.probabilities(image)
    first = time.perf_counter() - started
    later = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.probabilities(image)
        later.append(time.perf_counter() - started)
    return {"first": first, "later": min(later)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base32", action="store_true", help="the half-width net instead of the paper's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row, in this (child) process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(row(*json.loads(args.row))))
        return
    base = 32 if args.base32 else 64
    header(f"First call: one 512x512 image, base {base}, a fresh process per row")
    print("| precision | weights | test-time mirroring | first call (s) | later calls (s) | first - later (s) |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        for mirroring in (False, True):
            for constant in (False, True):
                argument = json.dumps([base, precision, constant, mirroring, args.repeats])
                figures = in_a_fresh_process(__file__, "--row", argument)
                weights = "constant" if constant else "variables"
                print(f"| {precision} | {weights} | {'yes' if mirroring else 'no'} | {figures['first']:.1f} | "
                      f"{figures['later']:.2f} | {figures['first'] - figures['later']:.1f} |", flush=True)  # fmt: skip
    footer()


if __name__ == "__main__":
    main()
