"""`tart-sim`: simulator-only commands that real tart has no equivalent for.

    tart-sim create-base [NAME]        make a base VM from nothing
    tart-sim drop-connections NAME     cut every SSH connection of a running VM
    tart-sim ps NAME                   list the guest's processes as JSON

The guest password comes from TART_VM_PASSWORD (default "admin") or, with
--password-stdin, from standard input, never from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import uuid
from base64 import b64encode
from pathlib import Path

from . import sandbox
from .errors import TartError, vm_not_running
from .storage import (
    VMDir,
    lock_holder,
    open_vm,
    random_mac,
    storage_lock,
    tart_home,
    vm_dir,
)

GUEST_UID = 501  # macOS gives the first user account UID 501 ...
GUEST_GID = 20  # ... and the primary group "staff", GID 20.
GIGABYTE = 1000 * 1000 * 1000
MEBIBYTE = 1024 * 1024


def _hash_password(password: str) -> str:
    """Return a SHA-512 crypt hash; the password goes to openssl on stdin."""
    result = subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def _write_accounts(etc: Path, user: str, password: str) -> None:
    """Write passwd, group and shadow: the host's entries plus the guest user."""
    etc.mkdir(parents=True)
    passwd = [
        line
        for line in Path("/etc/passwd").read_text().splitlines()
        if line.split(":")[0] != user and line.split(":")[2] != str(GUEST_UID)
    ]
    passwd.append(f"{user}:x:{GUEST_UID}:{GUEST_GID}:{user}:/Users/{user}:/bin/bash")
    group = [
        line
        for line in Path("/etc/group").read_text().splitlines()
        if line.split(":")[0] != "staff" and line.split(":")[2] != str(GUEST_GID)
    ]
    group.append(f"staff:x:{GUEST_GID}:{user}")
    shadow = [
        line
        for line in Path("/etc/shadow").read_text().splitlines()
        if line.split(":")[0] != user
    ]
    shadow.append(f"{user}:{_hash_password(password)}:19000:0:99999:7:::")
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "group").write_text("\n".join(group) + "\n")
    shadow_path = etc / "shadow"
    shadow_path.touch(mode=0o600)
    shadow_path.write_text("\n".join(shadow) + "\n")


def _make_guest_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, GUEST_UID, GUEST_GID)
    path.chmod(mode)


def _write_home(vm: VMDir, user: str, keys: list[Path]) -> None:
    home = vm.disk_root / "Users" / user
    _make_guest_dir(home, 0o755)
    _make_guest_dir(home / ".ssh", 0o700)
    authorized = home / ".ssh" / "authorized_keys"
    authorized.write_text("".join(key.read_text().strip() + "\n" for key in keys))
    os.chown(authorized, GUEST_UID, GUEST_GID)
    authorized.chmod(0o600)
    # Homebrew's prefix on Apple silicon, owned by the user as on a real Mac.
    _make_guest_dir(vm.disk_root / "opt" / "homebrew", 0o755)
    _make_guest_dir(vm.disk_root / "opt" / "homebrew" / "bin", 0o755)


def _write_config(vm: VMDir, cpu: int, memory_mb: int) -> None:
    config = {
        "version": 1,
        "os": "darwin",
        "arch": "arm64",
        "ecid": b64encode(secrets.token_bytes(8)).decode(),
        "hardwareModel": b64encode(b"tart-simulator").decode(),
        "cpuCountMin": 4,
        "cpuCount": cpu,
        "memorySizeMin": 4096 * MEBIBYTE,
        "memorySize": memory_mb * MEBIBYTE,
        "macAddress": random_mac(),
        "display": {"width": 1024, "height": 768},
        "diskFormat": "raw",
    }
    vm.config_path.write_text("{}")
    vm.write_config(config)


def create_base(arguments: argparse.Namespace) -> int:
    home = tart_home()
    target = vm_dir(home, arguments.name)
    if target.base.exists() and not arguments.replace:
        raise TartError(
            f'VM "{arguments.name}" already exists; pass --replace to rebuild it'
        )
    if arguments.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = os.environ.get("TART_VM_PASSWORD", "admin")
    prepared = VMDir(home / "tmp" / str(uuid.uuid4()))
    try:
        prepared.base.mkdir()
        _write_config(prepared, arguments.cpu, arguments.memory)
        prepared.nvram.write_bytes(b"tart-simulator nvram placeholder\n")
        with open(prepared.disk_image, "wb") as image:
            image.truncate(arguments.disk_size * GIGABYTE)
        _write_accounts(prepared.guest_etc, arguments.user, password)
        _write_home(prepared, arguments.user, arguments.authorized_key)
        with storage_lock(home):
            if target.running():
                raise TartError(f'VM "{arguments.name}" is running')
            shutil.rmtree(target.base, ignore_errors=True)
            prepared.base.rename(target.base)
    finally:
        shutil.rmtree(prepared.base, ignore_errors=True)
    print(target.base)
    return 0


def _running_sandbox(name: str) -> int:
    """Return the bwrap PID of a running VM, checked against its lock holder."""
    vm = open_vm(tart_home(), name)
    holder = lock_holder(vm.config_path)
    if holder == 0:
        raise vm_not_running(name)
    state = json.loads((vm.runtime / "run.json").read_text())
    if state["pid"] != holder:
        raise TartError(
            f"run state of {name} is stale (pid {state['pid']}, lock holder {holder})"
        )
    return int(state["bwrap_pid"])


def drop_connections(arguments: argparse.Namespace) -> int:
    dropped = sandbox.drop_ssh_connections(_running_sandbox(arguments.name))
    print(f"dropped {len(dropped)} sshd session processes")
    return 0


def _command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def processes(arguments: argparse.Namespace) -> int:
    bwrap_pid = _running_sandbox(arguments.name)
    rows = [
        {"pid": pid, "ppid": parent, "name": name, "cmdline": _command_line(pid)}
        for pid, parent, name in sandbox.descendants(bwrap_pid)
    ]
    print(json.dumps(rows, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tart-sim",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    base = subparsers.add_parser("create-base", help="make a base VM from nothing")
    base.add_argument(
        "name",
        nargs="?",
        default=os.environ.get("TART_BASE_IMAGE", "tart_nanoclaw_base"),
    )
    base.add_argument("--user", default=os.environ.get("TART_VM_USERNAME", "admin"))
    base.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the guest password from the first line of stdin",
    )
    base.add_argument(
        "--authorized-key",
        type=Path,
        action="append",
        default=[],
        help="public key file to authorize for the user (repeatable)",
    )
    base.add_argument("--cpu", type=int, default=4)
    base.add_argument("--memory", type=int, default=8192, help="megabytes")
    base.add_argument("--disk-size", type=int, default=50, help="gigabytes")
    base.add_argument("--replace", action="store_true")
    base.set_defaults(handler=create_base)

    drop = subparsers.add_parser("drop-connections", help="cut a VM's SSH connections")
    drop.add_argument("name")
    drop.set_defaults(handler=drop_connections)

    ps = subparsers.add_parser("ps", help="list a running VM's processes as JSON")
    ps.add_argument("name")
    ps.set_defaults(handler=processes)

    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return arguments.handler(arguments)
    except TartError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
