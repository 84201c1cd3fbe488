"""The Docker backend on a real Docker engine, through the Engine API."""

from __future__ import annotations

import pytest

from engine.states import State
from tests.helpers import containers_of, instant_engine, request, settings_for

pytestmark = pytest.mark.docker


def docker_engine(tmp_path, **overrides):
    from engine.engine import Engine

    settings = settings_for(tmp_path, container_runtime="docker", **overrides)
    return Engine(settings)


async def test_happy_path_uploads_and_collects(tmp_path, docker_host):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "greeting.txt").write_text("hello from the host\n")
    script = "cat input/greeting.txt; echo result > output/answer.txt; cat"
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", script, upload_dir=upload, stdin=b"from stdin\n")
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 0
    assert (run_dir / "result" / "stdout").read_text() == (
        "hello from the host\nfrom stdin\n"
    )
    assert (run_dir / "work" / "output" / "answer.txt").read_text() == "result\n"
    assert containers_of(record.id) == []


async def test_container_is_labelled_and_isolated(tmp_path, docker_host):
    script = "cat /proc/net/route | wc -l; hostname"
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("sh", "-c", script))
    run_dir = tmp_path / "data" / "runs" / record.id
    lines = (run_dir / "result" / "stdout").read_text().split()
    # Only the header line: network mode none gives the container no routes.
    assert lines[0] == "1"
    assert record.resource_name == f"eng-{record.install_id}-{record.id}"


async def test_exit_code_three_is_done(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("sh", "-c", "exit 3"))
    assert record.state is State.DONE
    assert record.exit_code == 3


async def test_missing_image_fails_in_cloning(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("true", image="engine-no-such-image:1"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "image_not_found"
    assert "engine-no-such-image:1" in record.error_message
    assert containers_of(record.id) == []


async def test_missing_upload_folder_fails_in_uploading(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("true", upload_dir=tmp_path / "gone"))
    assert record.state is State.FAILED
    assert record.failed_state == "uploading"
    assert record.error_type == "upload_failed"
    assert "gone" in record.error_message
    assert containers_of(record.id) == []


async def test_unknown_command_fails_in_executing(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("no-such-agent-command", "--flag"))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "command_not_found"
    assert "no-such-agent-command" in record.error_message
    assert containers_of(record.id) == []


async def test_timeout_in_executing_removes_container(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("sleep", "30", timeout=3))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "timeout"
    assert containers_of(record.id) == []


async def test_prompt_metacharacters_stay_data(tmp_path, docker_host):
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}) `touch {marker}` ' \" \n; rm -rf /engine"
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(
            request("printf", "%s", hostile, stdin=hostile.encode())
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE
    assert (run_dir / "result" / "stdout").read_text() == hostile
    assert not marker.exists()


async def test_secret_reaches_agent_environment_only(tmp_path, docker_host):
    value = "tok-'quoted' $(not run) \"x\""
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", 'printf %s "$API_TOKEN"', secrets={"API_TOKEN": value})
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert (run_dir / "result" / "stdout").read_text() == value
    stored = [p for p in run_dir.rglob("*") if p.is_file() and p.name != "stdout"]
    for path in stored:
        assert value.encode() not in path.read_bytes(), path


async def test_resource_listing_finds_only_this_install(tmp_path, docker_host):
    from backends.docker import DockerBackend

    async with docker_engine(tmp_path) as engine:
        backend = engine.backend("docker")
        assert isinstance(backend, DockerBackend)
        found = await backend.list_resources(engine.install_id)
    assert found == []
    # The instant engine in another folder has another install id.
    async with instant_engine(tmp_path / "other") as other:
        assert other.install_id != engine.install_id


async def test_share_is_mounted_read_only(tmp_path, docker_host):
    from engine.records import ShareRequest

    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("shared data\n")
    script = (
        "cat /engine/shares/docs/data.txt; touch /engine/shares/docs/new || echo ro"
    )
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(
            request(
                "sh", "-c", script, shares=[ShareRequest(name="docs", host_path=shared)]
            )
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert (run_dir / "result" / "stdout").read_text() == "shared data\nro\n"
    assert not (shared / "new").exists()


@pytest.mark.parametrize("command", [["exit", "5"], ["exec", "true"], ["finish", "9"]])
async def test_shell_builtins_are_not_commands(tmp_path, docker_host, command):
    async with docker_engine(tmp_path, engine_run_timeout=60) as engine:
        record = await engine.run(request(*command))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "command_not_found"
    assert command[0] in record.error_message


async def test_killed_runner_fails_as_agent_lost(tmp_path, docker_host):
    async with docker_engine(tmp_path, engine_run_timeout=60) as engine:
        record = await engine.run(request("sh", "-c", "kill -9 $PPID; sleep 30"))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "agent_lost"
    assert containers_of(record.id) == []


async def test_timed_out_run_keeps_its_output(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(
            request("sh", "-c", "echo before; sleep 30", timeout=3)
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.error_type == "timeout"
    assert (run_dir / "result" / "stdout").read_text() == "before\n"
    assert containers_of(record.id) == []


async def test_unreachable_daemon_leaks_nothing(tmp_path, docker_host, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("true"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "backend_unavailable"
    assert record.leaked is False


async def test_interrupted_create_leaves_no_container(tmp_path, docker_host):
    async with docker_engine(tmp_path, engine_step_timeout=0.005) as engine:
        record = await engine.run(request("true"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "timeout"
    assert containers_of(record.id) == []
