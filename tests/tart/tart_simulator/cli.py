"""Command line of the simulated `tart`: the subcommands and options tart has.

Options that only change how a real VM is wired (graphics, networking, disks) are
accepted and ignored, so a caller written for real tart runs unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import NoReturn

from . import commands
from .errors import TartError, UsageError
from .run import run_vm
from .settings import load_settings
from .storage import tart_home

VERSION = "2.31.0-simulator"
IGNORED_RUN_FLAGS = (
    "--no-graphics",
    "--graphics",
    "--serial",
    "--no-audio",
    "--no-clipboard",
    "--recovery",
    "--vnc",
    "--vnc-experimental",
    "--net-softnet",
    "--net-host",
    "--suspendable",
    "--capture-system-keys",
    "--no-trackpad",
    "--no-pointer",
    "--no-keyboard",
    "--nested",
    "--no-drag-and-drop",
)
IGNORED_RUN_OPTIONS = (
    "--serial-path",
    "--disk",
    "--rosetta",
    "--net-bridged",
    "--net-softnet-allow",
    "--net-softnet-block",
    "--net-softnet-expose",
    "--root-disk-opts",
)


class _Parser(argparse.ArgumentParser):
    """Raise tart's usage error (exit code 64) instead of exiting with 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("tart").strip()
        raise UsageError(message, usage=self.format_usage(), command=command)


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="Run a VM")
    run.add_argument("name")
    run.add_argument(
        "--dir", action="append", default=[], metavar="[name:]path[:options]"
    )
    for flag in IGNORED_RUN_FLAGS:
        run.add_argument(flag, action="store_true")
    for option in IGNORED_RUN_OPTIONS:
        run.add_argument(option, action="append", default=[])


def _add_others(subparsers: argparse._SubParsersAction) -> None:
    clone = subparsers.add_parser("clone", help="Clone a VM")
    clone.add_argument("source_name")
    clone.add_argument("new_name")
    clone.add_argument("--insecure", action="store_true")
    clone.add_argument("--concurrency", type=int, default=4)
    clone.add_argument("--prune-limit", type=int, default=100)
    clone.add_argument("--overwrite", action="store_true")

    ip = subparsers.add_parser("ip", help="Get VM's IP address")
    ip.add_argument("name")
    ip.add_argument("--wait", type=int, default=0)
    ip.add_argument("--resolver", choices=("dhcp", "arp", "agent"), default="dhcp")

    list_parser = subparsers.add_parser("list", help="List created VMs")
    list_parser.add_argument("--source", choices=("local", "oci"))
    list_parser.add_argument("--format", choices=("text", "json"), default="text")
    list_parser.add_argument("-q", "--quiet", action="store_true")

    get = subparsers.add_parser("get", help="Get a VM's configuration")
    get.add_argument("name")
    get.add_argument("--format", choices=("text", "json"), default="text")

    set_parser = subparsers.add_parser("set", help="Modify VM's configuration")
    set_parser.add_argument("name")
    set_parser.add_argument("--cpu", type=int)
    set_parser.add_argument("--memory", type=int, help="memory size in megabytes")
    set_parser.add_argument("--display")
    set_parser.add_argument("--random-mac", action="store_true")
    set_parser.add_argument("--random-serial", action="store_true")
    set_parser.add_argument("--disk-size", type=int, help="disk size in gigabytes")

    stop = subparsers.add_parser("stop", help="Stop a VM")
    stop.add_argument("name")
    stop.add_argument("-t", "--timeout", type=int, default=30, help="seconds")

    delete = subparsers.add_parser("delete", help="Delete a VM")
    delete.add_argument("name", nargs="+")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tart", description="Simulated tart CLI for Linux tests.")
    parser.add_argument("--version", action="version", version=VERSION)
    subparsers = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )
    _add_run(subparsers)
    _add_others(subparsers)
    return parser


def _configure_logging(home: Path) -> None:
    logging.basicConfig(
        filename=home / "sim" / "tart-sim.log",
        level=logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )


def _dispatch(arguments: argparse.Namespace) -> int:
    home = tart_home()
    settings = load_settings(home)
    _configure_logging(home)
    match arguments.command:
        case "run":
            return run_vm(home, settings, arguments.name, arguments.dir)
        case "clone":
            return commands.clone(
                home,
                settings,
                arguments.source_name,
                arguments.new_name,
                arguments.overwrite,
            )
        case "ip":
            return commands.ip(home, arguments.name, arguments.wait, arguments.resolver)
        case "list":
            return commands.list_command(
                home, arguments.source, arguments.format, arguments.quiet
            )
        case "get":
            return commands.get(home, arguments.name, arguments.format)
        case "set":
            return commands.set_command(
                home,
                arguments.name,
                arguments.cpu,
                arguments.memory,
                arguments.random_mac,
                arguments.display,
                arguments.disk_size,
            )
        case "stop":
            return commands.stop(home, arguments.name, arguments.timeout)
        case "delete":
            return commands.delete(home, arguments.name)
    raise UsageError(f"unknown command {arguments.command!r}")


def main(argv: list[str] | None = None) -> int:
    try:
        arguments = build_parser().parse_args(argv)
        if arguments.command == "run" and arguments.graphics and arguments.no_graphics:
            raise UsageError(
                "--graphics and --no-graphics are mutually exclusive", command="run"
            )
        return _dispatch(arguments)
    except TartError as error:
        print(error.render(), file=sys.stderr, flush=True)
        logging.getLogger("tart_simulator").info(
            "exit %d: %s", error.exit_code, error.message
        )
        return error.exit_code
