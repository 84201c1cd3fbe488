"""Tests of the tart simulator in tests/tart: its CLI as a subprocess, real sshd.

Each test gets its own TART_HOME with a base VM made by `tart-sim create-base`, and
stops every VM it started with `tart stop`, which signals the PID that holds the
VM's lock. Needs root, bubblewrap and openssh-server/-client.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

BIN_DIR = Path(__file__).parent / "tart" / "bin"
BASE = "tart_nanoclaw_base"
SSH_OPTIONS = [
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
]  # fmt: skip


class Simulator:
    """One TART_HOME with a base VM, and the `tart run` processes started in it."""

    def __init__(self, home: Path, key: Path) -> None:
        self.home = home
        self.key = key
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("TART_SIM_", "TART_VM_"))
        }
        self.env["PATH"] = f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}"
        self.env["TART_HOME"] = str(home)
        self.runs: dict[str, subprocess.Popen[bytes]] = {}

    def tart(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tart", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tart-sim", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def clone(self, name: str) -> None:
        result = self.tart("clone", BASE, name)
        assert result.returncode == 0, result.stderr

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.home / f"run-{name}.log", "wb")  # noqa: SIM115
        with log:
            process = subprocess.Popen(
                ["tart", "run", "--no-graphics", *args, name],
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.runs[name] = process
        return process

    def boot(self, name: str, *args: str) -> str:
        """Start `name` and return its address once `tart ip --wait` reports it."""
        self.start(name, *args)
        result = self.tart("ip", "--wait", "30", name)
        assert result.returncode == 0, (result.stderr, self.run_log(name))
        return result.stdout.strip()

    def run_log(self, name: str) -> str:
        return (self.home / f"run-{name}.log").read_text()

    def run_state(self, name: str) -> dict[str, object]:
        return json.loads((self.home / "vms" / name / "sim" / "run.json").read_text())

    def ssh(
        self, address: str, command: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(self.key), *SSH_OPTIONS, f"admin@{address}", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def stop_all(self) -> None:
        for name, process in self.runs.items():
            if process.poll() is None:
                self.tart("stop", "--timeout", "10", name)
            process.wait(timeout=20)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for_guest_command(sim: Simulator, name: str, cmdline: list[str]) -> int:
    """Return the host PID of a guest process with `cmdline`, waiting up to 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for row in json.loads(sim.admin("ps", name).stdout):
            if row["cmdline"] == cmdline:
                return int(row["pid"])
        time.sleep(0.2)
    raise AssertionError(f"no guest process {cmdline} in {name}")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    for tool in ("bwrap", "sshd", "ssh", "ssh-keygen", "openssl"):
        if shutil.which(tool, path=f"{os.environ['PATH']}:/usr/sbin") is None:
            pytest.fail(f"{tool} not found: install bubblewrap, openssh-server/-client")
    if os.geteuid() != 0:
        pytest.fail("the tart simulator needs root to run sshd in bubblewrap")
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
    )
    simulator = Simulator(tmp_path / "tart-home", key)
    created = simulator.admin("create-base", "--authorized-key", f"{key}.pub")
    assert created.returncode == 0, created.stderr
    sandboxes: list[int] = []
    try:
        yield simulator
    finally:
        for name in simulator.runs:
            run_state = simulator.home / "vms" / name / "sim" / "run.json"
            if run_state.exists():
                sandboxes.append(int(simulator.run_state(name)["bwrap_pid"]))
        simulator.stop_all()
    leftovers = [pid for pid in sandboxes if _process_alive(pid)]
    assert leftovers == [], f"sandboxes still running after tart stop: {leftovers}"


def test_clone_run_ip_and_ssh_command(sim: Simulator) -> None:
    sim.clone("vm1")

    before = sim.tart("ip", "vm1")
    address = sim.boot("vm1")
    result = sim.ssh(address, "id -un; hostname; echo $HOME")

    assert before.returncode == 1
    assert before.stderr == "no IP address found, is your VM running?\n"
    assert address.startswith("127.0.0.")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["admin", "vm1", "/Users/admin"]


def test_password_login_with_asyncssh(sim: Simulator) -> None:
    sim.clone("vm1")
    address = sim.boot("vm1")

    async def run_command() -> str:
        async with asyncssh.connect(
            address, username="admin", password="admin", known_hosts=None,
            client_keys=None,
        ) as connection:  # fmt: skip
            completed = await connection.run("echo logged-in", check=True)
            return str(completed.stdout)

    assert asyncio.run(run_command()) == "logged-in\n"


