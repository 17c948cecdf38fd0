"""A throw-away PostgreSQL database per benchmark run."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg

from shared.core.migrate import upgrade

PG_ADMIN_URL = os.environ.get("HF_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_url(sa_url: str) -> str:
    """The libpq URL of a SQLAlchemy `postgresql+psycopg://` URL."""
    return sa_url.replace("postgresql+psycopg://", "postgresql://")


@contextlib.contextmanager
def fresh_database(prefix: str, admin_url: str = PG_ADMIN_URL) -> Iterator[str]:
    """A new database, migrated to head, dropped afterwards (also on failure)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{base}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"dropped database {name}", flush=True)
