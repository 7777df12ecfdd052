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
