"""`engine db upgrade`: apply the database migrations."""

from __future__ import annotations

import argparse

from engine.cli.exit_codes import EXIT_OK
from engine.settings import Settings
from engine.store import Store, migrations


def register(commands: argparse._SubParsersAction) -> None:
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply database migrations")
    upgrade.set_defaults(handler=upgrade_command)


def upgrade_command(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url, migrate=False)
    try:
        changed = migrations.upgrade(store.db, settings.database_url)
    finally:
        store.close()
    print("database migrated" if changed else "database is up to date")
    return EXIT_OK
