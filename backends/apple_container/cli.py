"""The `container` command line, as the apple-container backend uses it.

Facts relied on (apple/container `Sources/ContainerCommands/` and the older
`Sources/CLI/`, read at 2025 and 2026 commits):

- A failed command prints `Error: CODE: "MESSAGE"` to stderr, with
  ` (cause: "...")` when there is a cause, and exits 1; usage errors exit 64.
  `exec` exits with the exit status of its process.
- A missing container gives `notFound: "container with ID NAME not found"`.
  Releases older than pull request 878 (November 2025) exit 0 for `stop` and
  `delete` of a missing container.
- While the API server (a launchd service) is stopped, every command fails with
  `XPC connection error` and a hint to run `container system start`.
- `list --format json` prints every container. 2026 releases write
  `{"id", "configuration", "status": {"state", "networks", "startedDate"}}`
  with ISO 8601 dates; 2025 releases write `{"configuration", "status":
  "running", "networks"}` with dates in seconds since 2001-01-01.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from backends.process import ProcessResult, kill_process_group, run_process
from engine.exceptions import BackendError, BackendUnavailableError

BACKEND_NAME = "apple-container"
INSTALL_HINT = (
    "install Apple's container tool with `brew install --cask container` or the "
    "signed installer from https://github.com/apple/container/releases, then run "
    "`container system start`"
)
# Text of the CLI's error when its API server is not running.
SYSTEM_STOPPED_MARKERS = ("XPC connection error", "`container system start`")
# Swift's reference date: the default JSON encoding of a date counts from here.
SWIFT_REFERENCE_DATE = datetime(2001, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerEntry:
    """One container of `container list --format json`, in either JSON shape."""

    name: str
    labels: dict[str, str]
    state: str
    address: str | None = None
    created_at: datetime | None = None


class ContainerCLI:
    """Runs `container` subcommands and turns failures into engine exceptions."""

    def __init__(self, program: str = "container"):
        self.program = program

    async def run(
        self,
        *args: str,
        check: bool = True,
        execution_id: str | None = None,
        resource: str | None = None,
        stdin_file: IO[bytes] | None = None,
    ) -> ProcessResult:
        """Run `container ARGS`; raise BackendError on failure if `check`.

        A stopped system service always raises BackendUnavailableError.
        """
        argv = [self.program, *args]
        if stdin_file is None:
            try:
                result = await run_process(argv)
            except FileNotFoundError as exc:
                raise self.missing_program() from exc
        else:
            result = await self._communicate(list(args), stdin_file)
        self.raise_if_stopped(result, execution_id, resource)
        if check and result.returncode != 0:
            raise self.error(result, None, execution_id, resource)
        return result

    async def spawn(
        self, args: list[str], *, stdout: Any, stdin: Any = asyncio.subprocess.DEVNULL
    ) -> asyncio.subprocess.Process:
        """Start `container ARGS` in its own session, with stderr piped."""
        try:
            return await asyncio.create_subprocess_exec(
                self.program,
                *args,
                stdin=stdin,
                stdout=stdout,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise self.missing_program() from exc

    async def run_to_file(self, args: list[str], target: IO[bytes]) -> ProcessResult:
        """Run `container ARGS` with its stdout written to `target`."""
        process = await self.spawn(args, stdout=target)
        try:
            _, stderr = await process.communicate()
        finally:
            await kill_process_group(process)
        argv = (self.program, *args)
        result = ProcessResult(argv, process.returncode or 0, b"", stderr)
        self.raise_if_stopped(result, None, None)
        return result

    async def _communicate(
        self, args: list[str], stdin_file: IO[bytes]
    ) -> ProcessResult:
        process = await self.spawn(
            args, stdin=stdin_file, stdout=asyncio.subprocess.PIPE
        )
        try:
            stdout, stderr = await process.communicate()
        finally:
            await kill_process_group(process)
        argv = (self.program, *args)
        return ProcessResult(argv, process.returncode or 0, stdout, stderr)

    async def list(self) -> list[ContainerEntry]:
        result = await self.run("list", "--all", "--format", "json")
        try:
            data = json.loads(result.stdout_text or "[]")
        except json.JSONDecodeError as exc:
            raise self.error(result, "the output is not JSON", None, None) from exc
        return [parse_entry(item) for item in data if isinstance(item, dict)]

    async def find(self, name: str) -> ContainerEntry | None:
        for entry in await self.list():
            if entry.name == name:
                return entry
        return None

    def missing_program(self) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"{self.program!r} not found on PATH: {INSTALL_HINT}",
            backend=BACKEND_NAME,
        )

    def raise_if_stopped(
        self, result: ProcessResult, execution_id: str | None, resource: str | None
    ) -> None:
        stderr = result.stderr_text
        if result.returncode == 0 or not any(
            marker in stderr for marker in SYSTEM_STOPPED_MARKERS
        ):
            return
        raise BackendUnavailableError(
            "the container system service is not running: run "
            f"`{self.program} system start` ({stderr})",
            **error_fields(execution_id, resource, result),
        )

    def error(
        self,
        result: ProcessResult,
        summary: str | None,
        execution_id: str | None,
        resource: str | None,
        error_class: type[BackendError] = BackendError,
    ) -> BackendError:
        """Build an error that names the command, its exit code and its stderr."""
        prefix = f"{summary}: " if summary else ""
        return error_class(
            f"{prefix}`{short_command(result.argv)}` failed with exit code "
            f"{result.returncode}: {result.stderr_text or '(no error output)'}",
            **error_fields(execution_id, resource, result),
        )


def parse_entry(item: dict[str, Any]) -> ContainerEntry:
    """Read one object of `container list --format json`, of either shape.

    2025 releases record no creation date, so `created_at` falls back to the
    start date there, and is None for a container that is not running.
    """
    configuration = item.get("configuration") or {}
    status = item.get("status")
    if isinstance(status, dict):
        state = str(status.get("state", "unknown"))
        networks = status.get("networks") or []
        started = status.get("startedDate")
    else:
        state = str(status or "unknown")
        networks = item.get("networks") or []
        started = item.get("startedDate")
    labels = configuration.get("labels") or {}
    return ContainerEntry(
        name=str(configuration.get("id") or item.get("id") or ""),
        labels={str(key): str(value) for key, value in labels.items()},
        state=state,
        address=_first_address(networks),
        created_at=_parse_date(configuration.get("creationDate"))
        or _parse_date(started),
    )


def _first_address(networks: list[Any]) -> str | None:
    # 2026 releases name the field ipv4Address; 2025 releases store a CIDR in address.
    for network in networks:
        if not isinstance(network, dict):
            continue
        address = network.get("ipv4Address") or network.get("address")
        if address:
            return str(address).split("/")[0]
    return None


def _parse_date(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return SWIFT_REFERENCE_DATE + timedelta(seconds=value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def short_command(argv: tuple[str, ...]) -> str:
    """Return the CLI, subcommand and container name, without agent arguments."""
    text = " ".join(argv[:4])
    return text + (" ..." if len(argv) > 4 else "")


def error_fields(
    execution_id: str | None, resource: str | None, result: ProcessResult
) -> dict[str, Any]:
    return {
        "backend": BACKEND_NAME,
        "execution_id": execution_id,
        "resource": resource,
        "command": list(result.argv),
        "exit_code": result.returncode,
        "stderr": result.stderr_text,
    }
