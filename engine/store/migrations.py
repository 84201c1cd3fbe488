"""Apply the Alembic migrations that live in the repository's `alembic/` folder.

Alembic is imported only when the database is not at the newest revision:
importing it (and Mako, which it loads) took about 100 ms of every `engine run`
while the check itself needs one query. `is_current` reads the revision ids
from the migration files and the `alembic_version` table directly.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from engine.exceptions import MigrationError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

# NOTE: the migrations are found beside the package, so the engine must be
# installed from a checkout (`pip install -e .`), as the README does.
SCRIPT_LOCATION = Path(__file__).resolve().parents[2] / "alembic"

# Any fixed number works; it only has to be the same in every engine process.
ADVISORY_LOCK_KEY = 0x656E67696E65

# `revision = "0001"` or `down_revision: str | None = None` in a migration file.
_REVISION_LINE = re.compile(
    r"^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", re.MULTILINE
)


def alembic_config(url: str) -> Config:
    """Return an Alembic config for `url` that needs no alembic.ini."""
    from alembic.config import Config

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
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def script_heads(versions: Path | None = None) -> frozenset[str] | None:
    """Return the head revisions of the migration files, without Alembic.

    Returns None when a file does not assign `revision` and `down_revision` as
    plain literals on one line each; callers then ask Alembic.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (versions or SCRIPT_LOCATION / "versions").glob("*.py"):
        found = _revision_of(path.read_text(encoding="utf-8"))
        if found is None:
            return None
        revision, down = found
        revisions.add(revision)
        parents.update(down)
    heads = revisions - parents
    return frozenset(heads) if heads else None


def _revision_of(source: str) -> tuple[str, tuple[str, ...]] | None:
    values: dict[str, object] = {}
    for match in _REVISION_LINE.finditer(source):
        try:
            values[match[1]] = ast.literal_eval(match[2])
        except (ValueError, SyntaxError):
            return None
    revision = values.get("revision")
    down = values.get("down_revision", ())
    if down is None:
        down = ()
    elif isinstance(down, str):
        down = (down,)
    if not isinstance(revision, str) or not isinstance(down, tuple | list):
        return None
    if not all(isinstance(parent, str) for parent in down):
        return None
    return revision, tuple(down)


def stamped_revisions(engine: Engine) -> frozenset[str] | None:
    """Return the revisions in the `alembic_version` table, or None if unreadable."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT version_num FROM alembic_version"))
            return frozenset(row[0] for row in rows)
    except SQLAlchemyError:
        # No such table yet: a new database.
        return None


def is_current(engine: Engine) -> bool:
    """Return whether the database is stamped with exactly the newest revisions."""
    heads = script_heads()
    return heads is not None and stamped_revisions(engine) == heads


def upgrade(engine: Engine, url: str) -> bool:
    """Upgrade the schema to the newest revision; return whether anything ran.

    Processes that start together on a new database take turns: a file lock
    beside a SQLite database, an advisory lock on PostgreSQL.
    """
    if is_current(engine):
        return False
    from alembic.runtime.migration import MigrationContext

    from alembic import command

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
