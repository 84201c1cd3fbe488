"""The apple-container backend against the `container` simulator on real Docker.

Apple's `container` needs macOS, so `tests/apple_container/bin/container` replaces
it here (see docs/backends/apple-container.md). Each simulated container is a real
Docker container with `--network none` on the tests' Docker daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backends.apple_container import AppleContainerBackend
from backends.base import MachineSpec, machine_name
from engine.engine import Engine
from engine.exceptions import BackendUnavailableError
from engine.states import State
from tests.helpers import request, settings_for

BIN_DIR = Path(__file__).parent / "apple_container" / "bin"
SIM_HOME_LABEL = "org.engine.container-sim.home"

pytestmark = pytest.mark.apple_container


@pytest.fixture
def sim_home(tmp_path, monkeypatch, docker_host):
    """A started simulator home, with the simulated `container` first on PATH."""
    home = tmp_path / "container-sim"
    monkeypatch.setenv("CONTAINER_SIM_HOME", str(home))
    monkeypatch.setenv("PATH", f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}")
    for name in ("CONTAINER_SIM_JSON_SHAPE", "CONTAINER_SIM_DELETE_FAILURES"):
        monkeypatch.delenv(name, raising=False)
    _container("system", "start")
    yield home
    _remove_leftovers(home)


def _container(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "container"), *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


def _simulated_containers() -> list[str]:
    """Return the ids that `container list --all --format json` prints."""
    listed = json.loads(_container("list", "--all", "--format", "json").stdout)
    return [item["configuration"]["id"] for item in listed]


def _remove_leftovers(home: Path) -> None:
    found = subprocess.run(
        [
            "docker",
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label={SIM_HOME_LABEL}={home}",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if found:
        subprocess.run(["docker", "rm", "--force", *found], check=False)


def apple_engine(tmp_path: Path, **overrides) -> Engine:
    values = {"container_runtime": "apple-container", "engine_step_timeout": 60}
    values.update(overrides)
    return Engine(settings_for(tmp_path, **values))


def _output(tmp_path: Path, record, stream: str = "stdout") -> str:
    return (tmp_path / "data" / "runs" / record.id / "result" / stream).read_text()


async def test_full_run_uploads_and_collects(tmp_path, sim_home):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "note.txt").write_text("from the host\n")
    script = "cat input/note.txt; cat; echo made > output/result.txt; exit 3"
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", script, upload_dir=upload, stdin=b"stdin line\n")
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 3
    assert record.backend == "apple-container"
    assert record.resource_name == f"eng-{record.install_id}-{record.id}"
    assert _output(tmp_path, record) == "from the host\nstdin line\n"
    assert (run_dir / "work" / "output" / "result.txt").read_text() == "made\n"
    assert _simulated_containers() == []


async def test_large_upload_arrives_whole(tmp_path, sim_home):
    upload = tmp_path / "upload"
    upload.mkdir()
    data = os.urandom(3 << 20)
    (upload / "blob.bin").write_bytes(data)
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", "wc -c < input/blob.bin", upload_dir=upload)
        )
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record).strip() == str(len(data))


async def test_missing_image_fails_in_cloning(tmp_path, sim_home):
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("true", image="engine-no-such-image:1"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "image_not_found"
    assert "engine-no-such-image:1" in record.error_message
    assert "ENGINE_APPLE_IMAGE" in record.error_message
    assert _simulated_containers() == []


async def test_timeout_in_executing_removes_container(tmp_path, sim_home):
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("sleep", "30", timeout=4))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "timeout"
    assert not record.leaked
    assert _simulated_containers() == []


async def test_hostile_input_reaches_agent_as_data(tmp_path, sim_home):
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    hostile = f"$(touch {marker}) `touch {marker}` 'single' \"double\"\nline two\n"
    async with apple_engine(tmp_path) as engine:
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
    assert _simulated_containers() == []


async def test_unknown_command_fails_in_executing(tmp_path, sim_home):
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("no-such-agent-command", "--flag"))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "command_not_found"
    assert "no-such-agent-command" in record.error_message
    assert _simulated_containers() == []


async def test_secret_reaches_agent_environment_only(tmp_path, sim_home):
    value = "tok-'quoted' $(not run) \"x\""
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", 'printf %s "$API_TOKEN"', secrets={"API_TOKEN": value})
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == value
    stored = [p for p in run_dir.rglob("*") if p.is_file() and p.name != "stdout"]
    for path in stored:
        assert value.encode() not in path.read_bytes(), path


async def test_share_is_mounted_read_only(tmp_path, sim_home):
    from engine.records import ShareRequest

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("shared data\n")
    script = (
        "cat /engine/shares/docs/data.txt; touch /engine/shares/docs/new || echo ro"
    )
    share = ShareRequest(name="docs", host_path=shared)
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("sh", "-c", script, shares=[share]))
    assert record.state is State.DONE, record.error_message
    assert _output(tmp_path, record) == "shared data\nro\n"
    assert not (shared / "new").exists()


@pytest.mark.parametrize("shape", ["2026", "2025"])
async def test_list_resources_finds_this_install(
    tmp_path, sim_home, monkeypatch, shape
):
    monkeypatch.setenv("CONTAINER_SIM_JSON_SHAPE", shape)
    backend = AppleContainerBackend(image="engine-base:latest")
    spec = MachineSpec(
        name=machine_name("inst1", "exec1"), execution_id="exec1", install_id="inst1"
    )
    machine = await backend.start(await backend.create(spec))
    found = await backend.list_resources("inst1")
    other = await backend.list_resources("inst2")
    await backend.delete(machine)
    await backend.delete_by_name(machine.name, "exec1")
    assert [resource.name for resource in found] == [spec.name]
    assert found[0].execution_id == "exec1"
    assert found[0].install_id == "inst1"
    assert found[0].running is True
    assert found[0].created_at is not None
    assert abs((datetime.now(UTC) - found[0].created_at).total_seconds()) < 120
    assert other == []
    assert _simulated_containers() == []


async def test_failed_delete_is_retried(tmp_path, sim_home, monkeypatch):
    monkeypatch.setenv("CONTAINER_SIM_DELETE_FAILURES", "1")
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("echo", "done"))
    assert record.state is State.DONE, record.error_message
    assert not record.leaked
    assert _simulated_containers() == []


async def test_taken_name_fails_and_keeps_owner(tmp_path, sim_home):
    async with apple_engine(tmp_path) as engine:
        execution_id = await engine.submit(request("true"))
        name = machine_name(engine.install_id, execution_id)
        _container(
            "create",
            "--name",
            name,
            "--label",
            "engine.execution=someone-else",
            "engine-base:latest",
            "sleep",
            "60",
        )
        record = await engine.drive(execution_id, request("true"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert "is taken" in record.error_message
    assert _simulated_containers() == [name]


async def test_stopped_system_service_is_reported(tmp_path, sim_home):
    _container("system", "stop")
    async with apple_engine(tmp_path) as engine:
        record = await engine.run(request("true"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "backend_unavailable"
    assert "container system start" in record.error_message


async def test_missing_cli_names_install_command(tmp_path, sim_home, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    async with apple_engine(tmp_path) as engine:
        with pytest.raises(BackendUnavailableError) as caught:
            await engine.run(request("true"))
        stored = engine.list()
    assert "brew install --cask container" in str(caught.value)
    assert "github.com/apple/container/releases" in str(caught.value)
    assert stored == []
