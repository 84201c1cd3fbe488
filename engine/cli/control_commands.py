"""`engine resume`, `engine cancel` and `engine reap`: recover, stop, clean up runs."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from datetime import timedelta

from rich.table import Table

from engine.cli import render
from engine.cli.exit_codes import EXIT_OK, EXIT_RUN_FAILED
from engine.cli.inspect_commands import resolve_execution_id
from engine.engine import Engine
from engine.exceptions import InvalidRequestError
from engine.reaper import ReapReport
from engine.records import ExecutionRecord
from engine.settings import Settings
from engine.states import State

# Seconds between reads of the run's state while `engine cancel` waits.
CANCEL_POLL_SECONDS = 0.2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(commands: argparse._SubParsersAction) -> None:
    resume = commands.add_parser(
        "resume", help="continue runs whose worker stopped, from their last state"
    )
    target = resume.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", help="execution id or a unique prefix of it")
    target.add_argument(
        "--all", action="store_true", help="resume every run whose lease is free"
    )
    resume.add_argument("--json", action="store_true", help="print records as JSON")
    resume.set_defaults(handler=resume_command)

    cancel = commands.add_parser(
        "cancel", help="stop a run; its machine is deleted and it ends failed"
    )
    cancel.add_argument("id", help="execution id or a unique prefix of it")
    cancel.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the run to end (default 60; 0 returns at once)",
    )
    cancel.add_argument("--json", action="store_true", help="print the record as JSON")
    cancel.set_defaults(handler=cancel_command)

    reap = commands.add_parser(
        "reap", help="delete this install's machines that no run needs"
    )
    reap.add_argument(
        "--dry-run", action="store_true", help="only print what would be done"
    )
    reap.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="only touch machines at least this old: 90, 90s, 15m, 2h or 1d",
    )
    reap.add_argument("--json", action="store_true", help="print the report as JSON")
    reap.set_defaults(handler=reap_command)


def parse_duration(text: str) -> timedelta:
    """Parse `90`, `90s`, `15m`, `2h` or `1d` into a timedelta."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h or d, e.g. 15m"
        )
    return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])


# -- resume ----------------------------------------------------------------------


def resume_command(args: argparse.Namespace, settings: Settings) -> int:
    records = asyncio.run(_resume(settings, None if args.all else args.id))
    if args.json:
        render.print_json([render.record_with_output(r) for r in records])
    elif not records:
        print("no execution to resume")
    else:
        render.print_list(records)
    if args.all:
        all_done = all(record.state is State.DONE for record in records)
        return EXIT_OK if all_done else EXIT_RUN_FAILED
    record = records[0]
    if record.state is State.DONE:
        return record.exit_code or 0
    return EXIT_RUN_FAILED


async def _resume(settings: Settings, id_text: str | None) -> list[ExecutionRecord]:
    async with Engine(settings) as engine:
        _stop_on_signals(engine)
        if id_text is None:
            return await engine.resume_all()
        execution_id = resolve_execution_id(engine.store, id_text)
        return [await engine.resume(execution_id)]


def _stop_on_signals(engine: Engine) -> None:
    """Make SIGINT and SIGTERM cancel the runs, so their machines are deleted."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, engine.interrupt)


# -- cancel ----------------------------------------------------------------------


def cancel_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.wait < 0:
        raise InvalidRequestError(f"--wait {args.wait:g}: use 0 or more seconds")
    record = asyncio.run(_cancel(settings, args.id, args.wait))
    if args.json:
        render.print_json(record.as_dict())
    elif record.is_terminal:
        error = f" ({record.error_type})" if record.error_type else ""
        print(f"execution {record.id} ended {record.state.value}{error}")
    else:
        print(
            f"cancel requested; execution {record.id} is still {record.state.value}, "
            f"owned by {record.owner}, which stops it at its next heartbeat"
        )
    return EXIT_OK if record.is_terminal else EXIT_RUN_FAILED


async def _cancel(settings: Settings, id_text: str, wait: float) -> ExecutionRecord:
    async with Engine(settings) as engine:
        execution_id = resolve_execution_id(engine.store, id_text)
        record = await engine.cancel(execution_id)
        deadline = time.monotonic() + wait
        while not record.is_terminal and time.monotonic() < deadline:
            await asyncio.sleep(CANCEL_POLL_SECONDS)
            record = engine.get(execution_id)
        return record


# -- reap ------------------------------------------------------------------------


def reap_command(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(_reap(settings, args.dry_run, args.older_than))
    if args.json:
        render.print_json(report.as_dict())
    else:
        print_reap_report(report)
    return EXIT_RUN_FAILED if report.errors else EXIT_OK


async def _reap(
    settings: Settings, dry_run: bool, older_than: timedelta | None
) -> ReapReport:
    async with Engine(settings) as engine:
        return await engine.reap(dry_run=dry_run, older_than=older_than)


def print_reap_report(report: ReapReport) -> None:
    console = render.console()
    for backend, error in report.unavailable.items():
        print(f"engine: warning: skipped backend {backend}: {error}", file=sys.stderr)
    if not report.rows:
        console.print("nothing to reap")
        return
    columns = ["backend", "machine", "execution", "state", "action", "reason"]
    if not report.dry_run:
        columns.append("outcome")
    table = Table(box=None)
    for column in columns:
        table.add_column(column)
    for row in report.rows:
        cells = [
            row.backend,
            row.machine or "-",
            row.execution_id or "-",
            row.state or "-",
            row.action.value,
            row.reason,
        ]
        if not report.dry_run:
            cells.append(row.outcome)
        table.add_row(*cells)
    console.print(table)
