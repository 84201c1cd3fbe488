"""The simulated guest: a bubblewrap sandbox running OpenSSH's sshd.

Inside the sandbox the host's /usr (with the /bin and /lib symlinks into it) and /etc
are read-only. /etc/passwd, /etc/group and /etc/shadow come from the VM's disk, /Users
and /opt are the VM's writable disk, and /tmp, /var and /run are private.

The sandbox has its own PID namespace, so every guest process, including those
started with setsid, dies with it. It shares the host's network namespace, and sshd
listens on the VM's loopback address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import TartError
from .storage import VMDir

GUEST_CONFIG_DIR = "/var/lib/tart-sim"
GUEST_PATH = "/opt/homebrew/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
HOST_KEY_TYPES = ("ed25519", "ecdsa")
SHARED_FILES_ROOT = "/Volumes/My Shared Files"
# sshd runs as root inside and needs these to bind port 22, check passwords, chroot
# its privilege-separation child and switch to the user. Guest users get none.
SSHD_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)


@dataclass(frozen=True)
class DirectoryShare:
    """A `tart run --dir` share: host path, guest mount point, read-only flag."""

    host_path: Path
    guest_path: str
    read_only: bool


def ensure_host_keys(vm: VMDir) -> None:
    """Create the VM's SSH host keys if the disk has none yet (first boot)."""
    key_dir = vm.guest_etc / "ssh"
    key_dir.mkdir(parents=True, exist_ok=True)
    for key_type in HOST_KEY_TYPES:
        key_path = key_dir / f"ssh_host_{key_type}_key"
        if key_path.exists():
            continue
        _run_keygen(key_type, key_path, vm.name)


def _run_keygen(key_type: str, key_path: Path, comment: str) -> None:
    argv = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment]
    try:
        subprocess.run([*argv, "-f", str(key_path)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        output = getattr(exc, "stderr", b"") or b""
        raise TartError(
            f"failed to create SSH host key {key_path}: {exc} "
            f"{output.decode(errors='replace').strip()}"
        ) from exc


def write_sshd_config(vm: VMDir, address: str, port: int) -> Path:
    lines = [f"ListenAddress {address}:{port}"]
    lines += [
        f"HostKey {GUEST_CONFIG_DIR}/ssh/ssh_host_{key_type}_key"
        for key_type in HOST_KEY_TYPES
    ]
    lines += [
        "PasswordAuthentication yes",
        "PubkeyAuthentication yes",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "PermitRootLogin no",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PidFile none",
        "PrintMotd no",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        f"SetEnv PATH={GUEST_PATH}",
    ]
    vm.runtime.mkdir(exist_ok=True)
    config_path = vm.runtime / "sshd_config"
    config_path.write_text("\n".join(lines) + "\n")
    return config_path


def _root_links() -> list[str]:
    """Mirror the host's /bin, /sbin, /lib* entries: symlinks stay symlinks."""
    argv: list[str] = []
    for entry in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host_path = Path("/") / entry
        if host_path.is_symlink():
            argv += ["--symlink", os.readlink(host_path), str(host_path)]
        elif host_path.is_dir():
            argv += ["--ro-bind", str(host_path), str(host_path)]
    return argv


# Namespaces and private scratch directories, the same for every VM.
# fmt: off
SANDBOX_OPTIONS = (
    "--unshare-pid", "--unshare-uts", "--unshare-ipc",
    "--die-with-parent", "--new-session",
    "--proc", "/proc", "--dev", "/dev",
    "--perms", "1777", "--tmpfs", "/tmp",
    "--tmpfs", "/var", "--perms", "1777", "--dir", "/var/tmp",
    "--tmpfs", "/run", "--perms", "0755", "--dir", "/run/sshd",
)
# fmt: on


def _system_mounts(vm: VMDir) -> list[str]:
    """Host /usr and /etc read-only, with the guest's accounts and sshd files."""
    argv = ["--ro-bind", "/usr", "/usr", *_root_links(), "--ro-bind", "/etc", "/etc"]
    for file_name in ("passwd", "group", "shadow"):
        argv += ["--ro-bind", str(vm.guest_etc / file_name), f"/etc/{file_name}"]
    argv += ["--ro-bind", str(vm.guest_etc / "ssh"), f"{GUEST_CONFIG_DIR}/ssh"]
    sshd_config = vm.runtime / "sshd_config"
    if sshd_config.exists():
        target = f"{GUEST_CONFIG_DIR}/sshd_config"
        argv += ["--ro-bind", str(sshd_config), target]
    return argv


def _disk_mounts(vm: VMDir, shares: list[DirectoryShare]) -> list[str]:
    argv = ["--bind", str(vm.disk_root / "Users"), "/Users"]
    argv += ["--bind", str(vm.disk_root / "opt"), "/opt"]
    if shares:
        # bwrap 0.8 makes missing parents of a bind target with mode 0700, which
        # would hide the shares from the guest user.
        argv += ["--perms", "0755", "--dir", "/Volumes"]
        argv += ["--perms", "0755", "--dir", SHARED_FILES_ROOT]
    for share in shares:
        bind = "--ro-bind" if share.read_only else "--bind"
        argv += [bind, str(share.host_path), share.guest_path]
    return argv


def bwrap_argv(
    vm: VMDir, shares: list[DirectoryShare], command: list[str]
) -> list[str]:
    argv = ["bwrap", *SANDBOX_OPTIONS, "--hostname", vm.name]
    argv += _system_mounts(vm) + _disk_mounts(vm, shares)
    for capability in SSHD_CAPABILITIES:
        argv += ["--cap-add", capability]
    return [*argv, "--chdir", "/", *command]


def guest_command(ssh_delay: float, with_network: bool) -> list[str]:
    """The sandbox's main process: sshd after `ssh_delay`, or idle without network."""
    if not with_network:
        return ["/bin/sleep", "infinity"]
    script = f'sleep "$1"; exec /usr/sbin/sshd -D -e -f {GUEST_CONFIG_DIR}/sshd_config'
    return ["/bin/sh", "-c", script, "sh", f"{ssh_delay:g}"]


def start(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    environment = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/"}
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=environment
        )


def listening(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((address, port)) == 0


def wait_listening(
    address: str, port: int, sandbox: subprocess.Popen[bytes], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sandbox.poll() is not None:
            return False
        if listening(address, port):
            return True
        time.sleep(0.1)
    return False


def _process_table() -> dict[int, tuple[int, str]]:
    """Map each PID to (parent PID, executable name) from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry)] = (parent, name)
    return table


def descendants(root_pid: int) -> list[tuple[int, int, str]]:
    """Return (pid, parent pid, name) for every process below `root_pid`."""
    table = _process_table()
    found: list[tuple[int, int, str]] = []
    frontier = [root_pid]
    while frontier:
        parent_pid = frontier.pop()
        for pid, (parent, name) in table.items():
            if parent == parent_pid:
                found.append((pid, parent, name))
                frontier.append(pid)
    return found


def drop_ssh_connections(bwrap_pid: int) -> list[int]:
    """Kill every per-connection sshd process, keeping the listener and the rest.

    The listener is the sshd whose parent is not sshd. Its children are the
    privileged monitors of open connections, and their children the user-side sshd
    processes. Commands that the sessions started keep running, as they would after
    a network drop.
    """
    processes = descendants(bwrap_pid)
    names = {pid: name for pid, _, name in processes}
    session_pids = [
        pid
        for pid, parent, name in processes
        if name == "sshd" and names.get(parent) == "sshd"
    ]
    for pid in session_pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return session_pids
