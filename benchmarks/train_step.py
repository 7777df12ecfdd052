"""Seconds per training step of the paper-size U-Net, and whether the input pipeline can keep up.

Measured in one run on this machine:

* the paper's net (572 -> 388 tile, batch 1, 31 M parameters), one full training step (forward, weighted
  loss, backward, SGD update) in float32 and mixed_bfloat16, each without and with XLA (jit_compile);
* optionally a base-32 net (a quarter of the FLOPs) in mixed_bfloat16, the fast setting for CPUs;
* the training pipeline (read GZIP TFRecords, parse, decode, cache, tile, augment, normalise, batch) in
  tiles/s at 572 -> 388, and the ratio pipeline throughput / training throughput.

Usage: ``.venv/bin/python benchmarks/train_step.py [--steps 5] [--records DIR] [--skip-xla]``
(records default: built on the fly from ../shared/data/isbi2012, else from synthetic EM images).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kunet.config import pipeline_from_dict  # noqa: E402
from kunet.losses import segmentation_loss  # noqa: E402
from kunet.model import UNet  # noqa: E402
from kunet.pipeline import training_dataset  # noqa: E402
from kunet.sizes import forward_flops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def step_seconds(base_filters: int, precision: str, jit: bool, steps: int, batch_norm: bool = False) -> float:
    """Median seconds of one training step after two warm-up steps (which include tracing/compiling)."""
    import keras

    model = UNet(base_filters=base_filters, batch_norm=batch_norm, seed=0,
                 compute_dtype=None if precision == "float32" else precision)  # fmt: skip
    optimizer = keras.optimizers.SGD(0.01, momentum=0.99)
    rng = np.random.default_rng(0)
    tiles = tf.constant(rng.normal(size=(1, 572, 572, 1)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 2, (1, 388, 388)).astype(np.int32))
    weights = tf.constant(rng.uniform(1, 10, (1, 388, 388)).astype(np.float32))

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = segmentation_loss(labels, model(tiles, training=True), weights, 2, 388 * 388)
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    for _ in range(2):
        step().numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def pipeline_tiles_per_second(records: Path, seconds: float = 8.0) -> float:
    config = pipeline_from_dict({"name": "bench", "train": {"tile_size": 572, "shuffle_buffer": 32}})
    dataset = training_dataset(config, records, batch_size=1, placement="host")
    iterator = iter(dataset)
    for _ in range(40):  # fill the cache, compile the sampler
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    return count / (time.perf_counter() - start)


def default_records(workdir: Path) -> Path:
    from kunet.records import build_records

    isbi = REPO.parent / "shared" / "data" / "isbi2012" / "train"
    source = workdir / "em"
    if isbi.exists():
        images, labels = isbi / "images", isbi / "labels"
    else:
        from kunet.synthetic import write_em_dataset

        write_em_dataset(source, 20, 512, seed=0)
        images, labels = source / "images", source / "labels"
    config = pipeline_from_dict(
        {"name": "bench", "source": {"images": str(images), "labels": str(labels)}, "records": {"val_fraction": 0.0}}
    )
    build_records(config, out=workdir / "records")
    return workdir / "records"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--records", type=Path)
    parser.add_argument("--skip-xla", action="store_true")
    parser.add_argument("--base32", action="store_true", help="also time a base-32 net in mixed_bfloat16")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    flops = 3 * forward_flops(572, 572)  # forward + backward ~ 3x forward
    results = {}
    for precision in ("float32", "mixed_bfloat16"):
        for jit in (False,) if args.skip_xla else (False, True):
            seconds = step_seconds(64, precision, jit, args.steps)
            results[(64, precision, jit)] = seconds
            print(f"paper net, {precision:>14}, XLA {'on ' if jit else 'off'}: {seconds:6.2f} s/step "
                  f"({flops / seconds / 1e9:5.0f} GFLOP/s)")  # fmt: skip
    if args.base32:
        seconds = step_seconds(32, "mixed_bfloat16", False, args.steps)
        results[(32, "mixed_bfloat16", False)] = seconds
        print(f"base-32 net, mixed_bfloat16, XLA off: {seconds:6.2f} s/step")
    baseline = results[(64, "float32", False)]
    for (base, precision, jit), seconds in results.items():
        print(f"  speed-up vs paper net float32 without XLA: {base}/{precision}/XLA {jit}: {baseline / seconds:4.2f}x")

    workdir = Path(tempfile.mkdtemp(prefix="kunet-bench-"))
    try:
        records = args.records or default_records(workdir)
        rate = pipeline_tiles_per_second(records)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fastest = min(results.values())
    print(f"pipeline (read, parse, decode, cache, tile 572->388, augment, normalise): {rate:6.1f} tiles/s")
    print(f"pipeline / fastest training step: {rate * fastest:5.0f}x the tiles training consumes "
          f"(the pipeline {'cannot' if rate * fastest > 1 else 'CAN'} be the bottleneck on this machine)")  # fmt: skip


if __name__ == "__main__":
    main()
