"""The practical peak of this CPU for the U-Net's work, measured in TensorFlow in the same run as a benchmark.

Two kernels, each in one ``tf.function``: a 3x3 convolution with 128 input and 128 output channels on a
1x256x256x128 map (the U-Net's bread and butter) and a 2048x2048x2048 matmul. Every benchmark reports its
GFLOP/s as a percentage of the convolution figure in the same precision. Usage:
``.venv/bin/python benchmarks/peak.py [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("float32", "mixed_bfloat16")


def _kernels(dtype):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = tf.constant(rng.normal(size=(1, 256, 256, 128)), dtype)
    filters = tf.constant(rng.normal(size=(3, 3, 128, 128)) / 34, dtype)
    a = tf.constant(rng.normal(size=(2048, 2048)), dtype)
    b = tf.constant(rng.normal(size=(2048, 2048)) / 45, dtype)
    conv = tf.function(lambda: tf.nn.conv2d(image, filters, 1, "SAME")[0, 0, 0, 0])
    matmul = tf.function(lambda: tf.matmul(a, b)[0, 0])
    return {"conv3x3": (conv, 2 * 256 * 256 * 9 * 128 * 128), "matmul": (matmul, 2 * 2048**3)}


def peak_gflops(precision: str, seconds: float = 3.0) -> dict[str, float]:
    """GFLOP/s of each kernel: the median call over about ``seconds`` of calls (at least 3) after a warm-up.

    Args:
        precision: ``"float32"`` or ``"mixed_bfloat16"`` (inputs and outputs in bfloat16).
        seconds: Time spent timing each kernel.

    Returns:
        ``{"conv3x3": GFLOP/s, "matmul": GFLOP/s}`` (2 FLOPs per multiply-add).
    """
    import tensorflow as tf

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    result = {}
    for name, (function, flops) in _kernels(tf.float32 if precision == "float32" else tf.bfloat16).items():
        function().numpy()  # tracing, oneDNN primitive creation
        times, start = [], time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < seconds:
            begin = time.perf_counter()
            function().numpy()
            times.append(time.perf_counter() - begin)
        result[name] = flops / float(np.median(times)) / 1e9
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    from timing import footer, header

    header("Practical peak (TensorFlow)")
    for precision in PRECISIONS:
        figures = peak_gflops(precision, args.seconds)
        print(f"{precision:>15}: " + ", ".join(f"{name} {value:6.0f} GFLOP/s" for name, value in figures.items()))
    footer()


if __name__ == "__main__":
    main()
