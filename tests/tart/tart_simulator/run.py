"""`tart run`: lock the VM, boot the sandbox, lease an address, wait for a stop.

The order follows Sources/tart/Commands/Run.swift: open the VM, take the global lock,
reset a MAC that a running VM already uses, lock config.json ("already running",
exit 2), then start. The simulator checks the VM limit while it still holds the
global lock, where tart learns of it from Virtualization.framework at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType

from . import leases, sandbox
from .errors import TartError, UsageError, vm_already_running, vm_limit_exceeded
from .sandbox import SHARED_FILES_ROOT, DirectoryShare
from .settings import Settings
from .storage import VMDir, list_vms, open_vm, random_mac, storage_lock, try_lock

logger = logging.getLogger("tart_simulator.run")
AUTOMOUNT_TAG = "com.apple.virtio-fs.automount"


class _StopRequest:
    """Set by SIGINT (what `tart stop` sends) or SIGTERM."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True


def parse_share(spec: str) -> tuple[str | None, Path, bool, str]:
    """Parse `[name:]path[:ro][,tag=TAG]` like tart's DirectoryShare."""
    parts = spec.split(":")
    read_only, tag, found = False, AUTOMOUNT_TAG, False
    for option in parts[-1].split(","):
        if option == "ro":
            read_only, found = True, True
        elif option.startswith("tag="):
            tag, found = option[4:], True
    rest = ":".join(parts[:-1] if found else parts)
    name, separator, path = rest.partition(":")
    if not separator:
        name, path = "", rest
    return (name or None), Path(path).expanduser(), read_only, tag


def directory_shares(specs: list[str]) -> list[DirectoryShare]:
    """Mount automount-tagged shares where macOS does: /Volumes/My Shared Files."""
    parsed = [parse_share(spec) for spec in specs]
    automount = [share for share in parsed if share[3] == AUTOMOUNT_TAG]
    if len(automount) > 1 and any(name is None for name, *_ in automount):
        raise UsageError(
            "invalid --dir syntax: for multiple directory shares each one of them "
            "should be named",
            command="run",
        )
    shares = []
    for name, path, read_only, _ in automount:
        if not path.is_dir():
            # NOTE: tart's own message for a missing share directory is not known.
            raise TartError(f"directory share {path} does not exist or is no directory")
        guest_path = (
            SHARED_FILES_ROOT if name is None else f"{SHARED_FILES_ROOT}/{name}"
        )
        shares.append(DirectoryShare(path.resolve(), guest_path, read_only))
    return shares


def _reset_colliding_mac(home: Path, vm: VMDir) -> None:
    mac = vm.read_config()["macAddress"]
    running_macs = [
        other.read_config()["macAddress"]
        for other in list_vms(home)
        if other.name != vm.name and other.running()
    ]
    if mac in running_macs:
        print("There is already a running VM with the same MAC address!")
        print("Resetting VM to assign a new MAC address...", flush=True)
        config = vm.read_config()
        config["macAddress"] = random_mac()
        vm.write_config(config)


def _lock_vm(home: Path, vm: VMDir, settings: Settings) -> tuple[int, str]:
    """Lock config.json and check the VM limit, both under the global lock.

    Returns the locked descriptor and the VM's MAC address.
    """
    with storage_lock(home):
        _reset_colliding_mac(home, vm)
        mac = vm.read_config()["macAddress"]
        lock_fd = os.open(vm.config_path, os.O_RDWR)
        if not try_lock(lock_fd):
            os.close(lock_fd)
            raise vm_already_running(vm.name)
        # Never open this VM's config.json again in this process: closing any
        # descriptor of it would release the POSIX lock.
        others = [
            other.name
            for other in list_vms(home)
            if other.name != vm.name and other.running()
        ]
        if len(others) >= settings.vm_limit:
            os.close(lock_fd)
            raise vm_limit_exceeded(others)
    return lock_fd, mac


def _write_run_state(vm: VMDir, **fields: object) -> None:
    state_path = vm.runtime / "run.json"
    temporary = state_path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), **fields}, indent=2))
    temporary.replace(state_path)


def _boot(
    home: Path,
    vm: VMDir,
    settings: Settings,
    shares: list[DirectoryShare],
    mac: str,
    stop: _StopRequest,
) -> tuple[subprocess.Popen[bytes], leases.AddressHold | None]:
    """Start the sandbox and publish the lease once the guest is reachable."""
    vm.runtime.mkdir(exist_ok=True)
    (vm.runtime / "sshd_config").unlink(missing_ok=True)
    hold = leases.allocate(home, settings, mac)
    if hold is None:
        logger.warning("no free address for %s in the simulated range", vm.name)
    else:
        sandbox.write_sshd_config(vm, hold.address, settings.ssh_port)

    argv = sandbox.bwrap_argv(
        vm, shares, sandbox.guest_command(settings.ssh_delay, hold is not None)
    )
    process = sandbox.start(argv, vm.runtime / "guest.log")
    _write_run_state(vm, bwrap_pid=process.pid, address=None)
    logger.info("started %s: bwrap pid %d", vm.name, process.pid)
    if hold is None:
        return process, None

    _sleep_unless_stopped(settings.boot_delay, stop)
    if settings.ssh_delay == 0 and not stop.requested:
        remaining = max(settings.boot_timeout - settings.boot_delay, 1.0)
        if not sandbox.wait_listening(
            hold.address, settings.ssh_port, process, remaining
        ):
            _terminate(process)
            hold.close()
            raise TartError(
                f"VM {vm.name} failed to boot: sshd did not listen on "
                f"{hold.address}:{settings.ssh_port}; see {vm.runtime / 'guest.log'}"
            )

    if not stop.requested:
        leases.record(home, mac, hold.address, vm.name)
        logger.info("leased %s to %s (%s)", hold.address, vm.name, mac)
        _write_run_state(vm, bwrap_pid=process.pid, address=hold.address)
    return process, hold


def _sleep_unless_stopped(seconds: float, stop: _StopRequest) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop the guest: kill the sandbox's PID 1, which ends every guest process.

    Killing PID 1 first lets the outer bwrap reap it and exit. Killing the outer
    bwrap alone would also work (--die-with-parent), but would leave PID 1 to be
    reaped by the host's init.
    """
    for pid, parent, _ in sandbox.descendants(process.pid):
        if parent == process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        logger.warning("bwrap %d did not exit after its PID 1 was killed", process.pid)
        process.kill()
        process.wait()


def run_vm(home: Path, settings: Settings, name: str, dir_specs: list[str]) -> int:
    vm = open_vm(home, name)
    shares = directory_shares(dir_specs)
    stop = _StopRequest()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    lock_fd, mac = _lock_vm(home, vm, settings)
    sandbox.ensure_host_keys(vm)
    process, hold = _boot(home, vm, settings, shares, mac, stop)
    while not stop.requested and process.poll() is None:
        time.sleep(0.1)
    if stop.requested:
        print("Stopping VM...", flush=True)
    else:
        print("guest has stopped the virtual machine", flush=True)
    _terminate(process)
    if hold is not None:
        hold.close()
        if not settings.stale_leases:
            leases.release(home, mac)
    logger.info("stopped %s", vm.name)
    os.close(lock_fd)
    return 0
