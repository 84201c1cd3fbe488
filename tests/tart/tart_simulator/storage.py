"""VM directories under $TART_HOME/vms and tart's locks on them.

The layout and the locks follow tart (Sources/tart/VMDirectory.swift, PIDLock.swift,
VMStorageLocal.swift): a VM exists when config.json, disk.img and nvram.bin exist, and
it runs while a process holds a POSIX record lock on its config.json. `tart stop`
finds that process with F_GETLK.

The simulator adds `disk/`, the guest's file system (Users/, opt/ and private/etc/),
and `sim/`, the files of the current or last boot. Neither exists in real tart.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import random
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import TartError, vm_does_not_exist

# struct flock on Linux x86_64 and aarch64: short l_type, short l_whence,
# off_t l_start, off_t l_len, pid_t l_pid, padded to 32 bytes.
FLOCK_FORMAT = "hhqqi4x"


def tart_home() -> Path:
    """Return $TART_HOME (default ~/.tart) after creating it as tart does."""
    custom = os.environ.get("TART_HOME")
    home = Path(custom) if custom else Path.home() / ".tart"
    for sub in ("vms", "tmp", "cache", "sim"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return home


class VMDir:
    """One local VM directory, $TART_HOME/vms/NAME."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def config_path(self) -> Path:
        return self.base / "config.json"

    @property
    def disk_image(self) -> Path:
        return self.base / "disk.img"

    @property
    def nvram(self) -> Path:
        return self.base / "nvram.bin"

    @property
    def disk_root(self) -> Path:
        """The guest file system: bound at /Users and /opt, and /etc overrides."""
        return self.base / "disk"

    @property
    def guest_etc(self) -> Path:
        return self.disk_root / "private" / "etc"

    @property
    def runtime(self) -> Path:
        """Files of the current or last boot: sshd_config, run.json, guest.log."""
        return self.base / "sim"

    @property
    def initialized(self) -> bool:
        return all(
            path.exists() for path in (self.config_path, self.disk_image, self.nvram)
        )

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        """Rewrite config.json in place, so a running VM's lock on it stays valid."""
        text = json.dumps(config, indent=2, separators=(",", " : "))
        with open(self.config_path, "r+") as handle:
            handle.seek(0)
            handle.write(text)
            handle.truncate()

    def running(self) -> bool:
        try:
            return lock_holder(self.config_path) != 0
        except OSError:
            return False

    def state(self) -> str:
        if self.running():
            return "running"
        if (self.base / "state.vzvmsave").exists():
            return "suspended"
        return "stopped"

    def touch_access_date(self) -> None:
        stat = self.base.stat()
        os.utime(self.base, (time.time(), stat.st_mtime))


def vm_dir(home: Path, name: str) -> VMDir:
    return VMDir(home / "vms" / name)


def open_vm(home: Path, name: str) -> VMDir:
    """Return an existing VM, raising tart's errors for a missing or partial one."""
    vm = vm_dir(home, name)
    if not vm.base.is_dir():
        raise vm_does_not_exist(name)
    if not vm.initialized:
        raise TartError(
            "VM is missing some of its files (config.json, disk.img or nvram.bin)"
        )
    vm.touch_access_date()
    return vm


def list_vms(home: Path) -> list[VMDir]:
    vms = [VMDir(path) for path in (home / "vms").iterdir() if path.is_dir()]
    return sorted((vm for vm in vms if vm.initialized), key=lambda vm: vm.name)


def lock_holder(path: Path) -> int:
    """Return the PID holding a POSIX write lock on `path`, or 0 when none does.

    A lock held by the calling process itself is not reported (POSIX semantics), so
    `tart run` must not call this on its own config.json.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        query = struct.pack(FLOCK_FORMAT, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        lock_type, _, _, _, pid = struct.unpack(FLOCK_FORMAT, answer)
        return 0 if lock_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def try_lock(fd: int) -> bool:
    """Take a POSIX write lock on the whole file without waiting."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


@contextlib.contextmanager
def storage_lock(home: Path) -> Iterator[None]:
    """Hold tart's global lock: flock(2) on the $TART_HOME directory."""
    fd = os.open(home, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def random_mac() -> str:
    """Return a random locally administered unicast MAC, as VZMACAddress makes."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{octet:02x}" for octet in octets)


def size_bytes(vm: VMDir) -> int:
    """Logical size of config.json, disk.img and nvram.bin, as tart's `Disk`."""
    return sum(
        path.stat().st_size for path in (vm.config_path, vm.disk_image, vm.nvram)
    )


def allocated_bytes(vm: VMDir) -> int:
    """Bytes the VM occupies on the host: the three files plus the guest tree."""
    total = sum(
        path.stat().st_blocks * 512
        for path in (vm.config_path, vm.disk_image, vm.nvram)
    )
    for root, _, files in os.walk(vm.disk_root):
        for file_name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, file_name)).st_blocks * 512
    return total
