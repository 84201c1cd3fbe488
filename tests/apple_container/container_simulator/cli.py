"""Command line of the simulated `container`: dispatch and the system service.

Every command except `system start` and `system status` fails the way the real
CLI does while its API server is stopped, until `container system start` runs.
"""

from __future__ import annotations

import sys

from . import commands, create
from . import docker_state as state
from .errors import SimulatorError, system_stopped

VERSION = "container CLI version 0.0.0 (build: simulator)"
USAGE = """OVERVIEW: A container platform for macOS (simulated on Docker)

USAGE: container [--debug] <subcommand>

SIMULATED SUBCOMMANDS:
  create, start, stop, delete (rm), list (ls), exec, image inspect,
  system start, system stop, system status
"""
CONTAINER_COMMANDS = {
    "create": create.create,
    "start": commands.start,
    "stop": commands.stop,
    "delete": commands.delete,
    "rm": commands.delete,
    "list": commands.list_containers,
    "ls": commands.list_containers,
    "exec": commands.exec_process,
}
# Real subcommands that the simulator does not implement.
NOT_SIMULATED = {
    "run",
    "build",
    "copy",
    "cp",
    "export",
    "inspect",
    "kill",
    "logs",
    "prune",
    "stats",
    "network",
    "volume",
    "registry",
    "builder",
    "machine",
    "commit",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    while args and args[0] == "--debug":
        args.pop(0)
    try:
        return _dispatch(args)
    except SimulatorError as exc:
        print(exc.render(), file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:
        print(f'Error: internalError: "{exc}"', file=sys.stderr)
        return 1


def _dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if args[0] == "--version":
        print(VERSION)
        return 0
    command, rest = args[0], args[1:]
    if command == "system":
        return _system(rest)
    if command in NOT_SIMULATED:
        raise SimulatorError(
            f"the simulator does not implement `container {command}`", 64
        )
    if command not in CONTAINER_COMMANDS and command not in ("image", "i"):
        # The CLI looks unknown subcommands up as plugins.
        raise SimulatorError(
            f"Plugin 'container-{command}' not found.\n\n"
            "- If system services are not running, start them with: "
            "container system start"
        )
    _require_system()
    if command in ("image", "i"):
        if rest[:1] != ["inspect"]:
            raise SimulatorError(
                "the simulator implements only `container image inspect`", 64
            )
        return commands.image_inspect(rest[1:])
    return CONTAINER_COMMANDS[command](rest)


def _require_system() -> None:
    if not state.system_marker().exists():
        raise system_stopped()


def _system(args: list[str]) -> int:
    action = args[0] if args else ""
    if action == "start":
        marker = state.system_marker()
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print("Verifying apiserver is running...")
        return 0
    if action == "stop":
        for name in state.container_names():
            state.docker("stop", "--time", "5", name)
        state.system_marker().unlink(missing_ok=True)
        return 0
    if action == "status":
        if state.system_marker().exists():
            print("apiserver is running")
            return 0
        # Not from a source: the wording of the stopped status.
        print("apiserver is not running and not registered with launchd")
        return 1
    raise SimulatorError(
        "the simulator implements only `container system start|stop|status`", 64
    )
