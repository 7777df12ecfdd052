"""Shared fixtures: paths to the real datasets (tests skip cleanly where ../shared is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KUNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture
def isbi_dir() -> Path:
    return _require(SHARED_DATA / "isbi2012")


@pytest.fixture
def hela_dir() -> Path:
    return _require(SHARED_DATA / "DIC-C2DH-HeLa")


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


def tiny_pipeline_dict(records_dir: str | None = None) -> dict:
    """A pipeline small enough to train in seconds: depth-2 net, 124 -> 84 tiles."""
    return {
        "name": "tiny",
        "source": {"kind": "folders", "images": "images", "labels": "labels"},
        "records": {"shards": 2, "val_fraction": 0.25, **({"out": records_dir} if records_dir else {})},
        "model": {"base_filters": 8, "depth": 2},
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


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    """Records of 8 small blob images (6 train, 2 val) and the pipeline config that built them."""
    import cv2
    import numpy as np

    from kunet.config import pipeline_from_dict
    from kunet.records import build_records

    root = tmp_path_factory.mktemp("tiny")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):
        image, label = blob_image(rng)
        cv2.imwrite(str(root / "images" / f"b{index}.png"), image)
        cv2.imwrite(str(root / "labels" / f"b{index}.png"), label)
    config = pipeline_from_dict(tiny_pipeline_dict(str(root / "records")), base_dir=root)
    build_records(config)
    return config, root / "records"
