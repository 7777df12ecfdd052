"""One 512x512 image through the paper's U-Net: kunet against plain Keras and PyTorch, float32 and bf16, one run.

Rows, each end to end (normalisation, mirror extension, tiling, the net, softmax, stitching; no file I/O):

* Keras ``tf.function``: what a competent Keras user writes - mirror-pad, four 572x572 tiles (388x388
  outputs) in one batch through ``tf.function(lambda x: model(x, training=False))``, softmax, stitch;
  float32 and mixed_bfloat16. **Every ratio is against this row in the same precision.**
* Keras ``tf.function``, filters kept: the same in a process with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``
  (oneDNN reorders each filter once and keeps it, :mod:`kunet.onednn`), which a Keras user can set too: the
  strongest Keras row. The last column compares with the faster of the two Keras rows.
* kunet ``Predictor``: one ``tf.function`` per tile size, tile chosen for the fewest FLOPs (a single
  700x700 tile for 512x512), float32 and mixed_bfloat16: as ``kunet predict`` runs it (filters kept, the
  default of kunet's commands that predict), with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=0`` (each filter read in
  the variable's layout every call, as before), and with ``constant_weights=True`` (``kunet predict
  --constant-weights``: the weights compiled into the graph, filters kept as the command has them). Each kunet
  row runs in a fresh process of its own (see :func:`seconds_in_a_fresh_process`). Each row's first call
  (tracing, graph optimisation) is printed below the table.
* PyTorch (``benchmarks/torch_peer.py``): the same net and the same four tiles as the Keras row, under
  ``torch.inference_mode()``, bf16 through ``torch.autocast("cpu", dtype=torch.bfloat16)``.
* naive: the four tiles one by one through ``model.predict`` (float32), the recipe of most Keras U-Nets.

GFLOP/s count each row's own tiles (2 FLOPs per multiply-add, :func:`kunet.sizes.forward_flops`); "% peak"
is against the 3x3-convolution kernel of ``benchmarks/peak.py`` in the same precision, measured in the same
run. Usage: ``.venv/bin/python benchmarks/inference.py [--repeats 5] [--base32] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Rows that keep their filters run in processes of their own; this one re-reads them, as TensorFlow does by default.
os.environ.setdefault("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch_peer  # noqa: E402
from peak import peak_gflops  # noqa: E402
from timing import footer, header, in_a_fresh_process, median_ms  # noqa: E402

from kunet.inference import Predictor  # noqa: E402
from kunet.model import UNet  # noqa: E402
from kunet.preprocess import image_statistics, normalize  # noqa: E402
from kunet.segmenter import with_precision  # noqa: E402
from kunet.sizes import forward_flops  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16")
TILE, OUT = 572, 388
SCHEMES = (
    "Keras tf.function",
    "Keras tf.function, filters kept",
    "kunet predict's default (filters kept)",
    "kunet Predictor, filters re-read",
    "kunet Predictor, constant weights",
    "PyTorch",
    "PyTorch, autocast bf16",
    "naive: model.predict per tile",
)


def four_tiles(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Standardised, mirror-padded image cut into 572x572 tiles whose 388x388 outputs cover it: [N, 572, 572, 1]."""
    height, width = image.shape
    rows, cols = -(-height // OUT), -(-width // OUT)
    unit = image.astype(np.float32) / 255.0
    prepared = normalize(unit[..., None], "standardize", image_statistics(unit))
    pad = ((92, 92 + rows * OUT - height), (92, 92 + cols * OUT - width), (0, 0))
    padded = np.pad(prepared, pad, mode="reflect")
    tiles = [padded[r * OUT : r * OUT + TILE, c * OUT : c * OUT + TILE] for r in range(rows) for c in range(cols)]
    return np.stack(tiles), rows, cols


def stitch(probabilities: np.ndarray, rows: int, cols: int, image_hw) -> np.ndarray:
    """[rows * cols, 388, 388, K] tile outputs -> [H, W, K]."""
    grid = probabilities.reshape(rows, cols, OUT, OUT, -1).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * OUT, cols * OUT, -1)[: image_hw[0], : image_hw[1]]


def keras_function(model):
    """The competent Keras user's predictor: every tile in one batch through one ``tf.function``."""
    forward = tf.function(lambda tiles: tf.nn.softmax(model(tiles, training=False)))

    def predict(image):
        tiles, rows, cols = four_tiles(image)
        return stitch(forward(tiles).numpy(), rows, cols, image.shape)

    return predict


