"""The `tart` command line, as the Tart backend uses it.

Facts relied on (tart's Sources/tart/VMStorageHelper.swift and Commands/*.swift):
errors go to stderr; exit code 2 means "does not exist", "not running" or
"already running", every other runtime error exits 1, and argument errors exit 64.
`tart clone` silently replaces an existing target, so callers look names up first.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from backends.process import ProcessResult, run_process
from engine.exceptions import BackendError, BackendUnavailableError

EXIT_NOT_FOUND = 2
INSTALL_HINT = "install tart with `brew install cirruslabs/cli/tart`"
LIMIT_MESSAGE = "exceeds the system limit"


class TartError(BackendError):
    """A tart command failed."""

    error_type = "tart_error"


@dataclass(frozen=True, slots=True)
class TartVM:
    name: str
    source: str
    running: bool
    state: str


class TartCLI:
    """Runs tart subcommands; every failure becomes a TartError with the details."""

    def __init__(self, program: str = "tart"):
        self.program = program

    async def run(self, *args: str, ok_codes: Sequence[int] = (0,)) -> ProcessResult:
        argv = [self.program, *args]
        try:
            result = await run_process(argv)
        except FileNotFoundError as exc:
            raise BackendUnavailableError(
                f"{self.program!r} not found on PATH: {INSTALL_HINT}", backend="tart"
            ) from exc
        if result.returncode not in ok_codes:
            raise self.error(result)
        return result

    def error(self, result: ProcessResult) -> TartError:
        # Old tart versions printed errors to stdout, so use it when stderr is empty.
        message = result.stderr_text or result.stdout_text
        return TartError(
            f"`{' '.join(result.argv)}` failed with exit code {result.returncode}: "
            f"{message}",
            backend="tart",
            command=list(result.argv),
            exit_code=result.returncode,
            stderr=message,
        )

    async def list(self) -> list[TartVM]:
        result = await self.run("list", "--format", "json")
        entries: list[dict[str, Any]] = json.loads(result.stdout_text or "[]")
        return [
            TartVM(
                name=entry["Name"],
                source=entry.get("Source", "local"),
                running=bool(entry.get("Running")),
                state=entry.get("State", "running" if entry.get("Running") else ""),
            )
            for entry in entries
        ]

    async def find(self, name: str) -> TartVM | None:
        for vm in await self.list():
            if vm.name == name and vm.source == "local":
                return vm
        return None

    def spawn_run(
        self, name: str, shares: Sequence[str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """Start `tart run NAME --no-graphics` in its own process group.

        tart has no detach mode: the process lives as long as the VM, so it is
        started in a new session that outlives the engine process.
        """
        argv = [self.program, "run", name, "--no-graphics"]
        for share in shares:
            argv += ["--dir", share]
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise BackendUnavailableError(
                f"{self.program!r} not found on PATH: {INSTALL_HINT}", backend="tart"
            ) from exc


def share_argument(guest_name: str, host_path: Path) -> str:
    """Return a `--dir` value: `NAME:PATH`, mounted in macOS guests under
    /Volumes/My Shared Files/NAME."""
    return f"{guest_name}:{host_path}"
