"""Alembic migrations; run with `hairfluencer migrate` (shared.core.migrate.upgrade)."""