def keras_predict(model):
    """The naive recipe: the tiles one by one through ``model.predict``."""

    def predict(image):
        tiles, rows, cols = four_tiles(image)
        logits = np.concatenate([model.predict(tile[None], verbose=0) for tile in tiles])
        return stitch(tf.nn.softmax(logits).numpy(), rows, cols, image.shape)

    return predict


# Seconds of each row's first call (tracing, graph optimisation, oneDNN primitive creation), by row name.
FIRST_CALLS: dict[str, float] = {}


def timed(function, repeats: int, name: str = "") -> float:
    """Median seconds of ``repeats`` calls after one warm-up call, whose time goes to FIRST_CALLS[name]."""
    started = time.perf_counter()
    function()
    FIRST_CALLS[name] = time.perf_counter() - started
    return median_ms(function, repeats) / 1000


def seconds_in_a_fresh_process(
    scheme: str, base: int, precision: str, repeats: int, constant_weights: bool = False, filters_kept: bool = True
) -> float:
    """A ``kunet`` or ``Keras`` row timed in a new Python process (its first call goes to FIRST_CALLS), with
    oneDNN's filter cache (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``) on or off for that process.

    Measured in one process, a constant-weights function and a variable one change each other's speed (in
    float32, 1.6 s and 2.1 s apart when each runs alone, within 0.1 s of each other when both ran in one
    process, whichever first), so each kunet row gets a process of its own, as a user's `kunet predict` has.
    """
    figures = in_a_fresh_process(__file__, "--row", f"{scheme},{base},{precision},{int(constant_weights)},{repeats}",
                                 {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1" if filters_kept else "0"})  # fmt: skip
    label = " constant weights" if constant_weights else ""
    label += " filters kept" if filters_kept else " filters re-read"
    FIRST_CALLS[f"base {base} {scheme}{label} {precision}"] = figures["first"]
    return figures["median"]


def row_in_this_process(argument: str) -> None:
    """``--row scheme,base,precision,constant,repeats``: one row's first call and median as JSON (scheme ``kunet``:
    the Predictor, with constant weights if ``constant`` is 1; ``Keras``: the Keras ``tf.function``)."""
    import json

    scheme, base, precision, constant, repeats = argument.split(",")
    image, _ = load_image()
    net = with_precision(UNet(base_filters=int(base), seed=0), precision)
    if scheme == "kunet":
        predict = Predictor(net, constant_weights=constant == "1").probabilities
    else:
        predict = keras_function(net)
    median = timed(lambda: predict(image), int(repeats), scheme)
    print(json.dumps({"first": FIRST_CALLS[scheme], "median": median}))


def load_image() -> tuple[np.ndarray, str]:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012" / "train" / "images" / "slice_00.png"
    if shared.exists():
        import cv2

        return cv2.imread(str(shared), cv2.IMREAD_GRAYSCALE), "ISBI 2012 train slice_00"
    return np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8), "synthetic (uniform noise)"


def measure(base: int, image: np.ndarray, repeats: int) -> list[tuple[str, str, str, int, float | None]]:
    """Rows (scheme, precision, tiles, FLOPs, seconds; None when not installed) for one net width.

    TensorFlow's rows run first and PyTorch's last, so neither library's idle threads share the cores with
    the other's measurement.
    """
    model = UNet(base_filters=base, seed=0)
    four, plan = 4 * forward_flops(TILE, TILE, base_filters=base), Predictor(model).plan(image.shape)
    kunet_tiles = f"{plan.num_tiles} x {plan.input_hw[0]}"
    kunet_flops = plan.num_tiles * forward_flops(*plan.input_hw, base_filters=base)
    rows = []
    for precision in PRECISIONS:
        net = with_precision(model, precision)
        seconds = timed(lambda f=keras_function(net): f(image), repeats, f"base {base} Keras {precision}")
        rows.append(("Keras tf.function", precision, "4 x 572", four, seconds))
        seconds = seconds_in_a_fresh_process("Keras", base, precision, repeats)
        rows.append(("Keras tf.function, filters kept", precision, "4 x 572", four, seconds))
        for scheme, constant, kept in (
            ("kunet predict's default (filters kept)", False, True),
            ("kunet Predictor, filters re-read", False, False),
            ("kunet Predictor, constant weights", True, True),
        ):
            seconds = seconds_in_a_fresh_process("kunet", base, precision, repeats, constant, kept)
            rows.append((scheme, precision, kunet_tiles, kunet_flops, seconds))
    naive = keras_predict(model)
    seconds = timed(lambda: naive(image), repeats, f"base {base} model.predict float32")
    rows.append(("naive: model.predict per tile", "float32", "4 x 572", four, seconds))
    for precision, scheme in zip(PRECISIONS, ("PyTorch", "PyTorch, autocast bf16")):
        seconds = None
        if torch_peer.version() is not None:
            autocast = "float32" if precision == "float32" else "bf16"
            seconds = torch_peer.inference_seconds(image.shape, autocast, repeats, base_filters=base)
        rows.append((scheme, precision, "4 x 572", four, seconds))
    return sorted(rows, key=lambda row: (PRECISIONS.index(row[1]), SCHEMES.index(row[0])))


def agreement(base: int, image: np.ndarray) -> str:
    """Largest difference of the probabilities of the float32 rows with the same weights.

    kunet is compared on the first tile's outputs only: the peers' 572 tiles advance by 388 px, not a multiple of
    16, so from the second tile on their max-pooling grid is shifted against one pass over the image (seams),
    while kunet's tiles keep that grid (kunet.inference); elsewhere the two differ by design, and that is
    printed too.
    """
    model = UNet(base_filters=base, seed=0)
    reference = keras_function(model)(image)
    difference = np.abs(Predictor(model).probabilities(image) - reference)
    parts = [f"kunet {difference[:OUT, :OUT].max():.2g} on the first tile's {OUT}x{OUT} outputs (elsewhere up to "
             f"{difference.max():.2g}: the peers' tiles shift the pooling grid)"]  # fmt: skip
    if torch_peer.version() is not None:
        net = torch_peer.unet(base).eval()
        torch_peer.copy_kunet_weights(model, net)
        parts.append(f"PyTorch {np.abs(torch_peer.predict(net, image) - reference).max():.2g}")
    parts.append(f"model.predict {np.abs(keras_predict(model)(image) - reference).max():.2g}")
    return "max |p - p_Keras tf.function|, float32, same weights: " + ", ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base32", action="store_true", help="also the half-width net (base 32)")
    parser.add_argument("--quick", action="store_true", help="1 repeat and a 1-s peak: a development check")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one row in this process (see above)
    args = parser.parse_args()
    if args.row:
        return row_in_this_process(args.row)
    repeats, peak_seconds = (1, 1.0) if args.quick else (args.repeats, 3.0)
    header("Inference: one 512x512 image, kunet vs plain Keras vs PyTorch")
    torch_version = torch_peer.version()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          + (f"PyTorch {torch_version}" if torch_version else "PyTorch: not installed"))  # fmt: skip
    image, source = load_image()
    print(f"image: {source}; median of {repeats} after a warm-up call\n")
    peaks = {precision: peak_gflops(precision, peak_seconds) for precision in PRECISIONS}
    for precision, figures in peaks.items():
        print(f"practical peak, {precision}: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in figures.items()))
    bases = (64, 32) if args.base32 else (64,)
    for base in bases:
        keras_params = UNet(base_filters=base).count_params()
        torch_params = (f"{sum(p.numel() for p in torch_peer.unet(base).parameters()):,}" if torch_version
                        else "not installed")  # fmt: skip
        print(f"base {base}: parameters kunet {keras_params:,}, PyTorch {torch_params}")

    print("\n| net | scheme | precision | tiles | s/image | TFLOP | GFLOP/s | % conv peak | vs Keras tf.function "
          "| vs the faster Keras row |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    for base in bases:
        rows = measure(base, image, repeats)
        baseline = {p: s for scheme, p, _, _, s in rows if scheme == "Keras tf.function"}
        keras_rows = [(p, s) for scheme, p, _, _, s in rows if scheme.startswith("Keras")]
        strongest = {p: min(s for q, s in keras_rows if q == p) for p in baseline}
        for scheme, precision, tiles, flops, seconds in rows:
            name = f"base {base}" + (" (paper)" if base == 64 else "")
            if seconds is None:
                print(f"| {name} | {scheme} | {precision} | {tiles} | not installed | | | | | |")
                continue
            gflops = flops / seconds / 1e9
            share, ratio = 100 * gflops / peaks[precision]["conv3x3"], baseline[precision] / seconds
            print(f"| {name} | {scheme} | {precision} | {tiles} | {seconds:.2f} | {flops / 1e12:.2f} | {gflops:.0f} | "
                  f"{share:.0f} % | {ratio:.2f}x | {strongest[precision] / seconds:.2f}x |")  # fmt: skip
        notes.append(f"base {base}: {agreement(base, image)}")
    print(
        "\n(vs Keras tf.function: its seconds / the row's seconds, same precision; > 1 is faster. The last column "
        "compares with the faster of the two Keras rows.)"
    )
    print("first call, s: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in FIRST_CALLS.items()))
    print("\n".join(notes))
    footer()


if __name__ == "__main__":
    main()
