"""Shared pytest fixtures: the ../shared fixtures directory and a session-wide tiny archive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repository (read-only reference data); absent in a user's clone.
SHARED = Path(os.environ.get("EOFORGE_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """Path of ../shared/fixtures; skips the test cleanly when it is not there."""
    if not FIXTURES.is_dir():
        pytest.skip(f"../shared/fixtures not found at {FIXTURES} (only present in the dev/CI tree)")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny`` offline archive generated once per test session (seed 0)."""
    from pipelines.archive.create import create_archive

    root = tmp_path_factory.mktemp("archive-tiny")
    create_archive(root, preset="tiny", seed=0)
    return root
