"""The check that skips Alembic when the database is already at the newest revision."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sqlalchemy import text

from engine.store import Store, migrations

REPO_ROOT = Path(__file__).resolve().parents[1]


def _migration(folder, name: str, header: str) -> None:
    folder.mkdir(exist_ok=True)
    body = "def upgrade():\n    pass\n"
    (folder / name).write_text(textwrap.dedent(header) + "\n" + body)


def test_heads_match_alembic():
    config = migrations.alembic_config("sqlite://")
    assert migrations.script_heads() == {migrations.head_revision(config)}


def test_linear_chain_head(tmp_path):
    _migration(tmp_path, "a.py", 'revision = "a1"\ndown_revision = None\n')
    _migration(tmp_path, "b.py", 'revision: str = "b2"\ndown_revision = "a1"\n')
    assert migrations.script_heads(tmp_path) == {"b2"}


def test_merge_revision_head(tmp_path):
    _migration(tmp_path, "a.py", 'revision = "a"\ndown_revision = None\n')
    _migration(tmp_path, "b.py", 'revision = "b"\ndown_revision = "a"\n')
    _migration(tmp_path, "c.py", 'revision = "c"\ndown_revision = "a"\n')
    _migration(tmp_path, "m.py", 'revision = "m"\ndown_revision = ("b", "c")\n')
    assert migrations.script_heads(tmp_path) == {"m"}


def test_computed_revision_defers_to_alembic(tmp_path):
    _migration(tmp_path, "a.py", "revision = make_id()\ndown_revision = None\n")
    assert migrations.script_heads(tmp_path) is None


def test_older_stamp_is_not_current(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        assert migrations.is_current(store.db)
        with store.db.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'x'"))
        assert not migrations.is_current(store.db)
    finally:
        store.close()


def test_new_database_is_not_current(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'new.db'}", migrate=False)
    try:
        assert migrations.stamped_revisions(store.db) is None
        assert not migrations.is_current(store.db)
    finally:
        store.close()


def test_current_database_skips_alembic_import(tmp_path):
    url = f"sqlite:///{tmp_path / 'current.db'}"
    Store(url).close()
    program = (
        "import sys\n"
        "from engine.store import Store\n"
        f"Store({url!r}).close()\n"
        "print('alembic' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
