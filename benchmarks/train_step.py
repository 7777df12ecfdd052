"""Seconds per training step: kunet's real step against ``keras.Model.fit`` on the same net, precision and loss.

Measured in one process, the sides interleaved (blocks of ``--steps`` steps in turn, ``--repeats`` times; the
first step of every block is not timed, so each side starts warm and neither profits from the other's caches):

* **kunet step**: what ``Trainer.fit`` runs per step (``Trainer.step_for_benchmark``: the compiled step with its
  strategy.run/reduce, the float() sync, the counters, progress and callbacks), fed one fixed batch in memory;
* **model.fit**: ``keras.Model.fit`` on the same net and batch (``from_tensors(batch).repeat()``), the same
  loss (``SparseCategoricalCrossentropy(from_logits=True)`` with the weight map as ``sample_weight``), SGD
  with momentum 0.99 (``--optimizer adam``: Adam, as the pipelines train), Keras's own optimizer, no XLA;
  per step = the time between two ``on_train_batch_end`` calls. kunet's step uses the same algorithm with
  fused updates (``kunet.optimizers``); ``--fused-fit`` adds model.fit given that optimizer too, which shows
  how much of a difference is the optimizer's kernel;
* with ``--legacy``: the step as kunet ran it before issue 21 (``benchmarks/legacy_step.py``);
* **Trainer.fit**: the whole loop fed by the real host augmentation pipeline (which shares the cores), and
  the pipeline alone in tiles/s;
* the PyTorch peer (``torch_peer.py``) and the conv/matmul peak (``peak.py``) when those modules are present.

For the paper's net (572 -> 388, batch 1) and with ``--base32`` the base-32 net, in float32 and
mixed_bfloat16 (emulated on a CPU without native bf16). GFLOP/s count training as 3x the forward FLOPs.
Figures move with whatever else runs on the machine: the ratios, measured side by side, are the result.

Usage: ``.venv/bin/python benchmarks/train_step.py [--base32] [--probe] [--legacy] [--steps 3] [--repeats 3]
[--precisions float32,mixed_bfloat16] [--records DIR] [--skip-trainer] [--optimizer adam] [--fused-fit]``.
``--probe`` adds a base-2 net on 188-px tiles, whose step is nearly all per-step overhead (where kunet and
model.fit differ at all).
(records default: built on the fly from ../shared/data/isbi2012, else from synthetic EM images).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import timing  # noqa: E402

from kunet.builders import build_model  # noqa: E402
from kunet.config import pipeline_from_dict  # noqa: E402
from kunet.optimizers import FusedAdam, FusedSGD  # noqa: E402
from kunet.pipeline import training_dataset  # noqa: E402
from kunet.sizes import forward_flops  # noqa: E402
from kunet.system_info import cpu_features, has_native_bf16  # noqa: E402
from kunet.train import Trainer  # noqa: E402

try:  # written on another branch; the rows appear once it is merged
    import torch_peer
except ImportError:
    torch_peer = None
try:
    import peak
except ImportError:
    peak = None

REPO = Path(__file__).resolve().parents[1]
TILE = 572


def bench_config(
    base_filters: int, precision: str, tile: int = TILE, steps_per_epoch: int = 1000, optimizer: str = "sgd"
):
    return pipeline_from_dict({
        "name": "bench", "model": {"base_filters": base_filters},
        "train": {"tile_size": tile, "batch_size": 1, "precision": precision, "optimizer": optimizer, "momentum": 0.99,
                  "learning_rate": 1e-4, "schedule": "constant", "steps_per_epoch": steps_per_epoch,
                  "shuffle_buffer": 32},
    })  # fmt: skip


class StepTimes(keras.callbacks.Callback):
    """Time between consecutive ``on_train_batch_end`` calls (one whole loop iteration), and each batch's loss."""

    def __init__(self):
        super().__init__()
        self.ends, self.losses = [], []

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())
        self.losses.append(float((logs or {}).get("loss", np.nan)))

    def intervals(self) -> list[float]:
        return list(np.diff(self.ends))


