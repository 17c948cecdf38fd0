"""The SQLite schema the unit tests run on is the real migrations' (SQLite is also
the embedded default database), and it agrees with the models."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from shared.core.db import make_engine
from shared.core.migrate import alembic_config, upgrade
from shared.models import Base


def test_the_migrated_sqlite_schema_matches_the_models(migrated_sqlite: Path):
    engine = create_engine(f"sqlite:///{migrated_sqlite}")
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert diffs == []
    assert version == "0006"


def test_down_and_up_again_on_sqlite(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'nested' / 'db.sqlite3'}"  # the folder is made
    upgrade(url)
    command.downgrade(alembic_config(url), "0003")
    engine = make_engine(url)
    assert "erasure_requests" not in inspect(engine).get_table_names()
    engine.dispose()
    upgrade(url)
    engine = make_engine(url)
    assert {"uploads", "try_ons", "audit_events", "erasure_requests"} <= set(
        inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()
