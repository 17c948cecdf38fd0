"""Alembic migrations; run with `hairfluencer migrate` (shared.migrate.upgrade)."""
