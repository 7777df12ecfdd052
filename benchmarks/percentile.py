"""Time and peak memory of the percentile normalisation's statistics on a large image, each way it is computed.

Each variant runs in a fresh process on the same random uint16 image with hot pixels (seeded), already in
memory as the [0, 1] float32 image it normalises. Reported are the wall time of the statistics (after one
warm-up call on a small image, so graph building is not counted) and the process's peak resident memory
during the call above what it held before (Linux: the peak is reset through ``/proc/self/clear_refs``).
``tf.sort``, the obvious exact TensorFlow way, is measured as the reference the radix selection replaces.

    python benchmarks/percentile.py --side 8192
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_ONE_VARIANT = r"""
import json, sys, time
import numpy as np
side, variant = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
image = rng.integers(100, 4000, (side, side), dtype=np.uint16)
image.reshape(-1)[rng.integers(0, image.size, image.size // 1000)] = 65535  # hot pixels
unit = (image.astype(np.float32) / np.float32(65535))[..., None]
import tensorflow as tf
from kunet import preprocess
if variant.startswith("tf"):
    tensor = tf.constant(unit[None])
    if variant == "tf_radix":
        run = tf.function(preprocess.tf_percentile_statistics)
    else:
        @tf.function
        def run(units):  # the same order statistics from a full sort
            flat = tf.sort(tf.reshape(units, [1, -1]), axis=1)
            count = tf.shape(flat, out_type=tf.int64)[1]
            return tf.gather(flat, [count // 100, count * 998 // 1000], axis=1)
    run(tf.constant(unit[None, :64, :64]))
    call = lambda: [t.numpy() for t in run(tensor)]
elif variant == "numpy":
    call = lambda: preprocess.percentile_statistics(unit)
else:
    call = lambda: preprocess.streamed_percentile_statistics(image, preprocess.to_unit_range)
def status_kb(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM (peak RSS) := VmRSS
before = status_kb("VmRSS")
start = time.perf_counter()
result = call()
seconds = time.perf_counter() - start
peak = status_kb("VmHWM")
print(json.dumps({"seconds": seconds, "before_kb": before, "peak_kb": peak, "result": str(result)}))
"""

VARIANTS = {
    "tf_radix": "TensorFlow, radix selection (training, exports)",
    "tf_sort": "TensorFlow, tf.sort (reference, not used)",
    "numpy": "NumPy, np.percentile (prediction)",
    "streamed": "NumPy, streamed from the uint16 image (huge images)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    pixels = args.side**2
    print(
        f"{args.side}x{args.side} uint16 ({pixels / 1e6:.0f} M pixels; its float32 image: {pixels * 4 / 2**20:.0f} MB)"
    )
    print(f"{'variant':<52} {'seconds':>8} {'peak over image MB':>19}")
    for variant in args.variants:
        result = subprocess.run([sys.executable, "-c", _ONE_VARIANT, str(args.side), variant], capture_output=True,
                                text=True, check=True)  # fmt: skip
        row = json.loads(result.stdout.strip().splitlines()[-1])
        extra = (row["peak_kb"] - row["before_kb"]) / 1024
        print(f"{VARIANTS[variant]:<52} {row['seconds']:>8.2f} {extra:>19.0f}")


if __name__ == "__main__":
    main()
