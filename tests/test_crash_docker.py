"""Crash recovery on the real Docker backend, driven through the `engine` CLI.

Each crashed run is an `engine run` process that ENGINE_TEST_CRASH_IN makes kill
itself with SIGKILL at one point of the run. Then `engine resume`, `engine cancel`
and `engine reap` run as separate processes against the same database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backends.base import MachineSpec, machine_name
from backends.docker import DockerBackend
from engine.engine import Engine
from engine.exceptions import BackendError
from engine.faults import AGENT_STARTED
from engine.observers import RunObserver
from engine.states import State
from tests.helpers import request, settings_for
from tests.support.dockerd import BASE_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ENGINE = Path(sys.executable).with_name("engine")
# Appends a line to output/count on every start, so the test counts starts.
AGENT = "echo started >> output/count; sleep 2; echo out"
# Still runs when `engine resume` starts, so the resume reattaches to it.
LONG_AGENT = "echo started >> output/count; sleep 15; echo out"
NINE_STATES = [state.value for state in State if not state.is_terminal]
CLI_TIMEOUT = 180


def engine_env(tmp_path: Path, docker_host: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ENGINE_", "CONTAINER_RUNTIME"))
    }
    env.update(
        DOCKER_HOST=docker_host,
        ENGINE_DATA_DIR=str(tmp_path / "data"),
        CONTAINER_RUNTIME="docker",
        ENGINE_DOCKER_IMAGE=BASE_IMAGE,
        ENGINE_LEASE_SECONDS="3",
        **extra,
    )
    return env


def engine_cli(
    env: dict[str, str], *args: str, check_code: int | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(ENGINE), *args],
        env=env,
        cwd=env["ENGINE_DATA_DIR"].rsplit("/", 1)[0],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    if check_code is not None:
        assert result.returncode == check_code, (args, result.stdout, result.stderr)
    return result


def engine_json(env: dict[str, str], *args: str, check_code: int = 0) -> Any:
    return json.loads(engine_cli(env, *args, "--json", check_code=check_code).stdout)


def start_crashing_run(
    env: dict[str, str], point: str, group: str, *run_args: str, agent: str = AGENT
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(ENGINE), "run", "--group", group, *run_args, "--", "sh", "-c", agent],
        env={**env, "ENGINE_TEST_CRASH_IN": point},
        cwd=env["ENGINE_DATA_DIR"].rsplit("/", 1)[0],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_killed(process: subprocess.Popen[str]) -> None:
    _, stderr = process.communicate(timeout=CLI_TIMEOUT)
    assert process.returncode == -signal.SIGKILL, stderr


def wait_all_killed(processes: dict[str, subprocess.Popen[str]]) -> None:
    """Wait for every process, then check that each was killed at its point."""
    outcomes = {}
    try:
        for row, process in processes.items():
            _, stderr = process.communicate(timeout=CLI_TIMEOUT)
            outcomes[row] = (process.returncode, stderr)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for row, (returncode, stderr) in outcomes.items():
        assert returncode == -signal.SIGKILL, (row, returncode, stderr)


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert result.returncode == 0, (args, result.stderr)
    return result.stdout.strip()


def containers(label: str) -> list[str]:
    return docker("ps", "--all", "--quiet", "--filter", f"label={label}").split()


def runs_by_group(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {run["group"]: run for run in engine_json(env, "list")}


def agent_starts(run: dict[str, Any]) -> int:
    count = Path(run["run_dir"]) / "work" / "output" / "count"
    return len(count.read_text().splitlines()) if count.exists() else 0


def lose_agent_in(container: str) -> None:
    """Kill the guest runner and drop any exit status, as if the agent vanished."""
    docker(
        "exec", container, "sh", "-c",
        'kill -9 "$(cat /engine/result/pid)" 2>/dev/null; '
        "rm -f /engine/result/exit-status",
    )  # fmt: skip


def agent_state_in(container: str) -> str:
    return docker("exec", container, "sh", "/engine/status.sh").split()[0]


def test_crash_in_every_state(docker_host, tmp_path, capsys):
    env = engine_env(tmp_path, docker_host)
    # Migrate once, so the concurrent runs below do not all create the schema.
    engine_cli(env, "db", "upgrade", check_code=0)
    rows = {point: (point, (), AGENT) for point in NINE_STATES}
    rows[AGENT_STARTED] = (AGENT_STARTED, (), LONG_AGENT)
    rows["agent-lost/fail"] = (AGENT_STARTED, ("--resume-policy", "fail"), AGENT)
    rows["agent-lost/rerun"] = (AGENT_STARTED, ("--resume-policy", "rerun"), AGENT)
    processes = {
        row: start_crashing_run(env, point, row, *args, agent=agent)
        for row, (point, args, agent) in rows.items()
    }
    wait_all_killed(processes)
    crashed = runs_by_group(env)
    running_at_resume = agent_state_in(crashed[AGENT_STARTED]["resource_name"])
    starts_before = {}
    for row in ("agent-lost/fail", "agent-lost/rerun"):
        lose_agent_in(crashed[row]["resource_name"])
        starts_before[row] = int(
            docker("exec", crashed[row]["resource_name"], "sh", "-c",
                   "wc -l < /engine/work/output/count")
        )  # fmt: skip

    resumed = engine_cli(env, "resume", "--all", "--json")
    final = runs_by_group(env)
    reap = engine_json(env, "reap", "--dry-run")
    left = {row: containers(f"engine.execution={final[row]['id']}") for row in rows}
    starts = {
        row: agent_starts(final[row]) or starts_before.get(row, 0) for row in rows
    }

    with capsys.disabled():
        print("\ncrash point        state at crash  final   exit  agent starts  left")
        for row in rows:
            run = final[row]
            print(
                f"{row:18} {crashed[row]['state']:15} {run['state']:7} "
                f"{run['exit_code']!s:5} {starts[row]:<13} {len(left[row])}"
            )
    expected_state = {row: "done" for row in rows}
    expected_state["agent-lost/fail"] = "failed"
    expected_starts = {row: 1 for row in rows}
    expected_starts["agent-lost/rerun"] = 2
    assert running_at_resume == "running"
    assert resumed.returncode == 125, resumed.stderr
    assert len(json.loads(resumed.stdout)) == len(rows)
    for row in rows:
        assert crashed[row]["state"] == rows[row][0].replace(AGENT_STARTED, "executing")
        assert final[row]["state"] == expected_state[row], final[row]
        assert starts[row] == expected_starts[row], row
        assert left[row] == [], row
        assert final[row]["attempt"] == 2, row
    assert final["agent-lost/fail"]["error"]["type"] == "agent_lost"
    assert final["executing"]["exit_code"] == 0
    assert reap["rows"] == []
    assert containers(f"engine.install={final['cloning']['install_id']}") == []


def test_resume_one_run_by_id(docker_host, tmp_path):
    env = engine_env(tmp_path, docker_host)
    wait_killed(start_crashing_run(env, "collecting", "one"))
    crashed = runs_by_group(env)["one"]

    resumed = engine_cli(env, "resume", crashed["id"][:8])
    again = engine_cli(env, "resume", crashed["id"])
    final = runs_by_group(env)["one"]

    assert resumed.returncode == 0, resumed.stderr
    assert crashed["id"] in resumed.stdout
    assert again.returncode == 0, again.stderr
    assert final["state"] == "done"
    assert final["attempt"] == 2
    assert agent_starts(final) == 1
    assert containers(f"engine.execution={crashed['id']}") == []


def test_reap_keeps_other_install(docker_host, tmp_path):
    env_a = engine_env(tmp_path / "a", docker_host)
    env_b = engine_env(tmp_path / "b", docker_host)
    for env in (env_a, env_b):
        Path(env["ENGINE_DATA_DIR"]).parent.mkdir(parents=True)
        wait_killed(start_crashing_run(env, "booting", "g", "--timeout", "1"))
    run_a = runs_by_group(env_a)["g"]
    run_b = runs_by_group(env_b)["g"]
    stray = machine_name(run_a["install_id"], "f" * 16)
    docker("create", "--name", stray, "--network", "none",
           "--label", f"engine.install={run_a['install_id']}",
           "--label", f"engine.execution={'f' * 16}", BASE_IMAGE, "true")  # fmt: skip
    time.sleep(1.2)  # both runs are now past their 1 s timeout

    reaped_a = engine_json(env_a, "reap")
    b_left = containers(f"engine.install={run_b['install_id']}")
    planned_b = engine_json(env_b, "reap", "--dry-run")
    reaped_b = engine_json(env_b, "reap")

    actions_a = {
        row["machine"]: (row["action"], row["outcome"]) for row in reaped_a["rows"]
    }
    assert run_a["install_id"] != run_b["install_id"]
    assert actions_a == {
        run_a["resource_name"]: ("fail-run", "done: run ended failed (timeout)"),
        stray: ("delete", "done"),
    }
    assert containers(f"engine.install={run_a['install_id']}") == []
    assert len(b_left) == 1
    assert [row["machine"] for row in planned_b["rows"]] == [run_b["resource_name"]]
    assert reaped_b["rows"][0]["outcome"] == "done: run ended failed (timeout)"
    assert containers(f"engine.install={run_b['install_id']}") == []


class BreakDockerAtDeleting(RunObserver):
    """Points DOCKER_HOST at a socket that does not exist when deleting starts."""

    def __init__(self, dead_socket: Path):
        self.dead_socket = dead_socket

    def on_transition(self, run, row) -> None:
        if row.to_state == State.DELETING.value:
            os.environ["DOCKER_HOST"] = f"unix://{self.dead_socket}"


async def test_failed_delete_is_reaped(docker_host, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    settings = settings_for(
        tmp_path, container_runtime="docker", engine_docker_image=BASE_IMAGE
    )
    observer = BreakDockerAtDeleting(tmp_path / "no-daemon.sock")
    async with Engine(settings, observers=[observer]) as engine:
        failed = await engine.run(request("true"))
    os.environ["DOCKER_HOST"] = docker_host
    left_after_run = containers(f"engine.execution={failed.id}")
    env = engine_env(tmp_path, docker_host)
    env["ENGINE_DATABASE_URL"] = settings.database_url

    reaped = engine_json(env, "reap")
    shown = engine_json(env, "show", failed.id)

    assert failed.state is State.FAILED
    assert failed.failed_state == "deleting"
    assert failed.error_type == "backend_unavailable"
    assert failed.leaked is True
    assert len(left_after_run) == 1
    assert [(r["machine"], r["action"], r["outcome"]) for r in reaped["rows"]] == [
        (failed.resource_name, "delete", "done")
    ]
    assert containers(f"engine.execution={failed.id}") == []
    assert shown["leaked"] is False
    assert shown["state"] == "failed"


def test_cancel_while_executing(docker_host, tmp_path):
    env = engine_env(tmp_path, docker_host)
    run = subprocess.Popen(
        [str(ENGINE), "run", "--group", "c", "--", "sh", "-c",
         "echo started >> output/count; sleep 60"],
        env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        while record.get("state") != "executing":
            assert time.monotonic() < deadline, "the run never reached executing"
            time.sleep(0.2)
            record = runs_by_group(env).get("c", {})
        time.sleep(0.5)
        started = time.monotonic()
        cancelled = engine_json(env, "cancel", record["id"])
        elapsed = time.monotonic() - started
        _, run_stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()

    assert cancelled["state"] == "failed"
    assert cancelled["error"]["type"] == "cancelled"
    assert cancelled["failed_state"] == "executing"
    assert cancelled["attempt"] == 1
    assert run.returncode == 125, run_stderr
    assert containers(f"engine.execution={record['id']}") == []
    assert elapsed < 10


def test_cancel_of_crashed_run(docker_host, tmp_path):
    env = engine_env(tmp_path, docker_host)
    wait_killed(start_crashing_run(env, AGENT_STARTED, "x"))
    crashed = runs_by_group(env)["x"]

    cancelled = engine_json(env, "cancel", crashed["id"])

    assert cancelled["state"] == "failed"
    assert cancelled["error"]["type"] == "cancelled"
    assert cancelled["attempt"] == 2
    assert containers(f"engine.execution={crashed['id']}") == []


async def test_repeated_create_reuses_container(docker_host, tmp_path):
    backend = DockerBackend(image=BASE_IMAGE)
    spec = MachineSpec(
        name=f"eng-test-{tmp_path.name[-12:]}-reuse",
        execution_id="reuse-1",
        install_id="test",
    )
    try:
        created = await backend.create(spec)
        again = await backend.create(spec)
        await backend.start(again)
        while_running = await backend.create(spec)
        docker("pause", spec.name)
        after_pause = await backend.create(spec)
        foreign = MachineSpec(name=spec.name, execution_id="other", install_id="test")
        with pytest.raises(BackendError) as caught:
            await backend.create(foreign)
    finally:
        await backend.delete_by_name(spec.name)

    assert again.details["container_id"] == created.details["container_id"]
    assert while_running.details["container_id"] == created.details["container_id"]
    assert after_pause.details.get("reused") is None
    assert after_pause.details["container_id"] != created.details["container_id"]
    assert spec.name in str(caught.value)
