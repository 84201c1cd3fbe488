"""The Tart backend against the tart simulator, with real sshd inside bubblewrap.

tart needs macOS, so `tests/tart/bin/tart` stands in for it (see
docs/backends/tart-simulator.md). Everything after `tart ip` is real SSH.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from backends.base import machine_name
from engine.engine import Engine
from engine.exceptions import BackendUnavailableError
from engine.states import State
from tests.helpers import request, settings_for

BIN_DIR = Path(__file__).parent / "tart" / "bin"
PASSWORD = "tart-Pass-" + uuid.uuid4().hex[:8]

pytestmark = pytest.mark.tart


@pytest.fixture
def tart_home(tmp_path, monkeypatch):
    """A TART_HOME with a base VM, the simulator first on PATH."""
    home = tmp_path / "tart-home"
    monkeypatch.setenv("TART_HOME", str(home))
    monkeypatch.setenv("PATH", f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}")
    for name in list(os.environ):
        if name.startswith(("TART_SIM_", "TART_VM_")):
            monkeypatch.delenv(name)
    subprocess.run(
        ["tart-sim", "create-base", "--password-stdin"],
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
    )
    yield home
    _stop_everything(home)


def _tart(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "tart"), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def _vm_names() -> list[str]:
    return [vm["Name"] for vm in json.loads(_tart("list", "--format", "json").stdout)]


def _stop_everything(home: Path) -> None:
    if not (home / "vms").is_dir():
        return
    for vm in json.loads(_tart("list", "--format", "json").stdout):
        if vm["Running"]:
            _tart("stop", vm["Name"], check=False)


def tart_engine(tmp_path: Path, **overrides) -> Engine:
    values = {
        "container_runtime": "tart",
        "tart_vm_password": PASSWORD,
        "tart_ssh_timeout": 30,
        "engine_step_timeout": 60,
    }
    values.update(overrides)
    return Engine(settings_for(tmp_path, **values))


def _output(tmp_path: Path, record, stream: str = "stdout") -> str:
    return (tmp_path / "data" / "runs" / record.id / "result" / stream).read_text()


async def test_full_run_returns_output_and_deletes_vm(tmp_path, tart_home):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "note.txt").write_text("from the host\n")
    script = "cat input/note.txt; cat; echo made > output/result.txt; exit 4"
    async with tart_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", script, upload_dir=upload, stdin=b"stdin line\n")
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 4
    assert _output(tmp_path, record) == "from the host\nstdin line\n"
    assert (run_dir / "work" / "output" / "result.txt").read_text() == "made\n"
    assert record.address is not None
    assert record.address.startswith("127.0.0.")
    assert record.resource_name not in _vm_names()
    assert "tart_nanoclaw_base" in _vm_names()


async def test_no_address_at_first_is_retried(tmp_path, tart_home, monkeypatch):
    monkeypatch.setenv("TART_SIM_BOOT_DELAY", "3")
    async with tart_engine(tmp_path) as engine:
        record = await engine.run(request("echo", "late"))
    waited = [row for row in record.transitions if row.from_state == "ip-ready"]
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == "late\n"
    assert waited[0].duration >= 2.5


async def test_third_vm_waits_for_a_slot(tmp_path, tart_home):
    others = []
    for index in range(2):
        name = f"other-{index}"
        _tart("clone", "tart_nanoclaw_base", name)
        others.append(
            subprocess.Popen(
                [str(BIN_DIR / "tart"), "run", name, "--no-graphics"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
    _tart("ip", "other-0", "--wait", "30")
    _tart("ip", "other-1", "--wait", "30")

    async def free_a_slot_later() -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(_tart, "stop", "other-0")

    async with tart_engine(tmp_path) as engine:
        releaser = asyncio.create_task(free_a_slot_later())
        record = await engine.run(request("echo", "third"))
        await releaser
    booting = [row for row in record.transitions if row.from_state == "booting"]
    for process in others:
        _tart("stop", process.args[2], check=False)
        process.wait(timeout=30)
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == "third\n"
    assert booting[0].duration >= 2.5


async def test_existing_clone_target_is_never_replaced(tmp_path, tart_home):
    async with tart_engine(tmp_path) as engine:
        execution_id = await engine.submit(request("cat", "/Users/admin/marker.txt"))
        name = machine_name(engine.install_id, execution_id)
        _tart("clone", "tart_nanoclaw_base", name)
        marker = tart_home / "vms" / name / "disk" / "Users" / "admin" / "marker.txt"
        marker.write_text("made before the run\n")
        record = await engine.drive(
            execution_id, request("cat", "/Users/admin/marker.txt")
        )
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == "made before the run\n"
    assert name not in _vm_names()


async def test_wrong_password_fails_and_deletes_vm(tmp_path, tart_home):
    async with tart_engine(
        tmp_path, tart_vm_password="wrong-password", tart_ssh_timeout=20
    ) as engine:
        record = await engine.run(request("true"))
    ready = [row for row in record.transitions if row.from_state == "ip-ready"]
    assert record.state is State.FAILED
    assert record.failed_state == "ip-ready"
    assert record.error_type == "ssh_auth_failed"
    assert "TART_VM_PASSWORD" in record.error_message
    assert "wrong-password" not in record.error_message
    assert ready[0].duration < 20
    assert record.resource_name not in _vm_names()


async def test_dropped_ssh_keeps_agent_running(tmp_path, tart_home):
    script = "echo started >> output/starts; sleep 4; echo finished"
    async with tart_engine(tmp_path) as engine:
        task = asyncio.create_task(engine.run(request("sh", "-c", script)))
        execution_id = await _wait_for_state(engine, State.EXECUTING)
        name = machine_name(engine.install_id, execution_id)
        await asyncio.sleep(1.5)
        dropped = await asyncio.to_thread(
            subprocess.run,
            ["tart-sim", "drop-connections", name],
            capture_output=True,
            text=True,
        )
        record = await task
    run_dir = tmp_path / "data" / "runs" / record.id
    assert dropped.returncode == 0, dropped.stderr
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 0
    assert _output(tmp_path, record) == "finished\n"
    assert (run_dir / "work" / "output" / "starts").read_text() == "started\n"


async def test_deleting_a_missing_vm_succeeds(tmp_path, tart_home):
    async with tart_engine(tmp_path) as engine:
        backend = engine.backend("tart")
        await backend.delete_by_name("eng-0000000000-gone")
    assert "eng-0000000000-gone" not in _vm_names()


async def test_missing_tart_names_install_command(tmp_path, tart_home, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    async with tart_engine(tmp_path) as engine:
        with pytest.raises(BackendUnavailableError) as caught:
            await engine.run(request("true"))
        stored = engine.list()
    assert "brew install cirruslabs/cli/tart" in str(caught.value)
    assert stored == []


async def test_hostile_input_reaches_agent_as_data(tmp_path, tart_home):
    marker = Path("/tmp") / f"pwned-{uuid.uuid4().hex}"
    hostile = f"$(touch {marker}) `touch {marker}` 'single' \"double\"\nline two\n"
    async with tart_engine(tmp_path) as engine:
        record = await engine.run(
            request(
                "sh",
                "-c",
                'cat; printf "%s" "$1"',
                "agent",
                hostile,
                stdin=hostile.encode(),
            )
        )
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == hostile + hostile
    assert not marker.exists()


async def test_password_and_secret_never_in_argv(tmp_path, tart_home):
    secret = "secret-" + uuid.uuid4().hex
    script = 'sleep 3; printf %s "$API_KEY"'
    async with tart_engine(tmp_path) as engine:
        task = asyncio.create_task(
            engine.run(request("sh", "-c", script, secrets={"API_KEY": secret}))
        )
        await _wait_for_state(engine, State.EXECUTING)
        await asyncio.sleep(1)
        found = _processes_containing([PASSWORD, secret])
        record = await task
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == secret
    assert found["cmdline"] == []
    assert found["environ"] == []


def _processes_containing(values: list[str]) -> dict[str, list[int]]:
    """Return host processes whose argv or environment contains one of `values`.

    Every process counts for argv. The environment check skips processes in
    another PID namespace: those run inside the simulated VM, where the agent's
    environment is meant to hold its secrets.
    """
    host_namespace = os.readlink("/proc/self/ns/pid")
    found: dict[str, list[int]] = {"cmdline": [], "environ": []}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            in_guest = os.readlink(entry / "ns" / "pid") != host_namespace
        except OSError:
            continue
        for kind in ("cmdline", "environ"):
            if kind == "environ" and in_guest:
                continue
            try:
                data = (entry / kind).read_bytes()
            except OSError:
                continue
            if any(value.encode() in data for value in values):
                found[kind].append(int(entry.name))
    return found


async def _wait_for_state(engine: Engine, state: State, timeout: float = 60) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for record in engine.list():
            if record.state is state:
                return record.id
        await asyncio.sleep(0.1)
    raise AssertionError(f"no execution reached {state} in {timeout} s")


async def test_share_appears_under_shared_files(tmp_path, tart_home):
    from engine.records import ShareRequest

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("shared data\n")
    shared.chmod(0o755)
    path = "/Volumes/My Shared Files/docs/data.txt"
    async with tart_engine(tmp_path) as engine:
        record = await engine.run(
            request("cat", path, shares=[ShareRequest(name="docs", host_path=shared)])
        )
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == "shared data\n"
