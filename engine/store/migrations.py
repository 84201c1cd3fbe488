"""Apply the Alembic migrations that live in the repository's `alembic/` folder."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from alembic import command
from engine.exceptions import MigrationError

logger = logging.getLogger(__name__)

# NOTE: the migrations are found beside the package, so the engine must be
# installed from a checkout (`pip install -e .`), as the README does.
SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"


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
    """Upgrade the schema to the newest revision; return whether anything ran."""
    config = alembic_config(url)
    head = head_revision(config)
    if current_revision(engine) == head:
        return False
    logger.info("migrating database", extra={"action": "migrate", "revision": head})
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except Exception as exc:
        # Another process may have migrated the same database a moment earlier.
        if current_revision(engine) == head:
            return False
        raise MigrationError(f"database migration to {head} failed: {exc}") from exc
    return True
