"""tart subcommands other than `run`: clone, ip, list, get, set, stop, delete.

Each function returns the exit code, prints what tart prints on stdout, and raises
TartError for failures. The source file of each behaviour is named in
docs/backends/tart-simulator.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from . import leases, render
from .errors import (
    PrefixedError,
    TartError,
    UsageError,
    vm_does_not_exist,
    vm_is_running,
    vm_not_running,
)
from .settings import Settings
from .storage import (
    VMDir,
    allocated_bytes,
    list_vms,
    lock_holder,
    open_vm,
    random_mac,
    size_bytes,
    storage_lock,
    try_lock,
    vm_dir,
)

GIGABYTE = 1000 * 1000 * 1000


def _copy_vm(source: VMDir, target: VMDir) -> None:
    """Copy a VM, keeping the guest tree's owners and disk.img sparse."""
    target.base.mkdir()
    shutil.copyfile(source.config_path, target.config_path)
    shutil.copyfile(source.nvram, target.nvram)
    with open(target.disk_image, "wb") as image:
        image.truncate(source.disk_image.stat().st_size)
    subprocess.run(
        ["cp", "-a", "--reflink=auto", str(source.disk_root), str(target.disk_root)],
        check=True,
        capture_output=True,
    )


def _replace(home: Path, new_name: str, prepared: VMDir) -> None:
    """Move a prepared VM into place, replacing a stopped VM of the same name."""
    target = vm_dir(home, new_name)
    if target.config_path.exists():
        fd = os.open(target.config_path, os.O_RDWR)
        try:
            if not try_lock(fd):
                raise vm_is_running(new_name)
            shutil.rmtree(target.base)
        finally:
            os.close(fd)
    elif target.base.exists():
        shutil.rmtree(target.base)
    prepared.base.rename(target.base)


def clone(
    home: Path, settings: Settings, source: str, new_name: str, overwrite: bool
) -> int:
    if "/" in new_name:
        raise UsageError("<new-name> should be a local name", command="clone")
    if "/" in source:
        raise TartError(
            f"the simulator cannot pull remote images such as {source}; create a "
            "local base VM with `tart-sim create-base` and clone that"
        )
    if (
        settings.clone_existing == "reject"
        and not overwrite
        and vm_dir(home, new_name).initialized
    ):
        raise UsageError(
            f'VM "{new_name}" already exists, use --overwrite to replace it',
            command="clone",
        )
    source_vm = open_vm(home, source)
    prepared = VMDir(home / "tmp" / str(uuid.uuid4()))
    try:
        with storage_lock(home):
            _copy_vm(source_vm, prepared)
            # tart gives the clone a new MAC whenever a local VM has the source's
            # MAC, which is always true for a local source.
            config = prepared.read_config()
            config["macAddress"] = random_mac()
            prepared.write_config(config)
            shutil.rmtree(prepared.guest_etc / "ssh", ignore_errors=True)
            _replace(home, new_name, prepared)
    finally:
        if prepared.base.exists():
            shutil.rmtree(prepared.base)
    return 0


def _resolve_ip(home: Path, vm: VMDir, resolver: str) -> str | None:
    mac = vm.read_config()["macAddress"]
    if resolver == "dhcp":
        return leases.lookup(home, mac)
    # The ARP table and the guest agent only know VMs that run and have booted.
    if not vm.running():
        return None
    return leases.lookup(home, mac)


def ip(home: Path, name: str, wait: int, resolver: str) -> int:
    vm = open_vm(home, name)
    deadline = time.monotonic() + wait
    while True:
        address = _resolve_ip(home, vm, resolver)
        if address is not None:
            print(address)
            return 0
        time.sleep(1)
        if time.monotonic() >= deadline:
            break
    message = "no IP address found"
    if not vm.running():
        message += ", is your VM running?"
    if resolver == "agent":
        message += (
            " (also make sure that Guest agent for Tart is running inside of a VM)"
        )
    raise TartError(message)


