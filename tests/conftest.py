"""Shared fixtures: paths to the real datasets (tests skip cleanly where ../shared is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import SHARED_DATA, tiny_pipeline_dict, write_blob_folders


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


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory):
    """Records of 8 small blob images (6 train, 2 val) and the pipeline config that built them."""
    from kunet.config import pipeline_from_dict
    from kunet.records import build_records

    root = write_blob_folders(tmp_path_factory.mktemp("tiny"))
    config = pipeline_from_dict(tiny_pipeline_dict(str(root / "records")), base_dir=root)
    build_records(config)
    return config, root / "records"


@pytest.fixture(scope="session")
def trained_tiny_run(tiny_records, tmp_path_factory):
    """A tiny run trained for 12 steps, shared by every test that only reads it (copy it to change it)."""
    from kunet.train import Trainer

    config, records = tiny_records
    run = tmp_path_factory.mktemp("trained") / "run"
    Trainer(config, run, records, log=lambda *args, **kwargs: None).fit(steps=12)
    return run
