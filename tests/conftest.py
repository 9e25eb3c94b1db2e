"""Shared test fixtures. Real sample files live in tests/data (see its README for provenance)."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Folder of real ultrasound samples shipped with the tests."""
    return TEST_DATA
