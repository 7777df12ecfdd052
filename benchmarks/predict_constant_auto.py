"""`kunet predict`'s automatic constant weights, end to end: a folder job with and without them.

A user's command in a fresh process, as they run it: ``kunet predict MODEL FOLDER`` (the default, which turns
constant weights on in float32 from 2 images with test-time mirroring and from 8 without) against the same with
``--no-constant-weights``, on N synthetic 512x512 images and an untrained net of the paper's shape (or
``--base32``). The wall time is the command's own: from process start to exit, model loading and the first
call's compilation included, since that is what the automatic choice has to win back.

Usage: ``.venv/bin/python benchmarks/predict_constant_auto.py [--base32] [--jobs mirror:2,mirror:4,plain:8,plain:16]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import footer, header  # noqa: E402

KUNET = [sys.executable, "-m", "kunet_cli.main"]


def make_inputs(root: Path, base: int, images: int) -> tuple[Path, Path]:
    import cv2
    import numpy as np

    from kunet.model import UNet

    model = root / f"unet{base}.keras"
    if not model.exists():
        UNet(base_filters=base, seed=0).save(model)
    folder = root / f"images{images}"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(images):
        cv2.imwrite(str(folder / f"image{index:03d}.png"), rng.integers(0, 256, (512, 512), dtype=np.uint8))
    return model, folder


def seconds_of(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base32", action="store_true", help="the half-width net instead of the paper's")
    parser.add_argument("--jobs", default="mirror:2,mirror:4,plain:8,plain:16", help="mirror|plain:images, ...")
    args = parser.parse_args()
    base = 32 if args.base32 else 64
    header(f"kunet predict on a folder, float32, base {base}: default (automatic constant weights) vs off")
    print("| test-time mirroring | images | --no-constant-weights (s) | default (s) | constant weights chosen | "
          "off / default |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for job in args.jobs.split(","):
            mode, images = job.split(":")
            model, folder = make_inputs(root, base, int(images))
            command = [*KUNET, "predict", str(model), str(folder), "--precision", "float32",
                       "--mirror" if mode == "mirror" else "--no-mirror"]  # fmt: skip
            off, _ = seconds_of([*command, "--out", str(root / "off"), "--no-constant-weights"])
            default, said = seconds_of([*command, "--out", str(root / "default")])
            chosen = "yes" if "constant weights for" in said else "no"
            print(f"| {mode == 'mirror'} | {images} | {off:.1f} | {default:.1f} | {chosen} | {off / default:.2f}x |",
                  flush=True)  # fmt: skip
    footer()


if __name__ == "__main__":
    main()
