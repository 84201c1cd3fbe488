"""`engine run`: run one command in a fresh machine."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from engine.cli import nanoclaw_command, render
from engine.cli.exit_codes import EXIT_INTERRUPTED, EXIT_RUN_FAILED
from engine.cli.progress import ProgressObserver
from engine.engine import Engine, validate_upload_dir
from engine.exceptions import InvalidRequestError
from engine.records import ExecutionRecord, ExecutionRequest, ShareRequest
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
        "--share",
        action="append",
        default=[],
        metavar="NAME=DIR[:rw]",
        help="mount host folder DIR into the machine as NAME (read-only unless :rw)",
    )
    run.add_argument(
        "--resume-policy",
        choices=["fail", "rerun"],
        help="if a resumed run's agent is gone: fail the run or start the agent "
        "again (ENGINE_RESUME_POLICY, default fail)",
    )
    run.add_argument("--json", action="store_true", help="print the record as JSON")
    run.add_argument(
        "--protocol",
        choices=["nanoclaw"],
        help="read NanoClaw's container input JSON on stdin and frame the results "
        "on stdout (see docs/nanoclaw.md)",
    )
    run.add_argument(
        "--runtime",
        help="agent runtime for --protocol nanoclaw: claude, codex, opencode or "
        "command (AGENT_RUNTIME)",
    )
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    run.set_defaults(
        handler=run_command, report_error=nanoclaw_command.report_settings_error
    )


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.protocol == "nanoclaw":
        return nanoclaw_command.run_nanoclaw(args, settings)
    if args.runtime is not None:
        raise InvalidRequestError("--runtime needs --protocol nanoclaw")
    request = request_from_args(args)
    progress = ProgressObserver(
        show_output=not args.json, show_progress=sys.stderr.isatty() or args.verbose > 0
    )
    backend = request.backend or settings.container_runtime
    if backend.strip().lower() == "instant":
        progress.warn(
            "the instant backend is a test double: "
            "nothing runs and no output is produced"
        )
    interrupted = Interrupted()
    record = asyncio.run(run_with_signals(settings, request, [progress], interrupted))
    if record is None:
        return EXIT_INTERRUPTED
    if args.json:
        render.print_json(render.record_with_output(record))
    else:
        progress.print_summary(record)
    if record.state is State.DONE:
        return record.exit_code or 0
    if interrupted.received and record.error_type == "cancelled":
        return EXIT_INTERRUPTED
    return EXIT_RUN_FAILED


class Interrupted:
    """Whether SIGINT or SIGTERM arrived during `engine run`."""

    def __init__(self) -> None:
        self.received = False
        self.engine: Engine | None = None

    def __call__(self) -> None:
        self.received = True
        if self.engine is not None:
            self.engine.interrupt()


async def run_with_signals(
    settings: Settings,
    request: ExecutionRequest,
    observers: list,
    interrupted: Interrupted,
) -> ExecutionRecord | None:
    """Run `request`; SIGINT and SIGTERM cancel it, so its machine is deleted.

    The handlers are installed before the engine opens its database, so an
    early signal is never lost. Returns None when it arrived before submission.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted)
    async with Engine(settings, observers=observers) as engine:
        await asyncio.sleep(0)  # let a signal that arrived while opening be handled
        if interrupted.received:
            return None
        interrupted.engine = engine
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
            shares=[parse_share(text) for text in args.share],
            resume_policy=args.resume_policy,
        )
    except ValueError as exc:
        raise InvalidRequestError(render.validation_message(exc)) from exc


def parse_share(text: str) -> ShareRequest:
    name, separator, path = text.partition("=")
    if not separator or not name or not path:
        raise InvalidRequestError(
            f"--share {text!r} is invalid: use NAME=DIR or NAME=DIR:rw"
        )
    read_only = not path.endswith(":rw")
    return ShareRequest(
        name=name, host_path=Path(path.removesuffix(":rw")), read_only=read_only
    )


def _read_input(source: str | None) -> bytes | None:
    if source is None:
        return None
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if path.is_dir():
        raise InvalidRequestError(f"--input {source!r} is a folder; give a file")
    if not path.is_file():
        raise InvalidRequestError(f"--input file {source!r} does not exist")
    return path.read_bytes()
