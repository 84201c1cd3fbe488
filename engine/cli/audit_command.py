"""`engine audit verify [ID]`: check that no stored transition was changed."""

from __future__ import annotations

import argparse

from engine.audit import ChainReport, verify_store
from engine.cli import render
from engine.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from engine.cli.inspect_commands import resolve_execution_id
from engine.settings import Settings
from engine.store import Store


def register(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser("audit", help="check the stored history")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="recompute the transition hash chains and report the first broken link",
    )
    verify.add_argument(
        "id", nargs="?", help="execution id or a unique prefix (default: all)"
    )
    verify.add_argument(
        "--json", action="store_true", help="print one report per execution as JSON"
    )
    verify.set_defaults(handler=verify_command)


def verify_command(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url)
    try:
        ids = [resolve_execution_id(store, args.id)] if args.id else None
        reports = list(verify_store(store, ids))
    finally:
        store.close()
    if args.json:
        render.print_json([report.as_dict() for report in reports])
    else:
        print_reports(reports)
    return EXIT_OK if all(report.intact for report in reports) else EXIT_FAILURE


def print_reports(reports: list[ChainReport]) -> None:
    console = render.console()
    broken = [report for report in reports if not report.intact]
    for report in broken:
        # Soft wrap keeps each report on one line for grep.
        console.print(f"[red]broken[/] {report.broken}", soft_wrap=True)
    rows = sum(report.rows for report in reports)
    summary = (
        f"{_plural(len(reports), 'execution')}, {_plural(rows, 'transition')} checked"
    )
    if broken:
        console.print(f"{summary}: {len(broken)} broken")
    else:
        console.print(f"{summary}: every chain is intact")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
