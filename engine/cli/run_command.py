"""`engine run`: run one command in a fresh machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from engine.cli import render
from engine.cli.exit_codes import EXIT_RUN_FAILED
from engine.cli.progress import ProgressObserver
from engine.engine import Engine, validate_upload_dir
from engine.exceptions import InvalidRequestError
from engine.records import ExecutionRecord, ExecutionRequest
from engine.settings import Settings
from engine.states import State


def register(commands: argparse._SubParsersAction) -> None:
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
    run.add_argument(
        "--resume-policy",
        choices=["fail", "rerun"],
        help="if a resumed run's agent is gone: fail the run or start the agent "
        "again (ENGINE_RESUME_POLICY, default fail)",
    )
    run.add_argument("--json", action="store_true", help="print the record as JSON")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    request = request_from_args(args)
    progress = ProgressObserver(
        show_output=not args.json, show_progress=sys.stderr.isatty() or args.verbose > 0
    )
    record = asyncio.run(run_with_signals(settings, request, [progress]))
    if args.json:
        render.print_json(render.record_with_output(record))
    else:
        progress.print_summary(record)
    if record.state is State.DONE:
        return record.exit_code or 0
    return EXIT_RUN_FAILED


async def run_with_signals(
    settings: Settings, request: ExecutionRequest, observers: list
) -> ExecutionRecord:
    """Run `request`; SIGINT and SIGTERM cancel it, so its machine is deleted."""
    async with Engine(settings, observers=observers) as engine:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, engine.interrupt)
        return await engine.run(request)


def request_from_args(args: argparse.Namespace) -> ExecutionRequest:
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
            resume_policy=args.resume_policy,
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
