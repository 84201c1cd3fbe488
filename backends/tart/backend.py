"""The Tart backend: one macOS VM per execution, through the tart CLI and SSH.

cloning     tart list (a clone target is never replaced), tart clone BASE NAME,
            tart set NAME --random-mac [--cpu N] [--memory MB]
booting     tart run NAME --no-graphics in its own session, waiting for a slot
            when TART_MAX_VMS VMs run or macOS reports its VM limit
ip-ready    tart ip NAME --wait N --resolver R, then SSH (host key pinned)
uploading   the bundle as one tar stream into `tar -x` over SSH
executing   start.sh detaches the agent; follow.sh streams its output, and a
            dropped connection is reopened and followed from the last offset
collecting  SFTP, regular files only
deleting    tart stop, tart delete (retried while "is running"), then the
            recorded `tart run` process is killed if still alive
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import asyncssh

from backends import guest
from backends.base import AgentState, AgentStatus, Machine, MachineSpec, OutputSink
from backends.base import Resource as MachineResource
from backends.tart import ssh
from backends.tart.cli import (
    EXIT_NOT_FOUND,
    INSTALL_HINT,
    LIMIT_MESSAGE,
    TartCLI,
    TartError,
)
from engine.bundle import Bundle, bundle_bytes
from engine.exceptions import (
    BackendError,
    BackendUnavailableError,
    ImageNotFoundError,
    MachineDeleteError,
    UploadError,
)

logger = logging.getLogger(__name__)

SLOT_POLL_SECONDS = 1.0
BOOT_POLL_SECONDS = 0.1
# How long `tart run` may take to show the VM as running before it counts as failed.
BOOT_CONFIRM_SECONDS = 30.0
IP_WAIT_SECONDS = 2
DELETE_ATTEMPTS = 5
CONNECTION_ERRORS = (OSError, asyncssh.Error, TimeoutError)


@dataclasses.dataclass(frozen=True, slots=True)
class TartOptions:
    base_image: str = "tart_nanoclaw_base"
    username: str = "admin"
    password: str | None = None
    key_path: Path | None = None
    ssh_timeout: float = 60.0
    max_vms: int = 2
    resolver: str = "dhcp"
    program: str = "tart"

    def __repr__(self) -> str:
        return (
            f"TartOptions(base_image={self.base_image!r}, username={self.username!r})"
        )


class TartBackend:
    name: ClassVar[str] = "tart"

    def __init__(self, options: TartOptions):
        self.options = options
        self.cli = TartCLI(options.program)
        self.credentials = ssh.SSHCredentials(
            options.username, options.password, options.key_path
        )
        self._runs: dict[str, subprocess.Popen[bytes]] = {}
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._slot_lock = asyncio.Lock()

    def check_available(self) -> None:
        if shutil.which(self.options.program) is None:
            raise BackendUnavailableError(
                f"{self.options.program!r} not found on PATH: {INSTALL_HINT}",
                backend=self.name,
            )

    # -- cloning and booting ----------------------------------------------------

    async def create(self, spec: MachineSpec) -> Machine:
        base = spec.image or self.options.base_image
        if await self.cli.find(spec.name) is None:
            if await self.cli.find(base) is None:
                raise ImageNotFoundError(
                    f"tart base image {base!r} not found: prepare it with "
                    "scripts/prepare-tart-base.sh or set TART_BASE_IMAGE",
                    backend=self.name,
                    execution_id=spec.execution_id,
                    resource=spec.name,
                )
            await self.cli.run("clone", base, spec.name)
        settings = ["set", spec.name, "--random-mac"]
        if spec.cpus is not None:
            settings += ["--cpu", str(math.ceil(spec.cpus))]
        if spec.memory is not None:
            settings += ["--memory", str(memory_megabytes(spec.memory))]
        await self.cli.run(*settings)
        return Machine(spec.name, spec, details={"base_image": base})

    async def start(self, machine: Machine) -> Machine:
        vm = await self.cli.find(machine.name)
        if vm is None:
            raise BackendError(
                f"VM {machine.name} does not exist; it was deleted outside the engine",
                backend=self.name,
                execution_id=machine.spec.execution_id,
                resource=machine.name,
            )
        if vm.running:
            return machine
        while True:
            pid = await self._start_in_free_slot(machine)
            if pid is not None:
                return machine.with_details(run_pid=pid)
            logger.info(
                "waiting for a free VM slot",
                extra={"action": "vm_slot_wait", "resource": machine.name},
            )
            await asyncio.sleep(SLOT_POLL_SECONDS)

    async def _start_in_free_slot(self, machine: Machine) -> int | None:
        """Start the VM if fewer than TART_MAX_VMS run; return its pid, or None."""
        async with self._slot_lock, _host_slot_lock():
            running = [vm for vm in await self.cli.list() if vm.running]
            if len(running) >= self.options.max_vms:
                return None
            process = self._spawn(machine)
            booted = await self._confirm_running(machine, process)
        if booted:
            return process.pid
        log = _log_tail(self._log_path(machine))
        if LIMIT_MESSAGE in log:
            # Another program's VMs count toward the macOS limit too: wait.
            return None
        raise TartError(
            f"`tart run {machine.name}` exited with code {process.returncode}: {log}",
            backend=self.name,
            execution_id=machine.spec.execution_id,
            resource=machine.name,
            exit_code=process.returncode,
            stderr=log,
        )

    def _spawn(self, machine: Machine) -> subprocess.Popen[bytes]:
        shares = [
            f"{share.name}:{share.host_path}{':ro' if share.read_only else ''}"
            for share in machine.spec.shares
        ]
        log_path = self._log_path(machine)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = self.cli.spawn_run(machine.name, shares, log)
        self._runs[machine.name] = process
        return process

    async def _confirm_running(
        self, machine: Machine, process: subprocess.Popen[bytes]
    ) -> bool:
        deadline = time.monotonic() + BOOT_CONFIRM_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            vm = await self.cli.find(machine.name)
            if vm is not None and vm.running:
                return True
            await asyncio.sleep(BOOT_POLL_SECONDS)
        return process.poll() is None

    def _log_path(self, machine: Machine) -> Path:
        run_dir = machine.spec.run_dir or Path.cwd()
        return run_dir / "tart-run.log"

    # -- ip-ready -----------------------------------------------------------------

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine:
        deadline = time.monotonic() + min(timeout, self.options.ssh_timeout)
        address = await self._address(machine, deadline)
        connection, host_key = await ssh.connect_until_ready(
            address, self.credentials, machine.details.get("host_key"), deadline
        )
        ready_at = time.time()
        self._connections[machine.name] = connection
        home = await ssh.run_command(connection, "pwd")
        guest_root = f"{home.stdout.decode().strip()}/engine-run"
        ready = machine.with_details(
            host_key=host_key, guest_root=guest_root, ready_at=ready_at
        )
        return dataclasses.replace(ready, address=address)

    async def _address(self, machine: Machine, deadline: float) -> str:
        last = ""
        while time.monotonic() < deadline:
            wait = max(1, min(IP_WAIT_SECONDS, int(deadline - time.monotonic())))
            result = await self.cli.run(
                "ip",
                machine.name,
                "--wait",
                str(wait),
                "--resolver",
                self.options.resolver,
                ok_codes=(0, 1),
            )
            if result.returncode == 0 and result.stdout_text:
                return result.stdout_text.split()[0]
            last = result.stderr_text or result.stdout_text
            if "no IP address found" not in last:
                raise self.cli.error(result)
        raise ssh.SSHUnreachableError(
            f"VM {machine.name} got no IP address before TART_SSH_TIMEOUT "
            f"({self.options.ssh_timeout:g} s): {last}; with bridged networking set "
            "the resolver to arp",
            backend=self.name,
            execution_id=machine.spec.execution_id,
            resource=machine.name,
        )

    async def _connection(self, machine: Machine) -> asyncssh.SSHClientConnection:
        connection = self._connections.get(machine.name)
        if connection is not None and not connection.is_closed():
            return connection
        if machine.address is None:
            raise BackendError(
                f"VM {machine.name} has no recorded address",
                backend=self.name,
                resource=machine.name,
            )
        deadline = time.monotonic() + self.options.ssh_timeout
        connection, _ = await ssh.connect_until_ready(
            machine.address, self.credentials, machine.details.get("host_key"), deadline
        )
        self._connections[machine.name] = connection
        return connection

    def _drop_connection(self, machine: Machine) -> None:
        connection = self._connections.pop(machine.name, None)
        if connection is not None:
            connection.close()

    # -- uploading and executing --------------------------------------------------

    async def upload(self, machine: Machine, bundle: Bundle) -> None:
        root = shlex.quote(_guest_root(machine))
        command = f"mkdir -p {root} && tar -x -f - -C {root}"
        connection = await self._connection(machine)
        result = await ssh.run_command(connection, command, input=bundle_bytes(bundle))
        if result.exit_status != 0:
            raise UploadError(
                f"tar upload into {machine.name} failed with exit code "
                f"{result.exit_status}: {_text(result.stderr)}",
                backend=self.name,
                execution_id=machine.spec.execution_id,
                resource=machine.name,
            )

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        argv = guest.start_argv(_guest_root(machine), command)
        result = await ssh.run_command(
            await self._connection(machine), shlex.join(argv)
        )
        if result.exit_status != 0:
            raise BackendError(
                f"starting the agent in {machine.name} failed: {_text(result.stderr)}",
                backend=self.name,
                execution_id=machine.spec.execution_id,
                resource=machine.name,
            )
        return machine.with_details(agent_started_at=time.time())

    async def agent_status(self, machine: Machine) -> AgentStatus:
        argv = guest.status_argv(_guest_root(machine))
        try:
            connection = await self._connection(machine)
            result = await ssh.run_command(connection, shlex.join(argv))
        except CONNECTION_ERRORS as exc:
            return AgentStatus(AgentState.MISSING, start_error=str(exc))
        return guest.parse_agent_status(_text(result.stdout))

    async def wait_agent(
        self, machine: Machine, output: OutputSink, offsets: tuple[int, int] = (0, 0)
    ) -> AgentStatus:
        received = list(offsets)

        async def count(stream: str, data: bytes) -> None:
            received[0 if stream == "stdout" else 1] += len(data)
            outcome = output(stream, data)
            if asyncio.iscoroutine(outcome):
                await outcome

        while True:
            argv = guest.follow_argv(_guest_root(machine), (received[0], received[1]))
            try:
                connection = await self._connection(machine)
                await ssh.stream_command(connection, shlex.join(argv), count)
            except ssh.SSHAuthenticationError:
                raise
            except CONNECTION_ERRORS as exc:
                logger.warning(
                    "SSH connection lost while following the agent; reconnecting: %s",
                    exc,
                    extra={"action": "ssh_reconnect", "resource": machine.name},
                )
                self._drop_connection(machine)
                continue
            status = await self.agent_status(machine)
            if status.state is AgentState.EXITED:
                return status
            if status.state is AgentState.MISSING:
                raise guest.agent_lost(self.name, machine)

    async def collect(
        self, machine: Machine, paths: tuple[str, ...], destination: Path
    ) -> None:
        connection = await self._connection(machine)
        root = _guest_root(machine)
        for path in paths:
            await ssh.download_tree(connection, f"{root}/{path}", destination, path)

    # -- deleting and listing ---------------------------------------------------

    async def delete(self, machine: Machine) -> None:
        self._drop_connection(machine)
        await self.delete_by_name(machine.name, machine.spec.execution_id)
        self._kill_run_process(machine.name, machine.details.get("run_pid"))

    async def delete_by_name(self, name: str, execution_id: str | None = None) -> None:
        try:
            await self.cli.run("stop", name, ok_codes=(0, EXIT_NOT_FOUND))
            for _ in range(DELETE_ATTEMPTS):
                result = await self.cli.run(
                    "delete", name, ok_codes=(0, 1, EXIT_NOT_FOUND)
                )
                if result.returncode in (0, EXIT_NOT_FOUND):
                    return
                if "is running" not in (result.stderr_text + result.stdout_text):
                    raise self.cli.error(result)
                await self.cli.run("stop", name, ok_codes=(0, EXIT_NOT_FOUND))
                await asyncio.sleep(0.5)
        except BackendError as exc:
            raise MachineDeleteError(
                f"deleting VM {name} failed: {exc}",
                backend=self.name,
                execution_id=execution_id,
                resource=name,
            ) from exc
        raise MachineDeleteError(
            f"VM {name} still runs after {DELETE_ATTEMPTS} stop attempts",
            backend=self.name,
            execution_id=execution_id,
            resource=name,
        )

    def _kill_run_process(self, name: str, pid: object) -> None:
        process = self._runs.pop(name, None)
        if isinstance(pid, int) and _is_tart_run(pid, name):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    async def list_resources(self, install_id: str) -> list[MachineResource]:
        prefix = f"eng-{install_id}-"
        return [
            MachineResource(
                backend=self.name,
                name=vm.name,
                install_id=install_id,
                execution_id=vm.name[len(prefix) :],
                running=vm.running,
            )
            for vm in await self.cli.list()
            if vm.source == "local" and vm.name.startswith(prefix)
        ]


def memory_megabytes(text: str) -> int:
    """Convert a Docker-style size such as `512m` or `2g` to megabytes for tart."""
    units = {"b": 1 / (1 << 20), "k": 1 / 1024, "m": 1, "g": 1024}
    suffix = text[-1].lower()
    if suffix in units:
        return max(1, int(float(text[:-1]) * units[suffix]))
    return max(1, int(int(text) / (1 << 20)))


def _guest_root(machine: Machine) -> str:
    root = machine.details.get("guest_root")
    if not isinstance(root, str):
        raise BackendError(
            f"VM {machine.name} has no recorded guest folder; it never became ready",
            backend="tart",
            resource=machine.name,
        )
    return root


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace").strip()
    return data.strip()


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_bytes()[-limit:].decode(errors="replace").strip()
    except FileNotFoundError:
        return ""


def _is_tart_run(pid: int, name: str) -> bool:
    """Return whether `pid` is still `tart run NAME`; a reused pid is never killed."""
    if Path("/proc/self").is_dir():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        words = [part.decode(errors="replace") for part in argv if part]
    else:
        result = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            text=True,
            check=False,
        )
        words = result.stdout.split()
    return "run" in words and name in words and any("tart" in w for w in words)


@contextlib.asynccontextmanager
async def _host_slot_lock() -> AsyncIterator[None]:
    """Hold a host-wide lock while counting running VMs and starting one.

    Engine processes on one Mac share the two-VM limit, so the count and the
    start must not interleave between them.
    """
    home = Path(os.environ.get("TART_HOME") or Path.home() / ".tart")
    home.mkdir(parents=True, exist_ok=True)
    with (home / "engine-slots.lock").open("w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(BOOT_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
