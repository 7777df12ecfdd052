"""Throughput of kunet's in-graph augmentation against elasticdeform and albumentations, same run.

Workload (as in the paper's setting): a 512x512 uint8 image (scaled to float), a uint8 label and a float32
weight map, warped through ONE shared random field to 512x512 outputs. Measured in this one run:

  (a) kunet, per sample, XLA-compiled (``make_host_sampler``) inside ``Dataset.map(AUTOTUNE)``
  (b) kunet, batched (8) XLA ``sample_tiles`` call, as the training step runs it on the device
  (c) kunet, per sample, graph mode without XLA inside ``Dataset.map(AUTOTUNE)``
  (d) elasticdeform 0.5.1 ``deform_random_grid([img, lbl, w], sigma=10, points=3, order=[3, 0, 1])``
      in a plain loop, and inside ``Dataset.map(AUTOTUNE)`` through ``tf.numpy_function`` (2 workers)
  (e) albumentations ``ElasticTransform`` (image + mask + the weight as an extra mask), exact and
      ``approximate=True``

kunet runs twice: "geometry" (elastic 3x3/sigma 10 + rotation + flips + shift: more than the peers do)
and "full" (plus brightness, contrast, gamma and Gaussian noise). Finally the training-size figure:
572 input tile with 388 label/weight from the 512x512 image, full augmentation, (a)'s placement.

Usage: ``.venv/bin/python benchmarks/augment.py [--seconds 5] [--quick]``. Peers that are not installed
are skipped (see benchmarks/README.md for installing them). Figures depend on machine load: the script
prints the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kunet.augment import AugmentParams, make_host_sampler, sample_tiles  # noqa: E402

SIZE = 512
BATCH = 8
FULL = AugmentParams()
GEOMETRY = dataclasses.replace(FULL, brightness=0.0, contrast=0.0, gamma=0.0, noise_std=0.0)


def make_data(seed: int = 0):
    """A 512x512 uint8 image, a uint8 label and a float32 weight map (real ISBI slice when available)."""
    rng = np.random.default_rng(seed)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train"
    try:
        import cv2

        image = cv2.imread(str(shared / "images" / "slice_00.png"), cv2.IMREAD_GRAYSCALE)
        label = cv2.imread(str(shared / "labels" / "slice_00.png"), cv2.IMREAD_GRAYSCALE)
    except ImportError:
        image = label = None
    if image is None or label is None or image.shape != (SIZE, SIZE):
        image = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
        label = np.where(image > 100, 255, 0).astype(np.uint8)
    classes = (label > 127).astype(np.uint8)
    weight = (1.0 + 9.0 * rng.random((SIZE, SIZE))).astype(np.float32)
    return image, classes, weight


def timed(step, seconds: float, warmup: int) -> float:
    """Items per second of ``step()`` (which returns how many items it produced) after a warm-up."""
    for _ in range(warmup):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        count += step()
    return count / (time.perf_counter() - start)


def dataset_rate(map_fn, data, seconds: float) -> float:
    """Per-sample map inside tf.data with AUTOTUNE parallelism, consumed element by element."""
    image, classes, weight = data
    seeds = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.constant(7, tf.int64), i]))
    dataset = seeds.map(
        lambda s: map_fn(image[..., None], classes, weight, s), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    )
    iterator = iter(dataset.prefetch(tf.data.AUTOTUNE))

    def step():
        next(iterator)
        return 1

    return timed(step, seconds, warmup=40)


def kunet_per_sample(data, params, input_tile, output_tile, seconds, jit_compile=True) -> float:
    sampler = make_host_sampler(params, input_tile, output_tile, jit_compile=jit_compile)
    return dataset_rate(sampler, data, seconds)


def kunet_batched(data, params, seconds) -> float:
    image, classes, weight = data
    images = tf.constant(np.repeat(image[None, ..., None], BATCH, 0))
    labels = tf.constant(np.repeat(classes[None], BATCH, 0))
    weights = tf.constant(np.repeat(weight[None], BATCH, 0))
    sizes = tf.constant([[SIZE, SIZE]] * BATCH, tf.int32)

    @tf.function(jit_compile=True)
    def run(step):
        seeds = tf.stack([tf.fill([BATCH], step), tf.range(BATCH, dtype=tf.int64)], axis=1)
        return sample_tiles(images, labels, weights, sizes, seeds, params, SIZE, SIZE)

    counter = iter(range(1, 1 << 62))

    def step():
        tiles = run(tf.constant(next(counter), tf.int64))
        tiles[0].numpy()  # wait for the result
        return BATCH

    return timed(step, seconds, warmup=3)


def elasticdeform_loop(data, seconds) -> float | None:
    try:
        import elasticdeform
    except ImportError:
        return None
    image, classes, weight = data

    def step():
        elasticdeform.deform_random_grid(
            [image.astype(np.float32) / 255.0, classes, weight], sigma=10, points=3, order=[3, 0, 1]
        )
        return 1

    return timed(step, seconds, warmup=2)


def elasticdeform_dataset(data, seconds) -> float | None:
    try:
        import elasticdeform
    except ImportError:
        return None

    def deform(image, classes, weight, seed):
        rng_state = np.random.RandomState(int(seed[1]) % (2**31))
        np.random.set_state(rng_state.get_state())  # elasticdeform draws from the global state
        out = elasticdeform.deform_random_grid(
            [image[..., 0].astype(np.float32) / 255.0, classes, weight], sigma=10, points=3, order=[3, 0, 1]
        )
        return out[0][..., None], out[1], out[2]

    def map_fn(image, classes, weight, seed):
        return tf.numpy_function(deform, [image, classes, weight, seed], [tf.float32, tf.uint8, tf.float32])

    return dataset_rate(map_fn, data, seconds)


def albumentations_rate(data, seconds, approximate: bool) -> float | None:
    try:
        import albumentations as A
        import cv2
    except ImportError:
        return None
    image, classes, weight = data
    transform = A.Compose(
        [
            A.ElasticTransform(
                alpha=1000.0, sigma=50.0, approximate=approximate, border_mode=cv2.BORDER_REFLECT_101, p=1.0
            )
        ],
        additional_targets={"weight": "mask"},
    )
    unit = image.astype(np.float32) / 255.0

    def step():
        transform(image=unit, mask=classes, weight=weight)
        return 1

    return timed(step, seconds, warmup=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per figure")
    parser.add_argument("--quick", action="store_true", help="1 s per figure (while developing)")
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    data = make_data()

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} cores, load average before: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print(
        f"workload: {SIZE}x{SIZE} uint8 image + uint8 label + float32 weight, one field, "
        f"{SIZE}x{SIZE} out; {seconds:g} s per figure\n"
    )
    rates: dict[str, float | None] = {}

    def report(key: str, label: str, value: float | None, unit: str = "images/s"):
        rates[key] = value
        text = "not installed" if value is None else f"{value:8.1f} {unit}"
        print(f"  {label:<62} {text}", flush=True)

    report(
        "a_geo",
        "(a) kunet per-sample XLA in Dataset.map, geometry",
        kunet_per_sample(data, GEOMETRY, SIZE, SIZE, seconds),
    )
    report("a_full", "(a) kunet per-sample XLA in Dataset.map, full", kunet_per_sample(data, FULL, SIZE, SIZE, seconds))
    report("b_geo", f"(b) kunet batched XLA (batch {BATCH}), geometry", kunet_batched(data, GEOMETRY, seconds))
    report("b_full", f"(b) kunet batched XLA (batch {BATCH}), full", kunet_batched(data, FULL, seconds))
    report(
        "c_geo",
        "(c) kunet per-sample graph mode (no XLA) in Dataset.map, geometry",
        kunet_per_sample(data, GEOMETRY, SIZE, SIZE, seconds, jit_compile=False),
    )
    report("d_loop", "(d) elasticdeform deform_random_grid, loop", elasticdeform_loop(data, seconds))
    report(
        "d_data",
        "(d) elasticdeform via numpy_function in Dataset.map",
        elasticdeform_dataset(data, seconds) if rates["d_loop"] is not None else None,
    )
    report("e_exact", "(e) albumentations ElasticTransform", albumentations_rate(data, seconds, False))
    report(
        "e_approx",
        "(e) albumentations ElasticTransform approximate=True",
        albumentations_rate(data, seconds, True) if rates["e_exact"] is not None else None,
    )
    print()
    report(
        "train",
        "training size 572 -> 388 from 512x512, full, (a)'s placement",
        kunet_per_sample(data, FULL, 572, 388, seconds),
        unit="tiles/s",
    )

    print("\nratios (kunet / peer):")
    peers = [
        ("d_loop", "elasticdeform loop"),
        ("d_data", "elasticdeform in tf.data"),
        ("e_exact", "albumentations exact"),
        ("e_approx", "albumentations approximate"),
    ]
    for key, name in (
        ("a_geo", "(a) geometry"),
        ("a_full", "(a) full"),
        ("b_geo", "(b) geometry"),
        ("c_geo", "(c) geometry"),
    ):
        parts = [f"{rates[key] / rates[p]:5.1f}x {label}" for p, label in peers if rates.get(p)]
        print(f"  {name:<14} " + (", ".join(parts) if parts else "no peers installed"))

    best_elasticdeform = max((rates[k] for k in ("d_loop", "d_data") if rates.get(k)), default=None)
    print("\ntargets (2 cores): >= 300 images/s and >= 10x elasticdeform")
    best = max(rates["a_geo"], rates["b_geo"])
    print(f"  best kunet geometry {best:.0f} images/s: {'met' if best >= 300 else 'NOT met'}")
    if best_elasticdeform:
        ratio = rates["a_geo"] / best_elasticdeform
        print(
            f"  (a) geometry vs the faster elasticdeform placement: {ratio:.1f}x {'met' if ratio >= 10 else 'NOT met'}"
        )
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
