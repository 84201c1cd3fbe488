"""Alembic migrations against the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from alembic import command
from engine.store import Store
from engine.store.migrations import alembic_config
from engine.store.schema import metadata


def _schema_differences(url: str) -> list:
    db = create_engine(url)
    try:
        with db.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True}
            )
            return compare_metadata(context, metadata)
    finally:
        db.dispose()


def _tables(url: str) -> set[str]:
    db = create_engine(url)
    try:
        return set(inspect(db).get_table_names())
    finally:
        db.dispose()


def _upgrade_matches_models_and_downgrades(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert _schema_differences(url) == []
    assert {"executions", "transitions", "resources", "engine_meta"} <= _tables(url)
    command.downgrade(config, "base")
    assert _tables(url) <= {"alembic_version"}


def test_sqlite_upgrade_matches_models(tmp_path):
    _upgrade_matches_models_and_downgrades(f"sqlite:///{tmp_path / 'm.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_matches_models(postgres_url):
    _upgrade_matches_models_and_downgrades(postgres_url)


def test_store_migrates_on_first_use(tmp_path):
    url = f"sqlite:///{tmp_path / 'first.db'}"
    store = Store(url)
    try:
        install_id = store.install_id()
    finally:
        store.close()
    again = Store(url)
    try:
        assert again.install_id() == install_id
    finally:
        again.close()
    assert _schema_differences(url) == []


def test_sqlite_uses_wal(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        with store.db.connect() as connection:
            mode = connection.execute(text("PRAGMA journal_mode")).scalar()
    finally:
        store.close()
    assert mode == "wal"
