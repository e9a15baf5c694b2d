"""Shared fixtures. Tests are CPU-only and need no network."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PUBLISHED_RUNS = REPO.parent / "shared" / "data" / "published_runs.csv"


@pytest.fixture(scope="session")
def published_runs() -> Path:
    if not PUBLISHED_RUNS.exists():
        pytest.fail(f"{PUBLISHED_RUNS} is missing: the checkout must sit beside shared/")
    return PUBLISHED_RUNS
