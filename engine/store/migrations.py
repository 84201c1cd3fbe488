"""Apply the Alembic migrations that live in the repository's `alembic/` folder."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from alembic import command
from engine.exceptions import MigrationError

logger = logging.getLogger(__name__)

# NOTE: the migrations are found beside the package, so the engine must be
# installed from a checkout (`pip install -e .`), as the README does.
SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"

# Any fixed number works; it only has to be the same in every engine process.
ADVISORY_LOCK_KEY = 0x656E67696E65


def alembic_config(url: str) -> Config:
    """Return an Alembic config for `url` that needs no alembic.ini."""
    if not (SCRIPT_LOCATION / "env.py").exists():
        raise MigrationError(
            f"migrations not found at {SCRIPT_LOCATION}: install the engine from "
            "its repository with `pip install -e .`"
        )
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision(config: Config) -> str | None:
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, url: str) -> bool:
    """Upgrade the schema to the newest revision; return whether anything ran.

    Processes that start together on a new database take turns: a file lock
    beside a SQLite database, an advisory lock on PostgreSQL.
    """
    config = alembic_config(url)
    head = head_revision(config)
    if current_revision(engine) == head:
        return False
    with _sqlite_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        if MigrationContext.configure(connection).get_current_revision() == head:
            return False
        logger.info("migrating database", extra={"action": "migrate", "revision": head})
        config.attributes["connection"] = connection
        try:
            command.upgrade(config, "head")
        except Exception as exc:
            raise MigrationError(f"database migration to {head} failed: {exc}") from exc
    return True


@contextlib.contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