def step_side(step):
    """Blocks of calls of ``step`` (a callable returning the loss), timed between consecutive step ends."""

    def block(steps: int) -> tuple[list[float], float]:
        ends, losses = [], []
        for _ in range(steps):
            losses.append(step())
            ends.append(time.perf_counter())
        return list(np.diff(ends)), losses[0]

    return block


def kunet_sides(config, records, batch, workdir, legacy: bool) -> dict:
    def trainer(name):
        return Trainer(config, workdir / name, records, progress="lines", log=lambda line: None)

    sides = {"kunet step": step_side(trainer("kunet-run").step_for_benchmark(batch))}
    if legacy:
        from legacy_step import legacy_step

        sides["kunet step before issue 21"] = step_side(legacy_step(trainer("legacy-run"), batch))
    return sides


def model_fit_side(config, batch, fused: bool = False):
    """``keras.Model.fit`` with Keras's optimizer, or with ``fused`` kunet's (:mod:`kunet.optimizers`)."""
    model = build_model(config)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train = config.train
    if train.optimizer == "sgd":
        optimizer = (FusedSGD if fused else keras.optimizers.SGD)(train.learning_rate, momentum=train.momentum)
    else:
        optimizer = (FusedAdam if fused else keras.optimizers.Adam)(train.learning_rate)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=config.train.jit_compile)
    dataset = tf.data.Dataset.from_tensors(tuple(batch)).repeat()  # (x, y, sample_weight)
    timer = StepTimes()

    def block(steps: int) -> tuple[list[float], float]:
        timer.losses = []
        model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
        return timer.intervals(), timer.losses[0]

    return block


def trainer_fit_seconds(config, records, run_dir, steps: int) -> float:
    """Median s/step of a whole ``Trainer.fit`` fed by the host augmentation pipeline (the first 2 steps untimed;
    one epoch, so no validation or checkpoint falls between timed steps)."""
    timer = StepTimes()
    config.train.steps_per_epoch = steps + 2
    trainer = Trainer(config, run_dir, records, progress="none", log=lambda line: None, callbacks=[timer])
    trainer.fit(steps=steps + 2)
    return float(np.median(timer.intervals()[1:]))


def pipeline_tiles_per_second(records: Path, seconds: float = 8.0) -> float:
    iterator = iter(training_dataset(bench_config(64, "float32"), records, batch_size=1, placement="host"))
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