def list_command(home: Path, source: str | None, output: str, quiet: bool) -> int:
    rows = []
    if source in (None, "local"):
        for vm in list_vms(home):
            accessed = vm.base.stat().st_atime
            rows.append(
                {
                    "Source": "local",
                    "Name": vm.name,
                    "Disk": size_bytes(vm) // GIGABYTE,
                    "Size": allocated_bytes(vm) // GIGABYTE,
                    "Accessed": render.iso8601(accessed)
                    if output == "json"
                    else render.relative(accessed),
                    "Running": vm.running(),
                    "State": vm.state(),
                }
            )
    if quiet:
        for row in rows:
            print(row["Name"])
    elif output == "json":
        print(render.render_json(rows))
    else:
        print(render.render_table(rows))
    return 0


def get(home: Path, name: str, output: str) -> int:
    vm = open_vm(home, name)
    config = vm.read_config()
    display = config.get("display", {"width": 1024, "height": 768})
    info = {
        "OS": config.get("os", "darwin"),
        "CPU": config["cpuCount"],
        "Memory": config["memorySize"] // 1024 // 1024,
        "Disk": size_bytes(vm) // GIGABYTE,
        "DiskFormat": config.get("diskFormat", "raw"),
        "Size": f"{allocated_bytes(vm) / GIGABYTE:.3f}",
        "Display": f"{display['width']}x{display['height']}",
        "Running": vm.running(),
        "State": vm.state(),
    }
    if output == "json":
        print(render.render_json(info))
    else:
        print(render.render_table([info]))
    return 0


def _resize_disk(vm: VMDir, size_gb: int) -> None:
    current = vm.disk_image.stat().st_size
    desired = size_gb * GIGABYTE
    if desired < current:
        raise TartError(
            f"new disk size of {desired // GIGABYTE} GB should be larger than the "
            f"current disk size of {current // GIGABYTE} GB"
        )
    os.truncate(vm.disk_image, desired)


def _parse_display(spec: str, current: dict[str, int]) -> dict[str, int]:
    """Parse WIDTHxHEIGHT[pt|px][@PPI]. tart keeps the current value for a 0 part."""
    size = spec.split("@")[0].lower().removesuffix("px").removesuffix("pt")
    width_text, _, height_text = size.partition("x")
    try:
        width, height = int(width_text or 0), int(height_text or 0)
    except ValueError:
        raise UsageError(
            f"invalid --display {spec!r}: expected WIDTHxHEIGHT, e.g. 1920x1080",
            command="set",
        ) from None
    return {
        "width": width or current.get("width", 1024),
        "height": height or current.get("height", 768),
    }


def set_command(
    home: Path,
    name: str,
    cpu: int | None,
    memory: int | None,
    random_mac_flag: bool,
    display: str | None,
    disk_size: int | None,
) -> int:
    vm = open_vm(home, name)
    config = vm.read_config()
    if cpu is not None:
        if cpu < config["cpuCountMin"]:
            raise PrefixedError(
                f"LessThanMinimalResourcesError: VM should have "
                f"{config['cpuCountMin']} CPU cores at minimum (requested {cpu})"
            )
        config["cpuCount"] = cpu
    if memory is not None:
        requested = memory * 1024 * 1024
        if requested < config["memorySizeMin"]:
            raise PrefixedError(
                f"LessThanMinimalResourcesError: VM should have "
                f"{config['memorySizeMin']} bytes of memory at minimum "
                f"(requested {requested})"
            )
        config["memorySize"] = requested
    if display is not None:
        config["display"] = _parse_display(display, config.get("display", {}))
    if random_mac_flag:
        config["macAddress"] = random_mac()
    vm.write_config(config)
    if disk_size is not None:
        _resize_disk(vm, disk_size)
    return 0


def stop(home: Path, name: str, timeout: int) -> int:
    vm = open_vm(home, name)
    suspended_state = vm.base / "state.vzvmsave"
    if vm.state() == "suspended":
        suspended_state.unlink()
        return 0
    pid = lock_holder(vm.config_path)
    if pid == 0:
        raise vm_not_running(name)
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_holder(vm.config_path) == 0:
            return 0
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError as exc:
        raise TartError(
            f'failed to forcefully terminate the VM "{name}": {exc.strerror}'
        ) from exc
    return 0


def delete(home: Path, names: list[str]) -> int:
    for name in names:
        vm = vm_dir(home, name)
        try:
            fd = os.open(vm.config_path, os.O_RDWR)
        except FileNotFoundError:
            raise vm_does_not_exist(name) from None
        try:
            if not try_lock(fd):
                raise vm_is_running(name)
            shutil.rmtree(vm.base)
        finally:
            os.close(fd)
    return 0