def test_list_and_get_report_running_state(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.boot("vm1")

    listed = json.loads(sim.tart("list", "--format", "json").stdout)
    text = sim.tart("list").stdout.splitlines()
    info = json.loads(sim.tart("get", "vm1", "--format", "json").stdout)

    rows = {row["Name"]: row for row in listed}
    assert set(rows) == {BASE, "vm1"}
    assert rows["vm1"]["Running"] is True
    assert rows["vm1"]["State"] == "running"
    assert rows[BASE]["State"] == "stopped"
    assert rows["vm1"]["Source"] == "local"
    assert text[0].split() == ["Source", "Name", "Disk", "Size", "Accessed", "State"]
    assert info["CPU"] == 4
    assert info["Memory"] == 8192
    assert info["State"] == "running"


def test_ip_wait_covers_boot_delay(sim: Simulator) -> None:
    sim.clone("vm1")
    (sim.home / "sim.json").write_text(json.dumps({"boot_delay": 4}))
    sim.start("vm1")

    early = sim.tart("ip", "vm1")
    started = time.monotonic()
    waited = sim.tart("ip", "--wait", "20", "vm1")
    elapsed = time.monotonic() - started

    assert early.returncode == 1
    assert early.stderr == "no IP address found\n"
    assert waited.returncode == 0, waited.stderr
    assert elapsed > 1.5
    assert sim.ssh(waited.stdout.strip(), "true").returncode == 0


def test_ssh_delay_lets_ip_answer_before_sshd(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.start("vm1", env={"TART_SIM_SSH_DELAY": "3"})
    address = sim.tart("ip", "--wait", "20", "vm1").stdout.strip()

    early = sim.ssh(address, "true")
    deadline = time.monotonic() + 20
    late = early
    while late.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        late = sim.ssh(address, "true")

    assert early.returncode == 255
    assert late.returncode == 0, late.stderr


def test_second_run_of_same_vm_fails(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.boot("vm1")

    second = sim.tart("run", "--no-graphics", "vm1")

    assert second.returncode == 2
    assert second.stderr == 'VM "vm1" is already running!\n'


def test_third_vm_exceeds_limit(sim: Simulator) -> None:
    for name in ("vm1", "vm2", "vm3"):
        sim.clone(name)
    first = sim.boot("vm1")
    second = sim.boot("vm2")

    third = sim.tart("run", "--no-graphics", "vm3")

    assert first != second
    assert third.returncode == 1
    assert third.stderr == (
        "The number of VMs exceeds the system limit (other running VMs: vm1, vm2)\n"
    )
    assert sim.tart("get", "vm3", "--format", "json").returncode == 0
    assert (
        json.loads(sim.tart("get", "vm3", "--format", "json").stdout)["Running"]
        is False
    )


def test_custom_vm_limit(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.clone("vm2")
    sim.boot("vm1")

    refused = sim.tart("run", "vm2", env={"TART_SIM_VM_LIMIT": "1"})

    assert refused.returncode == 1
    assert "(other running VMs: vm1)" in refused.stderr


def test_delete_refuses_running_vm(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.boot("vm1")

    refused = sim.tart("delete", "vm1")
    stopped = sim.tart("stop", "vm1")
    exit_code = sim.runs["vm1"].wait(timeout=20)
    deleted = sim.tart("delete", "vm1")
    missing = sim.tart("delete", "vm1")

    assert refused.returncode == 1
    assert refused.stderr == 'VM "vm1" is running\n'
    assert stopped.returncode == 0
    assert exit_code == 0
    assert deleted.returncode == 0
    assert missing.returncode == 2
    assert missing.stderr == 'the specified VM "vm1" does not exist\n'


def test_stop_exit_codes(sim: Simulator) -> None:
    sim.clone("vm1")

    not_running = sim.tart("stop", "vm1")
    missing = sim.tart("stop", "nope")

    assert not_running.returncode == 2
    assert not_running.stderr == 'VM "vm1" is not running\n'
    assert missing.returncode == 2
    assert missing.stderr == 'the specified VM "nope" does not exist\n'


def test_clone_replaces_existing_vm_silently(sim: Simulator) -> None:
    sim.clone("vm1")
    marker = sim.home / "vms" / "vm1" / "disk" / "Users" / "admin" / "marker"
    marker.write_text("old disk")
    old_mac = json.loads((sim.home / "vms/vm1/config.json").read_text())["macAddress"]

    again = sim.tart("clone", BASE, "vm1")

    new_mac = json.loads((sim.home / "vms/vm1/config.json").read_text())["macAddress"]
    assert again.returncode == 0
    assert again.stderr == ""
    assert not marker.exists()
    assert new_mac != old_mac


def test_clone_reject_mode_needs_overwrite(sim: Simulator) -> None:
    sim.clone("vm1")
    reject = {"TART_SIM_CLONE_EXISTING": "reject"}

    refused = sim.tart("clone", BASE, "vm1", env=reject)
    forced = sim.tart("clone", "--overwrite", BASE, "vm1", env=reject)

    assert refused.returncode == 64
    assert refused.stderr.startswith(
        'Error: VM "vm1" already exists, use --overwrite to replace it\n'
    )
    assert forced.returncode == 0, forced.stderr


def test_drop_connections_keeps_setsid_process(sim: Simulator) -> None:
    sim.clone("vm1")
    address = sim.boot("vm1")
    started = sim.ssh(
        address,
        "setsid sh -c 'echo $$ > ~/agent.pid; exec sleep 300' "
        "</dev/null >/dev/null 2>&1 & echo started",
    )
    session = subprocess.Popen(
        ["ssh", "-i", str(sim.key), *SSH_OPTIONS, f"admin@{address}", "sleep 120"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_guest_command(sim, "vm1", ["sleep", "120"])

    dropped = sim.admin("drop-connections", "vm1")
    session_exit = session.wait(timeout=15)
    alive = sim.ssh(address, 'kill -0 "$(cat ~/agent.pid)" && echo alive')

    assert started.stdout == "started\n"
    assert dropped.returncode == 0, dropped.stderr
    assert session_exit == 255
    assert alive.stdout == "alive\n", alive.stderr


def test_stop_kills_setsid_processes(sim: Simulator) -> None:
    sim.clone("vm1")
    address = sim.boot("vm1")
    sim.ssh(address, "setsid sleep 300 </dev/null >/dev/null 2>&1 &")
    agent_pid = _wait_for_guest_command(sim, "vm1", ["sleep", "300"])

    stopped = sim.tart("stop", "vm1")
    sim.runs["vm1"].wait(timeout=20)

    assert stopped.returncode == 0
    assert not _process_alive(agent_pid)
    assert sim.tart("list", "--format", "json").stdout.count('"running"') == 0


def test_killing_tart_run_stops_vm(sim: Simulator) -> None:
    sim.clone("vm1")
    sim.boot("vm1")
    bwrap_pid = int(sim.run_state("vm1")["bwrap_pid"])

    os.kill(sim.runs["vm1"].pid, signal.SIGKILL)
    sim.runs["vm1"].wait(timeout=10)
    deadline = time.monotonic() + 10
    while _process_alive(bwrap_pid) and time.monotonic() < deadline:
        time.sleep(0.1)

    assert not _process_alive(bwrap_pid)
    assert sim.tart("stop", "vm1").returncode == 2


def test_lease_outlives_vm_unless_disabled(sim: Simulator) -> None:
    sim.clone("vm1")
    address = sim.boot("vm1")
    sim.tart("stop", "vm1")
    sim.runs["vm1"].wait(timeout=20)

    stale = sim.tart("ip", "vm1")
    arp = sim.tart("ip", "--resolver", "arp", "vm1")
    sim.tart("set", "vm1", "--random-mac")
    after_new_mac = sim.tart("ip", "vm1")

    assert stale.stdout.strip() == address
    assert arp.returncode == 1
    assert after_new_mac.returncode == 1
    assert after_new_mac.stderr == "no IP address found, is your VM running?\n"


def test_set_changes_resources_and_mac(sim: Simulator) -> None:
    sim.clone("vm1")
    config_path = sim.home / "vms" / "vm1" / "config.json"
    old_mac = json.loads(config_path.read_text())["macAddress"]

    changed = sim.tart("set", "vm1", "--cpu", "6", "--memory", "16384", "--random-mac")
    too_small = sim.tart("set", "vm1", "--cpu", "2")

    info = json.loads(sim.tart("get", "vm1", "--format", "json").stdout)
    assert changed.returncode == 0, changed.stderr
    assert info["CPU"] == 6
    assert info["Memory"] == 16384
    assert json.loads(config_path.read_text())["macAddress"] != old_mac
    assert too_small.returncode == 1
    assert "VM should have 4 CPU cores at minimum (requested 2)" in too_small.stderr


def test_dir_share_mounts_under_shared_files(sim: Simulator, tmp_path: Path) -> None:
    shared = tmp_path / "project"
    shared.mkdir()
    (shared / "input.txt").write_text("from host")
    sim.clone("vm1")

    address = sim.boot("vm1", f"--dir=project:{shared}:ro")
    read = sim.ssh(address, "cat '/Volumes/My Shared Files/project/input.txt'")
    write = sim.ssh(address, "touch '/Volumes/My Shared Files/project/new'")

    assert read.stdout == "from host", read.stderr
    assert write.returncode != 0
    assert not (shared / "new").exists()


def test_unknown_option_is_usage_error(sim: Simulator) -> None:
    result = sim.tart("ip", "--bogus", "vm1")

    assert result.returncode == 64
    assert result.stderr.startswith("Error: ")
