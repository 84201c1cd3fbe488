"""SSH into Tart VMs with asyncssh: trust on first use, then a pinned host key.

The password stays in this process: it is never put in argv or in a child
process's environment.
"""

from __future__ import annotations

import asyncio
import io
import logging
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import asyncssh

from engine.bundle import safe_target, write_file_safely
from engine.exceptions import BackendError

logger = logging.getLogger(__name__)

CONNECT_RETRY_SECONDS = 0.25


class SSHAuthenticationError(BackendError):
    """The VM rejected the SSH credentials."""

    error_type = "ssh_auth_failed"


class SSHUnreachableError(BackendError):
    """SSH did not respond in time."""

    error_type = "ssh_unreachable"


@dataclass(frozen=True, slots=True)
class SSHCredentials:
    username: str
    password: str | None = None
    key_path: Path | None = None

    def __repr__(self) -> str:
        return f"SSHCredentials(username={self.username!r}, password=***)"


async def connect(
    address: str,
    credentials: SSHCredentials,
    host_key: str | None,
    *,
    connect_timeout: float = 10.0,
) -> tuple[asyncssh.SSHClientConnection, str]:
    """Open a connection; return it and the server's host key in OpenSSH form.

    With `host_key` None the key is accepted once (the VM was just cloned and
    nothing else can know its key), and the caller pins what is returned.
    """
    if host_key is None:
        known_hosts: object = None
    else:
        key = asyncssh.import_public_key(host_key)
        known_hosts = ([key], [], [])
    options = {
        "username": credentials.username,
        "known_hosts": known_hosts,
        "connect_timeout": connect_timeout,
        "login_timeout": connect_timeout,
    }
    if credentials.password is not None:
        options["password"] = credentials.password
    if credentials.key_path is not None:
        options["client_keys"] = [str(credentials.key_path)]
    else:
        options["client_keys"] = None
    connection = await asyncssh.connect(address, 22, **options)  # type: ignore[arg-type]
    server_key = connection.get_server_host_key()
    exported = (
        server_key.export_public_key("openssh").decode().strip() if server_key else ""
    )
    return connection, host_key or exported


async def connect_until_ready(
    address: str,
    credentials: SSHCredentials,
    host_key: str | None,
    deadline: float,
) -> tuple[asyncssh.SSHClientConnection, str]:
    """Retry `connect` until it works or `deadline` (monotonic) passes.

    A rejected password or key fails at once: retrying cannot fix it.
    """
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        remaining = max(deadline - time.monotonic(), 0.5)
        try:
            return await connect(
                address, credentials, host_key, connect_timeout=min(remaining, 10.0)
            )
        except asyncssh.PermissionDenied as exc:
            raise SSHAuthenticationError(
                f"SSH login as {credentials.username!r} to {address} was rejected: "
                "check TART_VM_USERNAME and TART_VM_PASSWORD (or TART_SSH_KEY)",
                backend="tart",
            ) from exc
        except asyncssh.HostKeyNotVerifiable as exc:
            raise BackendError(
                f"the SSH host key of {address} changed during the run; refusing "
                "to connect",
                backend="tart",
            ) from exc
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            last_error = exc
            await asyncio.sleep(CONNECT_RETRY_SECONDS)
    raise SSHUnreachableError(
        f"SSH on {address}:22 did not respond before TART_SSH_TIMEOUT: {last_error}",
        backend="tart",
    )


async def run_command(
    connection: asyncssh.SSHClientConnection,
    command: str,
    *,
    input: bytes | None = None,
) -> asyncssh.SSHCompletedProcess:
    """Run a fixed command string; callers quote every argument they add."""
    return await connection.run(command, input=input, encoding=None, check=False)


async def stream_command(
    connection: asyncssh.SSHClientConnection,
    command: str,
    on_output: Callable[[str, bytes], Awaitable[None]],
) -> None:
    """Run `command`, passing its stdout and stderr chunks on as they arrive."""
    process = await connection.create_process(command, encoding=None)
    async with process:

        async def pump(reader: asyncssh.SSHReader, name: str) -> None:
            while chunk := await reader.read(65536):
                await on_output(name, chunk)

        await asyncio.gather(
            pump(process.stdout, "stdout"), pump(process.stderr, "stderr")
        )
        await process.wait()


async def download_tree(
    connection: asyncssh.SSHClientConnection,
    remote: str,
    destination: Path,
    relative: str,
) -> int:
    """Copy the regular files at or below `remote` to `destination / relative`.

    Symlinks and special files are skipped, never followed, and names are checked
    so nothing lands outside `destination`. Returns the number of files copied.
    """
    async with connection.start_sftp_client() as sftp:
        try:
            attrs = await sftp.lstat(remote)
        except asyncssh.SFTPNoSuchFile:
            return 0
        return await _download(
            sftp, remote, attrs, destination, PurePosixPath(relative)
        )


async def _download(
    sftp: asyncssh.SFTPClient,
    remote: str,
    attrs: asyncssh.SFTPAttrs,
    destination: Path,
    relative: PurePosixPath,
) -> int:
    mode = attrs.permissions or 0
    if stat.S_ISREG(mode):
        target = safe_target(destination, relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        async with sftp.open(remote, "rb") as handle:
            content = await handle.read()
        write_file_safely(target, io.BytesIO(content), mode & 0o755)
        return 1
    if not stat.S_ISDIR(mode):
        return 0
    safe_target(destination, relative / "x").parent.mkdir(parents=True, exist_ok=True)
    copied = 0
    for entry in await sftp.readdir(remote):
        name = entry.filename
        if name in (".", "..") or "/" in name:
            continue
        copied += await _download(
            sftp, f"{remote}/{name}", entry.attrs, destination, relative / name
        )
    return copied
