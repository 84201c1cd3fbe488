"""`engine run --protocol nanoclaw`: NanoClaw's container protocol on stdin and stdout.

Reads one ContainerInput JSON object on stdin, runs the agent in a fresh machine
and writes each result between NanoClaw's output markers on stdout. Every
failure after the command line was parsed also ends as an error result between
the markers. Progress, logs and the agent's stderr go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import IO

from engine.cli.progress import ProgressObserver
from engine.engine import Engine, validate_upload_dir
from engine.exceptions import EngineError, InvalidRequestError, UsageError
from engine.nanoclaw.errors import InvalidContainerInputError, NanoClawError
from engine.nanoclaw.invocation import Invocation, InvocationOptions, build_invocation
from engine.nanoclaw.protocol import (
    MAX_INPUT_BYTES,
    ContainerInput,
    ContainerOutput,
    parse_container_input,
)
from engine.nanoclaw.session import (
    EXIT_ENGINE_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    FrameWriter,
    NanoClawSession,
)
from engine.settings import Settings

logger = logging.getLogger(__name__)

# stdin beyond the input limit is read and dropped up to this size, so that the
# writer does not fail on a closed pipe before it reads the error result.
MAX_DRAINED_BYTES = 256 * 1024 * 1024
_READ_CHUNK = 1 << 20


def run_nanoclaw(args: argparse.Namespace, settings: Settings) -> int:
    """Run one NanoClaw invocation; return the exit code."""
    writer = FrameWriter(sys.stdout.buffer)
    try:
        invocation = prepare(args, settings, sys.stdin.buffer)
    except (UsageError, NanoClawError) as exc:
        return report_failure(writer, exc, EXIT_INVALID)
    session = NanoClawSession(invocation, writer)
    progress = ProgressObserver(
        show_output=False, show_progress=sys.stderr.isatty() or args.verbose > 0
    )
    try:
        code = asyncio.run(run_with_signals(settings, session, progress))
    except UsageError as exc:
        return report_failure(writer, exc, EXIT_INVALID)
    except EngineError as exc:
        return report_failure(writer, exc, EXIT_ENGINE_FAILED)
    except Exception as exc:
        # NanoClaw reads only the framed results, so even a bug must end as one.
        logger.exception("the NanoClaw run failed", extra={"action": "internal_error"})
        error = EngineError(f"internal error: {type(exc).__name__}: {exc}")
        return report_failure(writer, error, EXIT_ENGINE_FAILED)
    for record in session.records:
        progress.print_summary(record)
    return code


def report_failure(writer: FrameWriter, error: Exception, code: int) -> int:
    """Print `error` on stderr, frame it as an error result, and return `code`."""
    print(f"engine: error: {error}", file=sys.stderr)
    writer.write(ContainerOutput(status="error", result=None, error=str(error)))
    return code


def report_settings_error(args: argparse.Namespace, error: Exception) -> None:
    """Frame an error that came before the handler ran, such as invalid settings."""
    if getattr(args, "protocol", None) == "nanoclaw":
        FrameWriter(sys.stdout.buffer).write(
            ContainerOutput(status="error", result=None, error=str(error))
        )


def prepare(
    args: argparse.Namespace, settings: Settings, stdin: IO[bytes]
) -> Invocation:
    """Read and check the container input and the options; build the invocation."""
    options = options_from_args(args)
    container_input = read_container_input(stdin)
    return build_invocation(container_input, options, settings)


def read_container_input(stdin: IO[bytes]) -> ContainerInput:
    """Read stdin to its end and parse it; raises InvalidContainerInputError."""
    data = stdin.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        total = len(data) + _drain(stdin)
        raise InvalidContainerInputError(
            f"container input is {total} bytes, over the limit of {MAX_INPUT_BYTES} "
            "bytes; send a shorter prompt"
        )
    return parse_container_input(data)


def _drain(stdin: IO[bytes]) -> int:
    drained = 0
    while drained < MAX_DRAINED_BYTES and (chunk := stdin.read(_READ_CHUNK)):
        drained += len(chunk)
    return drained


def options_from_args(args: argparse.Namespace) -> InvocationOptions:
    """Return the invocation options given on the command line, checked."""
    from engine.cli.run_command import parse_share  # imports this module

    if args.input is not None:
        raise InvalidRequestError(
            "--input cannot be used with --protocol nanoclaw: the container input "
            "arrives on stdin"
        )
    if args.json:
        raise InvalidRequestError(
            "--json cannot be used with --protocol nanoclaw: results are framed "
            "between the NanoClaw markers"
        )
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    secrets = {}
    for name in args.secret:
        if name not in os.environ:
            raise InvalidRequestError(
                f"--secret {name}: environment variable {name} is not set"
            )
        secrets[name] = os.environ[name]
    return InvocationOptions(
        group=args.group,
        runtime=args.runtime,
        command=tuple(command),
        backend=args.backend,
        image=args.image,
        timeout=args.timeout,
        cpus=args.cpus,
        memory=args.memory,
        network=args.network,
        shares=tuple(parse_share(text) for text in args.share),
        upload_dir=validate_upload_dir(args.upload) if args.upload else None,
        secrets=secrets,
    )


async def run_with_signals(
    settings: Settings, session: NanoClawSession, progress: ProgressObserver
) -> int:
    """Run the session; SIGINT and SIGTERM stop it and delete its machine."""
    from engine.cli.run_command import Interrupted

    interrupted = Interrupted()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted)
    async with Engine(settings, observers=[progress, session.observer]) as engine:
        await asyncio.sleep(0)  # let a signal that arrived while opening be handled
        if interrupted.received:
            session.writer.write(
                ContainerOutput(
                    status="error", error="interrupted before the run started"
                )
            )
            return EXIT_INTERRUPTED
        interrupted.engine = engine
        return await session.run(engine)
