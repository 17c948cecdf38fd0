"""The Alembic migrations build exactly the schema the models describe (on
PostgreSQL, the production database), and go down and up again cleanly."""

from __future__ import annotations

import uuid

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from shared.core.migrate import alembic_config, upgrade
from shared.models import Base
from tests.conftest import PG_ADMIN_URL


def test_migrations_match_the_models(pg_url):
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == []


def test_downgrade_and_upgrade_again():
    name = f"hf_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    try:
        upgrade(url)
        command.downgrade(alembic_config(url), "0003")
        upgrade(url)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
