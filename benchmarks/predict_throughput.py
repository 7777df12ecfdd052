"""``kunet predict`` on a folder of many images: throughput mode against one image at a time, in one process.

Workload: ``--images`` synthetic 512x512 uint8 EM slices (:func:`kunet.synthetic.make_em_sample`) written as
PNG to a temporary folder; an untrained paper U-Net (base 64; 32 with ``--base32``) saved as ``.keras`` and
loaded once through :class:`kunet.Segmenter`, as ``kunet predict`` loads it. Every figure goes through
:func:`kunet.predict_files.predict_files`, the function behind ``kunet predict``, with its default outputs
(mask PNG and overlay PNG), and includes: listing and checking the inputs and the output folder, reading and
decoding each PNG, normalisation, the net (the tile chosen per image: one 700x700 tile for 512x512), the
decision rule, drawing the overlay, and encoding and atomically writing both PNGs. Not included: Python and
TensorFlow start-up, model loading and the first call's tracing (warm-up calls on other images do them, for
one image per call and for each ``--batch-images``).

* (a) single-image latency: one ``predict_files`` call for one image, one image at a time (``concurrency=0``);
  the median over the rounds. The single-image rate is 1 / (a); "(a) x N" is N images predicted so.
* (b) a folder in one call, one image at a time (``concurrency=0``: ``kunet predict`` before the throughput mode).
* (c) the same folder in one call in throughput mode (``concurrency`` N: the next images read and the previous
  written while the net works on N images at once); N = the default and any ``--concurrency`` given.
* (d) with ``--batch-images B`` (repeatable): throughput mode with B images of one size per model call
  (``kunet predict --batch-images B``), at each concurrency of (c). Its outputs may differ from (b)'s where a
  float32 probability lies within about 1e-6 of the threshold, so its masks are compared pixel by pixel and the
  differences counted.

* (e) with ``--predict-default``: the folder as ``kunet predict FOLDER`` runs it by default, in a fresh process of
  its own: throughput mode and the automatic choice of constant weights for a job of ``--images`` images
  (:func:`kunet.inference.constant_weights_pay_off`: float32 folders of 24 images or more without mirroring),
  against (a), which is what ``kunet predict`` does by default for one image (variable weights). Its own
  process, because a constant-weights function and a variable one in one process change each other's speed
  (docs/BENCHMARKS.md). Same warm-up, same round folders, run after the other modes; masks compared as (d)'s.

On a shared machine the CPU share changes within minutes, so the figures are interleaved: the images are
split into ``--rounds`` folders, and each round times (a) on one image, then (b) and (c) on that round's
folder, in an order that rotates from round to round. A mode's images/s is its images over its seconds summed
over the rounds (each round's call pays the throughput mode's start and end, where fewer images overlap:
``--rounds 1`` predicts the whole folder in one call per mode). CPU seconds per image (process time) say
what an image costs whatever share of the CPU other processes leave. The outputs of (b) and (c) are
compared byte for byte.

Every mode runs as ``kunet predict`` does, with oneDNN keeping each filter it reorders
(``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``, :mod:`kunet.onednn`); ``--filters-re-read`` turns that off for the whole run.

Usage: ``.venv/bin/python benchmarks/predict_throughput.py`` (64 images, base 64: about 20 minutes on two
quiet cores), ``--base32``, ``--quick`` (16 images, base 32, 2 rounds, while developing), ``--precision
mixed_bfloat16`` (``kunet predict --precision mixed_bfloat16``; float32 by default, as ``kunet predict``),
``--constant-weights`` (every mode, and the warm-up, with ``kunet predict --constant-weights``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "--filters-re-read" in sys.argv:  # before TensorFlow starts: it reads the variable once
    os.environ["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] = "0"
os.environ.setdefault("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")  # as kunet predict has it (kunet.onednn)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

from kunet.model import UNet  # noqa: E402
from kunet.predict_files import DEFAULT_CONCURRENCY, predict_files  # noqa: E402
from kunet.segmenter import Segmenter  # noqa: E402
from kunet.synthetic import make_em_sample  # noqa: E402


def write_images(folder: Path, first: int, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    for index in range(first, first + count):
        cv2.imwrite(str(folder / f"slice_{index:03d}.png"), make_em_sample(size, rng=index)[0])


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


def timed(function) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def predict_default_child(root: Path, precision: str, images: int, rounds: int) -> None:
    """Mode (e), in this fresh process: prints one JSON line with its wall and CPU seconds over the rounds."""
    segmenter = Segmenter(root / "model.keras", precision=precision, constant_weights=None, expected_images=images)
    predict_files(segmenter, [sorted((root / "singles").iterdir())[0]], root / "warm-up-default", concurrency=0)
    wall_total = cpu_total = 0.0
    for round_ in range(rounds):
        wall, cpu = timed(lambda r=round_: predict_files(segmenter, [root / f"images{r}"], root / f"default-{r}"))
        wall_total, cpu_total = wall_total + wall, cpu_total + cpu
    print(json.dumps({"wall": wall_total, "cpu": cpu_total, "constant": segmenter.predictor.constant_weights}))


def run_predict_default(root: Path, precision: str, images: int, rounds: int) -> dict:
    command = [sys.executable, __file__, "--child-default", str(root), "--precision", precision,
               "--images", str(images), "--rounds", str(rounds)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=None, help="Images in the folder (default 64; 16 with --quick).")
    parser.add_argument("--rounds", type=int, default=None, help="Interleaved rounds (default 4; 2 with --quick).")
    parser.add_argument("--size", type=int, default=512, help="Image side in pixels.")
    parser.add_argument("--base32", action="store_true", help="32 base filters instead of the paper's 64.")
    parser.add_argument("--base", type=int, default=None, help="Base filters (default 64; 32 with --base32).")
    parser.add_argument("--quick", action="store_true", help="16 images, base 32, 2 rounds: while developing.")
    parser.add_argument("--precision", default="float32", help="float32 (predict's default) or mixed_bfloat16.")
    parser.add_argument("--concurrency", type=int, action="append", default=None,
                        help=f"Throughput mode's concurrency (repeatable; default {DEFAULT_CONCURRENCY}).")  # fmt: skip
    parser.add_argument("--batch-images", type=int, action="append", default=[],
                        help="Also time throughput mode with this many images per call (repeatable).")  # fmt: skip
    parser.add_argument("--constant-weights", action="store_true",
                        help="Every mode with the weights compiled in (kunet predict --constant-weights).")  # fmt: skip
    parser.add_argument("--predict-default", action="store_true",
                        help="Also time (e): kunet predict's default for the folder, in a fresh process.")  # fmt: skip
    parser.add_argument("--filters-re-read", action="store_true",
                        help="oneDNN re-reads every filter each call (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=0), as kunet "
                        "predict did before it kept them.")  # fmt: skip
    parser.add_argument("--child-default", help=argparse.SUPPRESS)  # (e)'s process: the scratch folder
    args = parser.parse_args()
    count = args.images or (16 if args.quick else 64)
    rounds = args.rounds or (2 if args.quick else 4)
    if args.predict_default and args.constant_weights:
        raise SystemExit("--predict-default compares with (a) as kunet predict runs one image: drop --constant-weights")
    if args.child_default:
        predict_default_child(Path(args.child_default), args.precision, count, rounds)
        return
    base = args.base or (32 if args.base32 or args.quick else 64)
    if count % rounds:
        raise SystemExit(f"--images {count} must be a multiple of --rounds {rounds}")
    per_round = count // rounds
    modes = {"(b) one image at a time (concurrency 0)": (0, 1)}  # label: (concurrency, images per call)
    for concurrency in args.concurrency or [DEFAULT_CONCURRENCY]:
        modes[f"(c) throughput mode (concurrency {concurrency})"] = (concurrency, 1)
    for batch in args.batch_images:
        for concurrency in args.concurrency or [DEFAULT_CONCURRENCY]:
            modes[f"(d) {batch} images per call (concurrency {concurrency})"] = (concurrency, batch)
    timing.header("kunet predict on a folder: throughput mode vs one image at a time")
    kept = os.environ["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] == "1"
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; oneDNN filters "
          f"{'kept' if kept else 're-read every call'} (TF_ONEDNN_ASSUME_FROZEN_WEIGHTS={int(kept)})")  # fmt: skip
    print(f"{count} synthetic {args.size}x{args.size} uint8 PNGs in {rounds} rounds of {per_round}; paper U-Net, "
          f"base {base}, untrained, {args.precision}{', constant weights' * args.constant_weights}; "
          f"outputs per image: mask PNG + overlay PNG")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="kunet-throughput-") as scratch:
        root = Path(scratch)
        for round_ in range(rounds):
            write_images(root / f"images{round_}", round_ * per_round, per_round, args.size)
        write_images(root / "singles", count, rounds + 1, args.size)  # not in the folders
        singles = sorted((root / "singles").iterdir())
        UNet(base_filters=base, seed=0).save(root / "model.keras")
        segmenter = Segmenter(root / "model.keras", precision=args.precision, constant_weights=args.constant_weights)
        predict_files(segmenter, [singles[0]], root / "warm-up", concurrency=0)  # tracing, oneDNN primitives
        if args.batch_images:  # the batched functions compile on their first call too (seconds with constant weights)
            write_images(root / "warm-batches", count + rounds + 1, max(args.batch_images), args.size)
            for batch in sorted(set(args.batch_images)):
                predict_files(segmenter, [root / "warm-batches"], root / f"warm-up-{batch}", batch_images=batch)

        latencies: list[tuple[float, float]] = []
        totals = {label: [0.0, 0.0] for label in modes}  # wall, CPU seconds over the rounds
        for round_ in range(rounds):
            steps = ["(a)", *modes]
            steps = steps[round_ % len(steps) :] + steps[: round_ % len(steps)]
            for step in steps:
                if step == "(a)":
                    image, out = singles[round_ + 1], root / f"single{round_}"
                    latencies.append(timed(lambda i=image, o=out: predict_files(segmenter, [i], o, concurrency=0)))
                    wall, cpu, what = *latencies[-1], "1 image"
                else:
                    folder, out = root / f"images{round_}", root / f"{modes[step]}-{round_}"
                    concurrency, batch = modes[step]
                    wall, cpu = timed(lambda f=folder, o=out, c=concurrency, b=batch: predict_files(
                        segmenter, [f], o, concurrency=c, batch_images=b))  # fmt: skip
                    totals[step][0] += wall
                    totals[step][1] += cpu
                    what = f"{per_round} images"
                print(f"round {round_ + 1}/{rounds} {step:<40} {what:>10}: {wall:6.1f} s, CPU {cpu:6.1f} s; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        if args.predict_default:
            default = run_predict_default(root, args.precision, count, rounds)
            label = f"(e) kunet predict's default (constant weights {'on' if default['constant'] else 'off'})"
            modes[label] = ("default", 1)
            totals[label] = [default["wall"], default["cpu"]]
            print(f"(e), own process, {count} images: {default['wall']:6.1f} s, CPU {default['cpu']:6.1f} s; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        differences = {mode: [0, 0] for mode in modes.values() if mode[1] > 1 or mode[0] == "default"}
        for round_ in range(rounds):
            reference = digests(root / f"{(0, 1)}-{round_}")
            for mode in modes.values():
                folder = root / (f"default-{round_}" if mode[0] == "default" else f"{mode}-{round_}")
                outputs = digests(folder)
                if mode in differences:  # may differ where a probability lies within rounding of the threshold
                    for name in (name for name in reference if name.endswith("_mask.png")):
                        if outputs[name] != reference[name]:
                            masks = [cv2.imread(str(f / name), -1) for f in (root / f"{(0, 1)}-{round_}", folder)]
                            differences[mode][0] += 1
                            differences[mode][1] += int((masks[0] != masks[1]).sum())
                elif outputs != reference:
                    raise SystemExit(f"outputs of concurrency {mode[0]} differ from one image at a time")

    single = statistics.median(wall for wall, _ in latencies)
    single_cpu = statistics.median(cpu for _, cpu in latencies)
    one_at_a_time = totals[next(iter(modes))][0] / count
    print()
    print(f"{'':<54} {'s/image':>8} {'images/s':>9} {'CPU s/image':>12} {f'vs (a)x{count}':>9} {'vs (b)':>7}")
    print(f"{'(a) single image, one call (median)':<54} {single:8.2f} {1 / single:9.3f} {single_cpu:12.2f} "
          f"{1.0:9.2f} {one_at_a_time / single:7.2f}")  # fmt: skip
    for label, (wall, cpu) in totals.items():
        wall, cpu = wall / count, cpu / count
        print(f"{label:<54} {wall:8.2f} {1 / wall:9.3f} {cpu:12.2f} {single / wall:9.2f} {one_at_a_time / wall:7.2f}")
    print("outputs of (b) and (c) identical byte for byte")
    for (concurrency, batch), (masks, pixels) in differences.items():
        what = "(e) kunet predict's default" if concurrency == "default" else f"(d) {batch} images per call, " \
            f"concurrency {concurrency}"  # fmt: skip
        print(f"{what}: masks differing from (b) in {masks} of {count} images, {pixels} of {count * args.size**2} "
              "pixels")  # fmt: skip
    timing.footer()


if __name__ == "__main__":
    main()