def interleaved(sides: dict, steps: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median s/step per side over ``repeats`` rounds of one block per side, and each side's first loss."""
    times = {name: [] for name in sides}
    first_loss = {name: block(2)[1] for name, block in sides.items()}  # trace, compile, warm up
    for _ in range(repeats):
        for name, block in sides.items():
            times[name] += block(steps + 1)[0]  # n + 1 step ends give n whole steps
    return {name: float(np.median(values)) for name, values in times.items()}, first_loss


def measure(net, precision, records, workdir, args) -> dict[str, float]:
    """Median s/step of every side for one net and precision."""
    label, base, tile = net
    config = bench_config(base, precision, tile, optimizer=args.optimizer)
    batch = next(iter(training_dataset(config, records, batch_size=1, placement="host")))
    sides = kunet_sides(config, records, batch, workdir, args.legacy)
    sides["model.fit"] = model_fit_side(config, batch)
    if args.fused_fit:
        sides["model.fit, kunet's fused optimizer"] = model_fit_side(config, batch, fused=True)
    seconds, losses = interleaved(sides, args.steps, args.repeats)
    print(f"{label}, {precision}: first-step loss " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()), flush=True)
    del sides
    gc.collect()
    if not args.skip_trainer:
        run_dir = workdir / f"fit-{base}-{tile}-{precision}"
        seconds["Trainer.fit, host augmentation"] = trainer_fit_seconds(config, records, run_dir, args.steps * 2)
    if torch_peer and torch_peer.version():
        name = f"PyTorch {torch_peer.version()}"
        steps, warmup = (args.steps * 2, 2) if args.peer_steps is None else (args.peer_steps, 1)
        if precision != "float32" and not has_native_bf16(cpu_features()) and args.peer_steps is None:
            steps, warmup = 1, 1  # emulated bf16: PyTorch's autocast step is ~13x its float32 one on AVX2 alone
        name += f" ({steps} step{'s' * (steps > 1)})" if steps < args.steps * 2 else ""
        seconds[name] = torch_peer.train_step_seconds(tile, 1, precision, steps, base_filters=base, warmup=warmup)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
    parser.add_argument("--repeats", type=int, default=3, help="blocks per side, interleaved")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--base32", action="store_true", help="also the base-32 net")
    parser.add_argument("--base32-only", action="store_true", help="the base-32 net without the paper's")
    parser.add_argument("--probe", action="store_true", help="also a base-2 net on 188 tiles: per-step overhead")
    parser.add_argument("--legacy", action="store_true", help="also the step kunet ran before issue 21")
    parser.add_argument("--records", type=Path)
    parser.add_argument(
        "--peer-steps",
        type=int,
        help="PyTorch's timed steps (default 2 x --steps; 1 for bf16 on a CPU without native bf16)",
    )
    parser.add_argument("--skip-trainer", action="store_true", help="no Trainer.fit and pipeline rows")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd: the paper's (momentum 0.99)")
    parser.add_argument(
        "--fused-fit", action="store_true", help="also model.fit given kunet's fused optimizer (kunet.optimizers)"
    )
    args = parser.parse_args()
    title = "training step: kunet vs keras.Model.fit"
    timing.header(title)
    torch_version = torch_peer.version() if torch_peer else None
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, PyTorch {torch_version or 'not installed'}")
    print(f"optimizer: {args.optimizer} (model.fit: Keras's; kunet step: kunet.optimizers' fused update)")
    nets = [("paper (base 64)", 64, TILE)] * (not args.base32_only)
    nets += [("base 32", 32, TILE)] * (args.base32 or args.base32_only)
    nets += [("overhead probe (base 2, tile 188)", 2, 188)] * args.probe
    precisions = args.precisions.split(",")
    peaks = {precision: peak.peak_gflops(precision) for precision in precisions} if peak else {}
    workdir = Path(tempfile.mkdtemp(prefix="kunet-bench-"))
    rows = []
    try:
        records = args.records or default_records(workdir)
        for net in nets:
            flops = 3 * forward_flops(net[2], net[2], base_filters=net[1])
            for precision in precisions:
                seconds = measure(net, precision, records, workdir, args)
                for name, value in seconds.items():
                    rows.append((net[0], precision, name, value, flops / value / 1e9, seconds["model.fit"], peaks))
                    print(
                        f"{net[0]}, {precision}, {name}: {value:.3f} s/step, "
                        f"{value / seconds['model.fit']:.3f}x model.fit",
                        flush=True,
                    )  # a long run's partial result
        rate = None if args.skip_trainer else pipeline_tiles_per_second(records)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    if rate is not None:
        fastest = min(row[3] for row in rows if "probe" not in row[0])
        print(f"\nhost pipeline (read, parse, decode, cache, tile {TILE}, augment, normalise, batch): {rate:.1f} "
              f"tiles/s alone, {rate * fastest:.0f}x what the fastest step consumes")  # fmt: skip
    for precision, values in peaks.items():
        print(f"peak {precision}: " + ", ".join(f"{key} {value:.0f} GFLOP/s" for key, value in values.items()))
    timing.footer()


def print_table(rows) -> None:
    print("\n| net | precision | what | s/step (median) | GFLOP/s | % of conv peak | vs model.fit |")
    print("|---|---|---|---|---|---|---|")
    for net, precision, name, seconds, gflops, fit_seconds, peaks in rows:
        conv = [value for key, value in peaks.get(precision, {}).items() if key.startswith("conv")]
        share = f"{100 * gflops / max(conv):.0f} %" if conv else "-"
        ratio = seconds / fit_seconds
        print(f"| {net} | {precision} | {name} | {seconds:.3f} | {gflops:.0f} | {share} | {ratio:.3f}x |")


if __name__ == "__main__":
    main()
