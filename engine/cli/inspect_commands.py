"""`engine list` and `engine show`: read executions from the store."""

from __future__ import annotations

import argparse

from engine.cli import render
from engine.cli.exit_codes import EXIT_OK
from engine.exceptions import ExecutionNotFoundError, InvalidRequestError
from engine.settings import Settings
from engine.states import State
from engine.store import Store


def register(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="list executions, newest first")
    listing.add_argument("--state", choices=[s.value for s in State])
    listing.add_argument(
        "--limit", type=_positive_int, default=50, help="max runs shown (default 50)"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_command)

    show = commands.add_parser("show", help="show one execution and its transitions")
    show.add_argument("id", help="execution id or a unique prefix of it")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_command)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def list_command(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url)
    try:
        states = [State(args.state)] if args.state else None
        records = store.list_executions(states=states, limit=args.limit)
    finally:
        store.close()
    if args.json:
        render.print_json([record.as_dict() for record in records])
    else:
        render.print_list(records)
    return EXIT_OK


def resolve_execution_id(store: Store, text: str) -> str:
    """Return the full id that `text` names, or raise naming the problem."""
    if not text.strip():
        raise InvalidRequestError("the execution id is empty: `engine list` shows ids")
    matches = store.find_executions(text)
    if len(matches) > 1:
        raise InvalidRequestError(
            f"execution id prefix {text!r} is ambiguous: "
            f"{', '.join(sorted(matches)[:5])}; type more of the id"
        )
    if not matches:
        raise ExecutionNotFoundError(text)
    return matches[0]


def show_command(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url)
    try:
        execution_id = resolve_execution_id(store, args.id)
        record = store.get_execution(execution_id, with_transitions=True)
    finally:
        store.close()
    if args.json:
        render.print_json(record.as_dict())
    else:
        render.print_record(record)
    return EXIT_OK
