"""The plain run docs/api.md promises: `schemathesis run --checks all` from the
repository root (so that schemathesis.toml applies) against `hairfluencer dev`, its
real rate limits and quotas included, as an app developer would run it. Every phase:
examples, coverage, fuzzing, and stateful along the document's links.

The stack runs on a fresh PostgreSQL database (`hairfluencer dev --database-url`,
migrated by it, dropped afterwards), not on its SQLite default: PostgreSQL refuses
what SQLite stores (a NUL in text, a lone surrogate), so this is where such a
difference shows. SQLite stays covered by the unit, e2e and client tests.

Its own `.ci/run` step (minutes: the run keeps to the API's rate). The seed is fixed
so that CI draws the same cases each time; run it by hand without `--seed` to draw
new ones."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.e2e.test_dev_stack import dev_stack

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
SEED = "20261201"
BUDGET_SECONDS = 720


@contextmanager
def fresh_postgres_database() -> Iterator[tuple[str, str]]:
    """An empty PostgreSQL database for the block: (its SQLAlchemy URL, its name);
    dropped afterwards, whatever still holds connections to it."""
    name = f"hf_conformance_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}", name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _row_counts(database: str) -> dict[str, int]:
    admin_base = PG_ADMIN_URL.rsplit("/", 1)[0]
    with psycopg.connect(f"{admin_base}/{database}") as conn:
        migrated = conn.execute("SELECT count(*) FROM alembic_version").fetchone()
        uploads = conn.execute("SELECT count(*) FROM uploads").fetchone()
    return {"alembic_version": migrated[0] if migrated else 0,
            "uploads": uploads[0] if uploads else 0}


@pytest.mark.timeout(BUDGET_SECONDS + 180)  # the stack's start and stop besides the run
def test_a_plain_schemathesis_run_against_the_running_system_passes(tmp_path):
    with fresh_postgres_database() as (database_url, database), \
            dev_stack(tmp_path, "--database-url", database_url) as system:
        run = subprocess.run(
            [SCHEMATHESIS, "run", f"{system['base']}/openapi.json", "--checks", "all",
             "-H", f"Authorization: Bearer {system['token']}", "--seed", SEED,
             "--no-color"],
            cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_SECONDS)
        rows = _row_counts(database)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 1000, summary
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    # The run went to PostgreSQL: `hairfluencer dev` migrated the empty database and
    # the stateful phase's presigns landed there (not in a SQLite file beside it).
    assert rows["alembic_version"] == 1 and rows["uploads"] > 0, rows
    assert not (tmp_path / "hairfluencer.sqlite3").exists()
