"""Persistence of executions, transitions and resources (SQLAlchemy 2, Alembic)."""

from engine.store.store import Store, as_utc, utcnow

__all__ = ["Store", "as_utc", "utcnow"]
