"""Loopback addresses for simulated VMs and a DHCP-like lease table.

A running VM holds its address 127.0.0.N by keeping an flock(2) on
STATE_DIR/127.0.0.N.lock, so no two running VMs on this machine get the same address,
whatever their $TART_HOME. The kernel drops the lock when the `tart run` process dies.

`tart ip` with the default "dhcp" resolver reads $TART_HOME/sim/leases.json, keyed by
MAC address like macOS's DHCP lease file. A lease is written once the VM has booted
and, like a real lease, outlives the VM unless TART_SIM_STALE_LEASES=0.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .settings import Settings


def _leases_path(home: Path) -> Path:
    return home / "sim" / "leases.json"


@contextlib.contextmanager
def _leases_locked(home: Path) -> Iterator[dict[str, Any]]:
    """Yield the lease table under an flock and save it when the block ends."""
    lock_path = home / "sim" / "leases.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        leases = read_leases(home)
        yield leases
        temporary = _leases_path(home).with_suffix(".tmp")
        temporary.write_text(json.dumps(leases, indent=2, sort_keys=True))
        temporary.replace(_leases_path(home))
    finally:
        os.close(fd)


def read_leases(home: Path) -> dict[str, Any]:
    try:
        return json.loads(_leases_path(home).read_text())
    except FileNotFoundError:
        return {}


def lookup(home: Path, mac: str) -> str | None:
    lease = read_leases(home).get(mac)
    return lease["ip"] if lease else None


def record(home: Path, mac: str, address: str, vm_name: str) -> None:
    """Lease `address` to `mac`, dropping any older lease of the same address."""
    with _leases_locked(home) as leases:
        for other_mac in [
            key for key, value in leases.items() if value["ip"] == address
        ]:
            del leases[other_mac]
        leases[mac] = {"ip": address, "vm": vm_name, "leased_at": time.time()}


def release(home: Path, mac: str) -> None:
    with _leases_locked(home) as leases:
        leases.pop(mac, None)


class AddressHold:
    """An address held by this process until `close()` or exit."""

    def __init__(self, address: str, fd: int) -> None:
        self.address = address
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _try_hold(state_dir: Path, address: str) -> AddressHold | None:
    fd = os.open(state_dir / f"{address}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return AddressHold(address, fd)


def _port_free(address: str, port: int) -> bool:
    """Check that sshd could listen on address:port (it sets SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _candidates(settings: Settings, leases: dict[str, Any], mac: str) -> list[str]:
    """Order addresses like a DHCP server: this MAC's lease, unleased, oldest lease."""
    pool = [f"127.0.0.{n}" for n in range(settings.ip_first, settings.ip_last + 1)]
    leased_at = {lease["ip"]: lease["leased_at"] for lease in leases.values()}
    own = leases.get(mac, {}).get("ip")
    ordered = [own] if own in pool else []
    ordered += [address for address in pool if address not in leased_at]
    ordered += sorted(
        (address for address in pool if address in leased_at and address != own),
        key=lambda address: leased_at[address],
    )
    return ordered


def allocate(home: Path, settings: Settings, mac: str) -> AddressHold | None:
    """Hold a free address for `mac`, or return None when every one is taken."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    for address in _candidates(settings, read_leases(home), mac):
        hold = _try_hold(settings.state_dir, address)
        if hold is None:
            continue
        if _port_free(address, settings.ssh_port):
            return hold
        hold.close()
    return None
