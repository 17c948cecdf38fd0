"""Unit-test fixtures: no server of any kind (see tests/unit/harness.py).

`svc` and `settings` here take the place of tests/conftest.py's (which need
PostgreSQL, LocalStack and the fal emulator), so a unit test cannot reach them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.core.config import Settings
from shared.core.migrate import upgrade
from shared.services import Services
from tests.unit.harness import Harness, build_harness
from worker.base import use_services


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file the real Alembic migrations made, once per session."""
    path = tmp_path_factory.mktemp("schema") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def harness(migrated_sqlite: Path, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    db = tmp_path / "hf.sqlite3"
    shutil.copyfile(migrated_sqlite, db)
    h = build_harness(f"sqlite:///{db}")
    # The real download_result, over fal's scripted CDN.
    monkeypatch.setattr("shared.tryons.result_download._media_client", h.media.client)
    use_services(h.svc)  # the worker's tasks, when a test runs them, use these
    try:
        yield h
    finally:
        use_services(None)
        h.svc.engine.dispose()


@pytest.fixture
def svc(harness: Harness) -> Services:
    return harness.svc


@pytest.fixture
def settings(harness: Harness) -> Settings:
    return harness.svc.settings
