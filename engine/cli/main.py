"""The `engine` command line: runs agent commands in fresh, isolated machines."""

from __future__ import annotations

import argparse
import os
import sys

from engine.cli import (
    audit_command,
    control_commands,
    db_command,
    inspect_commands,
    run_command,
    trace_command,
)
from engine.cli.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
)
from engine.cli.logconfig import configure_logging
from engine.exceptions import EngineError, UsageError
from engine.settings import load_settings

# Each module adds its subcommands with `register(subparsers)`.
COMMAND_MODULES = (
    run_command,
    inspect_commands,
    control_commands,
    trace_command,
    audit_command,
    db_command,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"engine: error: {message} (see `engine --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="engine", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: debug)"
    )
    commands = parser.add_subparsers(dest="command_name", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    for subparser in commands.choices.values():
        # Also accept -v after the subcommand, as in `engine run -v -- ...`.
        subparser.add_argument(
            "-v",
            "--verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="log more (-vv: debug)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = load_settings()
        return args.handler(args, settings)
    except UsageError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        # A command may also report the error in its own output format.
        report_error = getattr(args, "report_error", None)
        if report_error is not None:
            report_error(args, exc)
        return EXIT_USAGE
    except EngineError as exc:
        print(f"engine: error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`engine list | head -1`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
