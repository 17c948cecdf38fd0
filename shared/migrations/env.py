"""Alembic environment: the URL comes from the caller (shared.core.migrate), never from a file."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import pool

from shared.core.db import make_engine
from shared.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection: Any) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
