"""Peak memory of an export's serving graph per request size, to size ``ServingLimits`` honestly.

Exports an untrained net (the paper's by default) and, for each image side, runs ``serving_default`` on one
image in a fresh process and reports the process's peak resident memory, the increase over an 8x8 request,
and that increase per pixel. Memory, not time, is measured, so a busy machine does not change the figures.

    python benchmarks/serving_memory.py --base-filters 64 --sides 512 1024 2048
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_ONE_REQUEST = r"""
import json, resource, sys
import tensorflow as tf
signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
side, batch = int(sys.argv[2]), int(sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
signature(images=tf.random.uniform([batch, side, side, 1], 0, 255))
print(json.dumps({"loaded_kb": before, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-filters", type=int, default=64)
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    from kunet.inference import InferenceSettings
    from kunet.model import UNet
    from kunet.serving.export import export
    from kunet.system_info import collect

    print(f"cpu: {collect()['cpu']}")
    with tempfile.TemporaryDirectory() as scratch:
        model = UNet(base_filters=args.base_filters, metadata=InferenceSettings().to_metadata())
        keras_file = Path(scratch) / "net.keras"
        model.save(keras_file)
        version = export(keras_file, "bench", Path(scratch) / "saved", log=lambda *a: None)
        rows = []
        for side in [8, *args.sides]:
            result = subprocess.run([sys.executable, "-c", _ONE_REQUEST, str(version), str(side), str(args.batch)],
                                    capture_output=True, text=True, check=True)  # fmt: skip
            rows.append((side, json.loads(result.stdout.strip().splitlines()[-1])))
    baseline = rows[0][1]["peak_kb"]
    print(f"paper net, base_filters {args.base_filters}, batch {args.batch}, float32; peak RSS of the process")
    print(f"{'side':>6} {'pixels':>10} {'peak MB':>9} {'over 8x8 MB':>12} {'bytes/pixel':>12}")
    for side, row in rows:
        pixels = args.batch * side * side
        extra = (row["peak_kb"] - baseline) * 1024
        print(f"{side:>6} {pixels:>10} {row['peak_kb'] / 1024:>9.0f} {extra / 2**20:>12.0f} "
              f"{extra / pixels if side > 8 else float('nan'):>12.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
