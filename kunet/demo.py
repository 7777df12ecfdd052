"""``make demo``: the whole job on data kunet generates itself.

synth -> build-records -> fit -> evaluate on held-out images -> export -> predict with the export.
Every step is skipped when its output is already up to date, so a second run only reports. The
equivalent ``kunet`` commands are printed as the demo goes, so it doubles as a tutorial. The demo reuses
or replaces only outputs kunet made: an existing folder in its way that kunet did not make is refused
before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from kunet.config import load_pipeline
from kunet.runs import RunPaths, read_state

# An installed wheel carries the pipelines as kunet/pipelines/; the source tree has them in pipelines/.
DEFAULT_PIPELINE = next(
    (
        folder / "synthetic-em.toml"
        for folder in (Path(__file__).resolve().parent / "pipelines", Path(__file__).resolve().parents[1] / "pipelines")
        if (folder / "synthetic-em.toml").exists()
    ),
    Path(__file__).resolve().parents[1] / "pipelines" / "synthetic-em.toml",
)
REQUIRED_IOU = 0.9


@dataclass
class DemoSize:
    train_images: int
    test_images: int
    image_size: int
    overrides: tuple[str, ...] = ()


FULL = DemoSize(train_images=24, test_images=6, image_size=512)
# Seconds instead of minutes: for the test that runs every step of the demo.
TINY = DemoSize(
    train_images=4,
    test_images=2,
    image_size=128,
    overrides=(
        "model.base_filters=4",
        "model.depth=2",
        "train.tile_size=124",
        "train.batch_size=2",
        "train.steps_per_epoch=4",
        "train.epochs=2",
        "train.precision=float32",
    ),
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _synthetic(out: Path, count: int, size: int, seed: int, log) -> Path:
    from kunet.synthetic import write_em_dataset

    marker = out / "SYNTHETIC.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if (meta.get("count"), meta.get("seed"), meta.get("parameters", {}).get("size")) == (count, seed, [size, size]):
            log(f"  reuse {out}")
            return out
    log(f"$ kunet synth em --out {out} --count {count} --size {size} --seed {seed}")
    return write_em_dataset(out, count, size, seed, overwrite=out.exists(), log=log)


def _records(config, images: Path, out: Path, extra: list[str], log) -> Path:
    from kunet.config import apply_overrides, pipeline_from_dict
    from kunet.records import build_records, read_manifest

    if (out / "manifest.json").exists():
        manifest = read_manifest(out)
        if manifest["sources"] and Path(manifest["sources"][0]["image"]).parent == images / "images":
            log(f"  reuse {out}")
            return out
    overrides = [f'source.images="{images / "images"}"', f'source.labels="{images / "labels"}"', *extra]
    log(f"$ kunet build-records {config.config_path} --out {out} " + " ".join(f"--set {o}" for o in extra))
    config = pipeline_from_dict(apply_overrides(config.to_dict(), overrides), config.base_dir)
    build_records(config, out=out, overwrite=out.exists(), log=log)
    return out


def _check_outputs(workdir: Path, run_dir: Path) -> None:
    """Fails before any work if a folder the demo would reuse or replace exists but kunet did not make it
    (it holds none of kunet's marker files and is not empty): the demo replaces only its own outputs."""
    from kunet._fs import check_replaceable
    from kunet.evaluation import SCORES
    from kunet.records import MANIFEST
    from kunet.synthetic import MARKER

    run = RunPaths(run_dir)
    outputs = {
        workdir / "data" / "train": [MARKER],
        workdir / "data" / "held-out": [MARKER],
        workdir / "records" / "train": [MANIFEST],
        workdir / "records" / "held-out": [MANIFEST],
        run_dir: [run.config.name, run.lock.name],
        workdir / "evaluation": [SCORES],
    }
    for folder, markers in outputs.items():
        check_replaceable(folder, markers)


def run(
    workdir: Path,
    pipeline: Path | None = None,
    size: DemoSize = FULL,
    export_root: Path | None = None,
    log=print,
) -> dict:
    """Runs (or resumes) the demo in ``workdir``; returns the held-out scores and the paths written."""
    from kunet.predict_files import predict_files
    from kunet.segmenter import Segmenter

    started = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = Path(pipeline or DEFAULT_PIPELINE)
    config = load_pipeline(pipeline, list(size.overrides))
    export_root = Path(export_root) if export_root else Path("saved_models")
    paths = RunPaths(workdir / "runs" / config.name)
    _check_outputs(workdir, paths.root)

    log("1. synthetic data (EM-like slices, ISBI label convention: 0 = membrane, 255 = cell)")
    train_images = _synthetic(workdir / "data" / "train", size.train_images, size.image_size, 0, log)
    test_images = _synthetic(workdir / "data" / "held-out", size.test_images, size.image_size, 1, log)

    log("2. records (weight maps of eq. 2)")
    train_records = _records(config, train_images, workdir / "records" / "train", ["records.val_fraction=0.2"], log)
    test_ids = ",".join(f'"slice_{i:02d}"' for i in range(size.test_images))
    test_records = _records(
        config, test_images, workdir / "records" / "held-out", [f"records.val_ids=[{test_ids}]"], log
    )

    log("3. training")
    _train(config, pipeline, paths, train_records, log)

    log("4. evaluation on held-out images the net never saw")
    mean = _evaluate(pipeline, paths, test_records, workdir / "evaluation", log)

    log("5. export for TensorFlow Serving")
    export_dir = _export(config.name, paths, export_root, log)

    log("6. prediction with the exported SavedModel")
    results = workdir / "results"
    log(f"$ kunet predict {export_dir} {test_images / 'images'} --out {results}")
    predict_files(Segmenter(export_dir), [test_images / "images"], results)

    passed = mean["iou"] > REQUIRED_IOU
    _summary(workdir, paths.root, export_dir, results, log)
    log(
        f"held-out foreground IoU {mean['iou']:.4f} "
        + ("> 0.9: OK" if passed else f"<= {REQUIRED_IOU}: below the demo's target")
        + f" ({(time.monotonic() - started) / 60:.1f} min)"
    )
    return {"scores": mean, "passed": passed, "export": export_dir, "run": paths.root, "results": results}


def _train(config, pipeline: Path, paths: RunPaths, records: Path, log) -> None:
    from kunet.train import Trainer

    state = read_state(paths)
    if state.get("status") == "completed":
        log(f"  reuse {paths.root} (completed at step {state['step']})")
        return
    resume = paths.config.exists()  # a run of the demo's, stopped part-way
    log(f"$ kunet fit {pipeline} --run-dir {paths.root} --records {records}" + (" (resuming)" if resume else ""))
    Trainer(config, paths.root, records, resume=resume, log=log).fit()


def _evaluate(pipeline: Path, paths: RunPaths, records: Path, out: Path, log) -> dict:
    from kunet.evaluation import evaluate
    from kunet.segmenter import Segmenter

    log(f"$ kunet evaluate {paths.root} {pipeline} --records {records} --out {out}")
    mean = evaluate(Segmenter(paths.root), records, "val", out)["mean"]
    log(
        f"  foreground IoU {mean['iou']:.4f}, pixel error {mean['pixel_error']:.4f}, "
        f"Rand error {mean['rand_error']:.4f}, foreground-restricted Rand error {mean['adapted_rand_error']:.4f}"
    )
    return mean


def _export(name: str, paths: RunPaths, export_root: Path, log) -> Path:
    """The latest export if it holds this run's best model, else a new version."""
    from kunet.serving.export import export

    model_root = export_root / name
    versions = sorted((p for p in model_root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) if (
        model_root.is_dir()
    ) else []  # fmt: skip
    latest = versions[-1] if versions else None
    if latest is not None and _sha256(latest / "assets.extra" / "unet.keras") == _sha256(paths.best_model):
        log(f"  reuse {latest}")
        return latest
    log(f"$ kunet export {paths.root} --name {name} --base-dir {export_root}")
    return export(paths.root, name, export_root, log=log)


def _summary(workdir: Path, run_dir: Path, export_dir: Path, results: Path, log) -> None:
    log("")
    log(f"data:        {workdir / 'data'}")
    log(f"records:     {workdir / 'records'}")
    log(f"run:         {run_dir} (training.png, history.csv, tensorboard/)")
    log(f"evaluation:  {workdir / 'evaluation'} (scores.json, overlays)")
    log(f"export:      {export_dir}")
    log(f"predictions: {results}")
