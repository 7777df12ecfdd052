"""Documents that name tests stay in step with the suite."""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_every_case_in_reliability_md_names_a_test_that_exists():
    text = (REPO_ROOT / "docs" / "RELIABILITY.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| category")]
    cases = [row for row in rows if not set(row) <= set("|- ")]
    references = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(cases) >= 40 and len(references) >= len(cases)
    for row in cases:
        assert "`tests/" in row, f"a case without a test: {row}"
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not re.search(rf"^def {name}\(", (REPO_ROOT / path).read_text(), re.MULTILINE)
    ]
    assert not missing, f"RELIABILITY.md names tests that do not exist: {missing}"
