"""Start a private PostgreSQL server for the tests.

The server gets a fresh cluster in a temporary folder, listens only on 127.0.0.1
on a free port and on a unix socket in that folder, and trusts every connection
for the user `TEST_USER`. As root, the server runs as the `postgres` OS user,
because initdb and postgres reject root.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

TEST_USER = "engine"
TEST_DATABASE = "engine_test"
SERVER_OS_USER = "postgres"
BIN_DIR_PATTERN = "/usr/lib/postgresql/*/bin"
PORT_ATTEMPTS = 3
# sun_path in struct sockaddr_un is 108 bytes on Linux, including the trailing NUL.
SOCKET_PATH_MAX = 107


class PostgresNotFoundError(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


class PostgresStartError(RuntimeError):
    """The test PostgreSQL server failed to start."""


class _PortInUseError(PostgresStartError):
    """Another process took the free port before the server bound it."""


@dataclass
class PostgresServer:
    """A running test server, its SQLAlchemy URL and the postgres process."""

    url: str
    port: int
    pid: int
    base_dir: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server by its PID and remove its cluster folder.

        SIGINT is PostgreSQL's fast shutdown: it disconnects clients, where
        SIGTERM would wait for them. SIGKILL follows after `timeout` seconds.
        """
        process = self._process
        if process is None:
            return
        _terminate(process, timeout)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self._process = None


def find_bin_dir() -> Path:
    """Return the newest /usr/lib/postgresql/<version>/bin that has initdb.

    Raises PostgresNotFoundError when no version is installed.
    """
    candidates = [
        Path(path)
        for path in glob.glob(BIN_DIR_PATTERN)
        if (Path(path) / "initdb").exists() and (Path(path) / "postgres").exists()
    ]
    if not candidates:
        raise PostgresNotFoundError(
            f"PostgreSQL server binaries not found in {BIN_DIR_PATTERN}; run .ci/run "
            "or install them with `apt-get install postgresql`"
        )
    return max(candidates, key=lambda path: _version_key(path.parent.name))


def start_postgres(startup_timeout: float = 60.0) -> PostgresServer:
    """Create a cluster in a temporary folder, start its server and wait for it.

    Raises PostgresNotFoundError or PostgresStartError.
    """
    bin_dir = find_bin_dir()
    run_as = _server_os_user()
    base_dir = Path(tempfile.mkdtemp(prefix="engine-pg-"))
    try:
        if run_as is not None:
            os.chown(base_dir, run_as.pw_uid, run_as.pw_gid)
        _init_cluster(bin_dir, base_dir, run_as)
        server = _start_server_on_free_port(bin_dir, base_dir, run_as, startup_timeout)
    except BaseException:
        shutil.rmtree(base_dir, ignore_errors=True)
        raise
    try:
        _create_database(bin_dir, server)
    except BaseException:
        server.stop()
        raise
    return server


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _terminate(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning(
            "postgres did not stop after SIGINT; sending SIGKILL",
            extra={"pid": process.pid, "timeout_seconds": timeout},
        )
        process.kill()
        process.wait()


def _server_os_user() -> pwd.struct_passwd | None:
    """Return the OS user to run the server as, or None for the current user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PostgresNotFoundError(
            f"OS user {SERVER_OS_USER!r} not found; the tests run as root, and "
            "PostgreSQL rejects root, so install the Debian package postgresql, "
            "which creates that user"
        ) from None


def _run(
    command: list[str], run_as: pwd.struct_passwd | None, timeout: float = 120.0
) -> None:
    result = subprocess.run(
        command,
        user=run_as.pw_uid if run_as else None,
        group=run_as.pw_gid if run_as else None,
        extra_groups=[] if run_as else None,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise PostgresStartError(
            f"{Path(command[0]).name} failed with exit status {result.returncode}:\n"
            f"{(result.stdout + result.stderr).strip()}"
        )


def _init_cluster(
    bin_dir: Path, base_dir: Path, run_as: pwd.struct_passwd | None
) -> None:
    command = [
        str(bin_dir / "initdb"),
        f"--pgdata={base_dir / 'data'}",
        f"--username={TEST_USER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]
    _run(command, run_as)


def _start_server_on_free_port(
    bin_dir: Path,
    base_dir: Path,
    run_as: pwd.struct_passwd | None,
    startup_timeout: float,
) -> PostgresServer:
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            return _start_server(bin_dir, base_dir, run_as, startup_timeout)
        except _PortInUseError:
            if attempt == PORT_ATTEMPTS:
                raise
            logger.warning("port taken before postgres bound it; retrying")
    raise AssertionError("unreachable")


def _start_server(
    bin_dir: Path,
    base_dir: Path,
    run_as: pwd.struct_passwd | None,
    startup_timeout: float,
) -> PostgresServer:
    port = _free_port()
    if len(str(base_dir / f".s.PGSQL.{port}")) > SOCKET_PATH_MAX:
        raise PostgresStartError(
            f"unix socket path in {base_dir} is longer than {SOCKET_PATH_MAX} "
            "bytes; set TMPDIR to a shorter folder such as /tmp"
        )
    log_path = base_dir / "postgres.log"
    command = _server_command(bin_dir, base_dir, port)
    with log_path.open("wb") as log_file:
        if run_as is not None:
            os.chown(log_path, run_as.pw_uid, run_as.pw_gid)
        process = subprocess.Popen(
            command,
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"postgresql+psycopg://{TEST_USER}@127.0.0.1:{port}/{TEST_DATABASE}"
    server = PostgresServer(url, port, process.pid, base_dir, process)
    logger.info("started postgres", extra={"pid": process.pid, "port": port})
    try:
        _wait_until_ready(bin_dir, server, process, log_path, startup_timeout)
    except BaseException:
        # The caller owns base_dir and may start again in it with another port.
        _terminate(process)
        raise
    return server


def _server_command(bin_dir: Path, base_dir: Path, port: int) -> list[str]:
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(base_dir),
        # Durability is off because the cluster is deleted after the tests.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    command = [str(bin_dir / "postgres"), "-D", str(base_dir / "data")]
    command += ["-p", str(port)]
    for name, value in settings.items():
        command += ["-c", f"{name}={value}"]
    return command


def _free_port() -> int:
    # Another process can take the port between this close and the server's
    # bind, so _start_server_on_free_port retries with a new port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_ready(
    bin_dir: Path,
    server: PostgresServer,
    process: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    command = [
        str(bin_dir / "pg_isready"),
        "--quiet",
        "--host=127.0.0.1",
        f"--port={server.port}",
        f"--username={TEST_USER}",
    ]
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = log_path.read_text(errors="replace").strip()
            error_type = (
                _PortInUseError
                if "Address already in use" in log_text
                else PostgresStartError
            )
            raise error_type(
                f"postgres exited with status {process.returncode} during startup:\n"
                f"{log_text}"
            )
        if subprocess.run(command, timeout=10, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise PostgresStartError(
        f"postgres did not accept connections on 127.0.0.1:{server.port} within "
        f"{timeout} seconds; its log:\n{log_path.read_text(errors='replace').strip()}"
    )


def _create_database(bin_dir: Path, server: PostgresServer) -> None:
    command = [
        str(bin_dir / "createdb"),
        "--host=127.0.0.1",
        f"--port={server.port}",
        f"--username={TEST_USER}",
        TEST_DATABASE,
    ]
    _run(command, run_as=None)
