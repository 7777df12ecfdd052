"""Test helpers as plain functions (imported by test modules; the fixtures in conftest.py use them too)."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KUNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def blob_image(rng, size: int = 96):
    """A small gray image of bright disks on a dark noisy background, with its 0/255 label."""
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size]
    label = np.zeros((size, size), np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(6, 14)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    image = np.clip(60 + 0.6 * label + rng.normal(0, 20, (size, size)), 0, 255).astype(np.uint8)
    return image, label


def write_blob_folders(root: Path, count: int = 8) -> Path:
    """``root/images`` and ``root/labels``: ``count`` blob images (seed 0) and their labels, as PNG."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, label = blob_image(rng)
        cv2.imwrite(str(root / "images" / f"b{index}.png"), image)
        cv2.imwrite(str(root / "labels" / f"b{index}.png"), label)
    return root


def tiny_pipeline_dict(records_dir: str | None = None) -> dict:
    """A pipeline small enough to train in seconds: depth-2 net, 124 -> 84 tiles."""
    return {
        "name": "tiny",
        "source": {"kind": "folders", "images": "images", "labels": "labels"},
        "records": {"shards": 2, "val_fraction": 0.25, **({"out": records_dir} if records_dir else {})},
        "model": {"base_filters": 8, "depth": 2},
        # Without XLA the sampler starts seconds sooner; the XLA path is tested in test_augment, the demo and
        # test_pipeline's check that both give the same tiles.
        "augment": {"jit_compile": False},
        "train": {
            "tile_size": 124,
            "batch_size": 2,
            "optimizer": "adam",
            "learning_rate": 0.001,
            "precision": "float32",
            "steps_per_epoch": 6,
            "epochs": 2,
            "checkpoint_every_steps": 3,
        },
    }


def write_tiny_toml(path: Path, records: Path, **train) -> Path:
    """The tiny pipeline as a TOML file reading ``records``, with ``train`` settings changed."""
    data = tiny_pipeline_dict(str(records))
    data["train"].update(train)
    lines = [f'name = "{data["name"]}"']
    for section in ("source", "records", "model", "augment", "train"):
        lines.append(f"[{section}]")
        for key, value in data[section].items():
            lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def kunet_fit_command(config_path: Path, run_dir: Path, records: Path, *extra: str) -> list[str]:
    """``kunet fit`` as a subprocess command line (the installed CLI, run by this interpreter)."""
    return [sys.executable, "-m", "kunet_cli.main", "fit", str(config_path), "--run-dir", str(run_dir),
            "--records", str(records), *extra]  # fmt: skip


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for the workers of a local cluster)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
