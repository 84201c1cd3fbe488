"""Start or reuse a Docker daemon for the test suite.

`ensure_docker_daemon` reuses the daemon that the docker client reaches with the
current environment. When none responds, it starts a private dockerd that has no
default bridge and changes no iptables rules or IP forwarding settings, so the
host's networking stays as it was. The private daemon keeps its images in a cache
folder between runs, and its sockets and runtime state in a temporary folder that
`DockerDaemon.stop` removes.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

BASE_IMAGE = "engine-base:latest"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_BASE_IMAGE_SCRIPT = REPO_ROOT / "scripts" / "build-base-image.sh"

# sun_path in struct sockaddr_un is 108 bytes on Linux, including the trailing NUL.
SOCKET_PATH_MAX = 107
# containerd puts its sockets below <exec-root>/containerd/, so the exec root needs
# room for the longest of them.
CONTAINERD_SOCKET_SUFFIX = "containerd/containerd.sock.ttrpc"


class DockerDaemonError(RuntimeError):
    """A Docker daemon for the tests could not be found or started."""


@dataclass
class DockerDaemon:
    """A Docker daemon that the tests use, and the process if the tests started it.

    `pid` is None when an already running daemon was reused. `stop` only ever
    signals a process that this module started.
    """

    docker_host: str
    pid: int | None = None
    data_root: Path | None = None
    exec_root: Path | None = None
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def started(self) -> bool:
        """Whether this module started the daemon and so must stop it."""
        return self._process is not None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the daemon if this module started it: SIGTERM, wait, then SIGKILL.

        Reused daemons are left running. On SIGTERM, dockerd stops its running
        containers and its managed containerd. When a container ignores SIGTERM,
        that takes up to dockerd's shutdown timeout (15 seconds by default).
        """
        process = self._process
        if process is None:
            return
        _terminate(process, timeout)
        # dockerd unmounts its roots and stops containerd itself when it shuts
        # down cleanly, but not after a SIGKILL or a crash.
        if process.returncode != 0:
            self._clean_up_after_crash(process.returncode, timeout)
        if self.exec_root is not None:
            shutil.rmtree(self.exec_root.parent, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
        self._process = None
        self._lock = None

    def _clean_up_after_crash(self, returncode: int, timeout: float) -> None:
        logger.warning(
            "dockerd did not shut down cleanly; cleaning up after it",
            extra={"pid": self.pid, "returncode": returncode},
        )
        if self.exec_root is not None:
            _stop_orphaned_containerd(self.exec_root, timeout)
        _unmount_below([root for root in (self.data_root, self.exec_root) if root])


def default_cache_dir() -> Path:
    """Return the folder that keeps the private daemon's images between runs."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "engine-tests" / "docker"


def docker_responds(docker_host: str | None = None, timeout: float = 10.0) -> bool:
    """Check whether `docker info` succeeds, with DOCKER_HOST set if given."""
    env = dict(os.environ)
    if docker_host is not None:
        env["DOCKER_HOST"] = docker_host
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def ensure_docker_daemon(
    cache_dir: Path | None = None, startup_timeout: float = 60.0
) -> DockerDaemon:
    """Reuse the Docker daemon of the current environment, or start a private one.

    Raises DockerDaemonError if no daemon responds and none can be started.
    """
    if shutil.which("docker") is None:
        raise DockerDaemonError(
            "docker client not found on PATH; install the Debian package docker.io "
            "or run .ci/run"
        )
    if docker_responds():
        docker_host = _current_docker_host()
        logger.info("reusing Docker daemon", extra={"docker_host": docker_host})
        return DockerDaemon(docker_host=docker_host)

    configured = os.environ.get("DOCKER_HOST")
    if configured:
        logger.warning(
            "no Docker daemon responds at DOCKER_HOST; starting a private dockerd",
            extra={"docker_host": configured},
        )
    return start_docker_daemon(cache_dir, startup_timeout)


def start_docker_daemon(
    cache_dir: Path | None = None, startup_timeout: float = 60.0
) -> DockerDaemon:
    """Start a private dockerd with its data root in `cache_dir` and wait for it.

    Only one private daemon can use a cache folder at a time, so a second test
    session with the same folder raises DockerDaemonError.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerDaemonError(
            "dockerd not found on PATH; install the Debian package docker.io "
            "or run .ci/run"
        )
    if os.geteuid() != 0:
        raise DockerDaemonError(
            "no Docker daemon responds and a private dockerd needs root; run the "
            "tests as root or set DOCKER_HOST to a running daemon"
        )

    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_cache_dir(cache_dir)
    try:
        return _launch_dockerd(dockerd, cache_dir, lock, startup_timeout)
    except BaseException:
        lock.close()
        raise


def ensure_base_image(
    docker_host: str, image: str = BASE_IMAGE, force: bool = False
) -> None:
    """Build `image` with scripts/build-base-image.sh unless it already exists."""
    command = ["bash", str(BUILD_BASE_IMAGE_SCRIPT), "--tag", image]
    if force:
        command.append("--force")
    env = dict(os.environ, DOCKER_HOST=docker_host)
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        raise DockerDaemonError(
            f"building image {image} failed (exit status {result.returncode}) "
            f"with DOCKER_HOST={docker_host}:\n{result.stderr.strip()}"
        )


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Send SIGTERM to `process`, and SIGKILL if it still runs after `timeout`."""
    if process.poll() is not None:
        return
    logger.info("stopping dockerd", extra={"pid": process.pid})
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        logger.warning(
            "dockerd did not stop after SIGTERM; sending SIGKILL",
            extra={"pid": process.pid, "timeout_seconds": timeout},
        )
        process.kill()
        process.wait()


def _current_docker_host() -> str:
    """Return the daemon address that the docker client uses in this environment."""
    configured = os.environ.get("DOCKER_HOST")
    if configured:
        return configured
    result = subprocess.run(
        ["docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    host = result.stdout.strip()
    return host if result.returncode == 0 and host else "unix:///var/run/docker.sock"


def _lock_cache_dir(cache_dir: Path) -> IO[str]:
    lock = (cache_dir / "dockerd.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DockerDaemonError(
            f"another test session runs a private dockerd with {cache_dir}; wait "
            "for it to end, or pass another cache_dir (XDG_CACHE_HOME sets the "
            "default)"
        ) from None
    return lock


def _launch_dockerd(
    dockerd: str, cache_dir: Path, lock: IO[str], startup_timeout: float
) -> DockerDaemon:
    runtime_dir = _make_runtime_dir()
    exec_root = runtime_dir / "exec"
    socket_path = runtime_dir / "docker.sock"
    log_path = cache_dir / "dockerd.log"
    data_root = cache_dir / "data"
    command = [
        dockerd,
        *_network_flags(dockerd),
        f"--data-root={data_root}",
        f"--exec-root={exec_root}",
        f"--pidfile={runtime_dir / 'dockerd.pid'}",
        f"--host=unix://{socket_path}",
    ]
    with log_path.open("wb") as log_file:
        # A new session keeps Ctrl-C in the terminal from reaching dockerd, so
        # DockerDaemon.stop decides when it ends.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = DockerDaemon(
        docker_host=f"unix://{socket_path}",
        pid=process.pid,
        data_root=data_root,
        exec_root=exec_root,
        log_path=log_path,
        _process=process,
        _lock=lock,
    )
    logger.info("started dockerd", extra={"pid": process.pid, "log": str(log_path)})
    try:
        _wait_until_ready(daemon, process, startup_timeout)
        _remove_stopped_containers(daemon.docker_host)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _make_runtime_dir() -> Path:
    """Create the folder for the daemon's sockets, exec root and pidfile."""
    runtime_dir = Path(tempfile.mkdtemp(prefix="engine-dockerd-"))
    longest = len(str(runtime_dir / "exec" / CONTAINERD_SOCKET_SUFFIX))
    if longest > SOCKET_PATH_MAX:
        shutil.rmtree(runtime_dir)
        raise DockerDaemonError(
            f"socket paths under {runtime_dir} are longer than {SOCKET_PATH_MAX} "
            "bytes; set TMPDIR to a shorter folder such as /tmp"
        )
    return runtime_dir


@functools.cache
def _network_flags(dockerd: str) -> tuple[str, ...]:
    """Return flags that keep dockerd from changing the host's networking.

    dockerd rejects unknown flags, and releases before 20.10 have no
    --ip6tables, so that flag is passed only where `dockerd --help` lists it.
    """
    flags = ["--bridge=none", "--iptables=false", "--ip-forward=false"]
    help_text = subprocess.run(
        [dockerd, "--help"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if "--ip6tables" in help_text:
        flags.append("--ip6tables=false")
    return tuple(flags)


def _wait_until_ready(
    daemon: DockerDaemon, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DockerDaemonError(
                f"dockerd exited with status {process.returncode} during startup; "
                f"last lines of {daemon.log_path}:\n{_log_tail(daemon.log_path)}"
            )
        if docker_responds(daemon.docker_host, timeout=5.0):
            return
        time.sleep(0.2)
    raise DockerDaemonError(
        f"dockerd did not respond at {daemon.docker_host} within {timeout} seconds; "
        f"last lines of {daemon.log_path}:\n{_log_tail(daemon.log_path)}"
    )


def _remove_stopped_containers(docker_host: str) -> None:
    """Remove containers that an earlier session left in the cached data root.

    This runs only on a freshly started private daemon, so every container in it
    comes from an earlier test session, and the prune removes the stopped ones.
    """
    result = subprocess.run(
        ["docker", "container", "prune", "--force"],
        env=dict(os.environ, DOCKER_HOST=docker_host),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise DockerDaemonError(
            f"`docker container prune` failed on {docker_host}: {result.stderr.strip()}"
        )


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return "(no log)"
    text = log_path.read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _stop_orphaned_containerd(exec_root: Path, timeout: float) -> None:
    """Stop the containerd that dockerd started, if it outlived dockerd.

    containerd normally dies with dockerd (seen with Docker 20.10.24), so this
    usually finds nothing to do. The PID comes from the
    pidfile that containerd writes in its state folder, and the process is
    signalled only if its command line names this exec root.
    """
    # NOTE: after a SIGKILL of dockerd, the containerd-shim-runc-v2 processes of
    # containers that were still running keep running, and nothing stops them.
    pid_file = exec_root / "containerd" / "containerd.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if not _process_mentions(pid, str(exec_root)):
        return
    logger.warning("stopping containerd left by dockerd", extra={"pid": pid})
    _signal_and_wait(pid, signal.SIGTERM, timeout)
    if _process_alive(pid):
        _signal_and_wait(pid, signal.SIGKILL, timeout)


def _unmount_below(roots: list[Path]) -> None:
    """Unmount every mount at or below `roots`, deepest first.

    dockerd bind-mounts its data root onto itself, and overlay and network
    namespace mounts sit below the two roots while containers exist.
    """
    prefixes = [str(root.resolve()) for root in roots]
    mount_points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like escaped as \ooo.
        escaped = line.split()[4]
        mount_point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), escaped)
        if any(mount_point == p or mount_point.startswith(p + "/") for p in prefixes):
            mount_points.append(mount_point)
    for mount_point in sorted(mount_points, key=len, reverse=True):
        logger.warning("unmounting mount left by dockerd", extra={"path": mount_point})
        subprocess.run(["umount", "--lazy", mount_point], check=False, timeout=30)


def _process_mentions(pid: int, text: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return text.encode() in cmdline and _process_alive(pid)


def _process_alive(pid: int) -> bool:
    """Return False for a process that has exited, zombies included."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[0] != "Z"


def _signal_and_wait(pid: int, signum: signal.Signals, timeout: float) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
