"""One 512x512 image through the paper-size U-Net on this CPU, end to end, against the naive scheme.

Measured in one run:

* naive: the usual Keras U-Net recipe - mirror-pad, cut four 572x572 tiles (388x388 outputs), run them
  with ``model.predict`` one by one, stitch (float32);
* kunet ``Predictor`` (one ``tf.function`` per tile size, tile chosen for the fewest FLOPs: a single
  700x700 tile), float32 and mixed_bfloat16;
* achieved GFLOP/s of each (FLOPs counted layer by layer, 2 per multiply-add).

"End to end" includes normalisation, mirror extension, tiling, the net, softmax and stitching; not file
I/O. Usage: ``.venv/bin/python benchmarks/inference.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kunet.inference import Predictor, choose_tile  # noqa: E402
from kunet.model import UNet  # noqa: E402
from kunet.preprocess import image_statistics, normalize  # noqa: E402
from kunet.segmenter import with_precision  # noqa: E402
from kunet.sizes import forward_flops  # noqa: E402


def naive_predict(model, image: np.ndarray) -> np.ndarray:
    """Four 572 -> 388 tiles through ``model.predict``, stitched: what most Keras U-Nets do."""
    unit = image.astype(np.float32) / 255.0
    prepared = normalize(unit[..., None], "standardize", image_statistics(unit))
    padded = np.pad(prepared, ((92, 92 + 388 * 2 - 512), (92, 92 + 388 * 2 - 512), (0, 0)), mode="reflect")
    out = np.zeros((776, 776, 2), np.float32)
    for ty in range(2):
        for tx in range(2):
            tile = padded[ty * 388 : ty * 388 + 572, tx * 388 : tx * 388 + 572][None]
            logits = model.predict(tile, verbose=0)[0]
            out[ty * 388 : (ty + 1) * 388, tx * 388 : (tx + 1) * 388] = tf.nn.softmax(logits).numpy()
    return out[:512, :512]


def timed(function, repeats: int) -> float:
    function()  # warm-up: tracing, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    image = np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train" / "images" / "slice_00.png"
    if shared.exists():
        import cv2

        image = cv2.imread(str(shared), cv2.IMREAD_GRAYSCALE)
    model = UNet(seed=0)
    plan = choose_tile(image.shape)
    naive_flops = 4 * forward_flops(572, 572)
    kunet_flops = plan.num_tiles * forward_flops(*plan.input_hw)
    rows = []
    naive = timed(lambda: naive_predict(model, image), args.repeats)
    rows.append(("naive: 4 x 572 tiles, model.predict, float32", naive, naive_flops))
    for precision in ("float32", "mixed_bfloat16"):
        predictor = Predictor(with_precision(model, precision))
        seconds = timed(lambda p=predictor: p.probabilities(image), args.repeats)
        rows.append(
            (f"kunet: {plan.num_tiles} x {plan.input_hw[0]} tile, tf.function, {precision}", seconds, kunet_flops)
        )
    reference = Predictor(model).probabilities(image)
    agreement = np.abs(naive_predict(model, image) - reference).max()
    for name, seconds, flops in rows:
        print(f"{name:<58} {seconds:6.2f} s  {flops / 1e12:5.2f} TFLOP  {flops / seconds / 1e9:5.0f} GFLOP/s  "
              f"{naive / seconds:4.1f}x naive")  # fmt: skip
    print(f"max |p_naive - p_kunet| = {agreement:.3f} (the naive 388-px stride shifts the pooling grid per tile)")


if __name__ == "__main__":
    main()
