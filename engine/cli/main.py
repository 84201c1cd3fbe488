"""The `engine` command line.

Exit codes: `engine run` exits with the agent's own exit code when the run is
done; EXIT_RUN_FAILED when the engine could not carry the run through;
EXIT_USAGE for invalid input or settings; EXIT_INTERRUPTED on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from engine.cli import render
from engine.cli.logconfig import configure_logging
from engine.cli.progress import ProgressObserver
from engine.engine import Engine, validate_upload_dir
from engine.exceptions import (
    EngineError,
    ExecutionNotFoundError,
    InvalidRequestError,
    UsageError,
)
from engine.records import ExecutionRequest
from engine.settings import Settings, load_settings
from engine.states import State
from engine.store import Store, migrations

EXIT_OK = 0
EXIT_USAGE = 2
# Chosen to match `docker run`, which exits 125 when Docker itself fails.
EXIT_RUN_FAILED = 125
EXIT_INTERRUPTED = 130

logger = logging.getLogger("engine.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"engine: error: {message} (see `engine --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: debug)"
    )
    commands = parser.add_subparsers(dest="command_name", required=True)

    run = commands.add_parser("run", help="run a command in a fresh machine")
    run.add_argument("--backend", help="docker, tart, ... or auto (CONTAINER_RUNTIME)")
    run.add_argument("--image", help="machine image (ENGINE_DOCKER_IMAGE)")
    run.add_argument(
        "--upload", type=Path, help="folder copied to input/ in the working directory"
    )
    run.add_argument(
        "--input", help="file given to the command as stdin; - reads this stdin"
    )
    run.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME",
        help="pass environment variable NAME into the machine (value never in argv)",
    )
    run.add_argument("--timeout", type=float, help="whole-run timeout in seconds")
    run.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    run.add_argument("--memory", help="memory limit, e.g. 512m")
    run.add_argument("--network", help="network mode (default none)")
    run.add_argument("--group", help="group name stored with the run")
    run.add_argument("--json", action="store_true", help="print the record as JSON")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    listing = commands.add_parser("list", help="list executions, newest first")
    listing.add_argument("--state", choices=[s.value for s in State])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")

    show = commands.add_parser("show", help="show one execution and its transitions")
    show.add_argument("id", help="execution id or a unique prefix of it")
    show.add_argument("--json", action="store_true")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply database migrations")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "run": _run,
        "list": _list,
        "show": _show,
        "db": _db,
    }
    try:
        settings = load_settings()
        return handlers[args.command_name](args, settings)
    except UsageError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EngineError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace, settings: Settings) -> int:
    request = _request_from_args(args)
    progress = ProgressObserver(
        show_output=not args.json, show_progress=sys.stderr.isatty() or args.verbose > 0
    )
    record = asyncio.run(_run_async(settings, request, progress))
    if args.json:
        render.print_json(render.record_with_output(record))
    else:
        progress.print_summary(record)
    if record.state is State.DONE:
        return record.exit_code or 0
    return EXIT_RUN_FAILED


async def _run_async(
    settings: Settings, request: ExecutionRequest, progress: ProgressObserver
):
    async with Engine(settings, observers=[progress]) as engine:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, engine.interrupt)
        return await engine.run(request)


def _request_from_args(args: argparse.Namespace) -> ExecutionRequest:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidRequestError("no command given: use `engine run -- CMD ARGS...`")
    upload = validate_upload_dir(args.upload) if args.upload is not None else None
    secrets = {}
    for name in args.secret:
        if name not in os.environ:
            raise InvalidRequestError(
                f"--secret {name}: environment variable {name} is not set"
            )
        secrets[name] = os.environ[name]
    try:
        return ExecutionRequest(
            command=command,
            backend=args.backend,
            image=args.image,
            upload_dir=upload,
            stdin=_read_input(args.input),
            secrets=secrets,
            group=args.group,
            timeout=args.timeout,
            cpus=args.cpus,
            memory=args.memory,
            network=args.network,
        )
    except ValueError as exc:
        raise InvalidRequestError(render.validation_message(exc)) from exc


def _read_input(source: str | None) -> bytes | None:
    if source is None:
        return None
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise InvalidRequestError(f"--input file {source!r} does not exist")
    return path.read_bytes()


def _open_store(settings: Settings) -> Store:
    return Store(settings.database_url)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
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


def _show(args: argparse.Namespace, settings: Settings) -> int:
    store = _open_store(settings)
    try:
        matches = store.find_executions(args.id)
        if len(matches) != 1:
            if len(matches) > 1:
                raise InvalidRequestError(
                    f"execution id prefix {args.id!r} is ambiguous: "
                    f"{', '.join(sorted(matches)[:5])}; type more of the id"
                )
            raise ExecutionNotFoundError(args.id)
        record = store.get_execution(matches[0], with_transitions=True)
    finally:
        store.close()
    if args.json:
        render.print_json(record.as_dict())
    else:
        render.print_record(record)
    return EXIT_OK


def _db(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url, migrate=False)
    try:
        changed = migrations.upgrade(store.db, settings.database_url)
    finally:
        store.close()
    print("database migrated" if changed else "database is up to date")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
