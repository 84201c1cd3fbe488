"""The `engine` command line: runs agent commands in fresh, isolated machines."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engine.cli.exit_codes import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_FAILED,
    EXIT_USAGE,
)
from engine.cli.logconfig import configure_logging
from engine.exceptions import EngineError, UsageError
from engine.settings import load_settings

# The module that adds each command with `register(subparsers)`. Only the
# chosen command's module is imported, because the others import Rich and
# OpenTelemetry, which took about 80 ms of every `engine run`.
COMMAND_MODULES = {
    "run": "engine.cli.run_command",
    "list": "engine.cli.inspect_commands",
    "show": "engine.cli.inspect_commands",
    "resume": "engine.cli.control_commands",
    "cancel": "engine.cli.control_commands",
    "reap": "engine.cli.control_commands",
    "trace": "engine.cli.trace_command",
    "audit": "engine.cli.audit_command",
    "db": "engine.cli.db_command",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"engine: error: {message} (see `engine --help`)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Build the parser for `argv`: with only its command, or all for help."""
    parser = _Parser(prog="engine", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: debug)"
    )
    commands = parser.add_subparsers(dest="command_name", required=True)
    for name in _modules_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(name).register(commands)
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


def _modules_for(argv: list[str]) -> list[str]:
    """Return the modules of the command that `argv` names, or all of them.

    The options before the command take no values, so the first argument that
    is not an option names the command.
    """
    everything = list(dict.fromkeys(COMMAND_MODULES.values()))
    for argument in argv:
        if argument in ("-h", "--help"):
            return everything
        if not argument.startswith("-"):
            module = COMMAND_MODULES.get(argument)
            return [module] if module else everything
    return everything


def main(argv: list[str] | None = None) -> int:
    try:
        # Imports the chosen command's module, which can take a while.
        parser = build_parser(argv)
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    args = parser.parse_args(argv)
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
