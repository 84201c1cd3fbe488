"""The `engine` command as a subprocess: output, exit codes and bad input."""

from __future__ import annotations

import json
import os

import pytest

from engine.store import Store
from tests.helpers import containers_of, run_cli


@pytest.fixture
def cli_env(tmp_path):
    return {
        "ENGINE_DATA_DIR": str(tmp_path / "data"),
        "ENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'engine.db'}",
    }


def _row_count(tmp_path) -> int:
    store = Store(f"sqlite:///{tmp_path / 'engine.db'}")
    try:
        return len(store.list_executions(limit=None))
    finally:
        store.close()


@pytest.mark.docker
def test_run_prints_output_and_show_lists_transitions(tmp_path, cli_env, docker_host):
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "greeting.txt").write_text("greetings\n")
    script = "echo hello; cat input/greeting.txt"
    result = run_cli(
        "run", "--upload", str(upload), "--", "sh", "-c", script, env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello\ngreetings\n"

    listed = run_cli("list", "--json", env=cli_env)
    execution_id = json.loads(listed.stdout)[0]["id"]
    shown = run_cli("show", execution_id, "--json", env=cli_env)
    record = json.loads(shown.stdout)
    assert record["state"] == "done"
    assert len(record["transitions"]) == 9
    assert record["transitions"][-1]["to_state"] == "done"
    assert all(row["at"] for row in record["transitions"])
    assert all(row["duration"] is not None for row in record["transitions"][1:])
    assert containers_of(execution_id) == []


@pytest.mark.docker
def test_run_exit_code_is_the_agents(tmp_path, cli_env, docker_host):
    result = run_cli("run", "--json", "--", "sh", "-c", "exit 3", env=cli_env)
    record = json.loads(result.stdout)
    assert result.returncode == 3
    assert record["state"] == "done"
    assert record["exit_code"] == 3
    assert record["backend"] == "docker"
    assert record["resource_name"].endswith(record["id"])


@pytest.mark.docker
def test_failed_run_exits_125(tmp_path, cli_env, docker_host):
    result = run_cli("run", "--image", "engine-missing:0", "--", "true", env=cli_env)
    assert result.returncode == 125
    assert b"engine-missing:0" in result.stderr


def test_unknown_backend_is_usage_error(tmp_path, cli_env):
    result = run_cli("run", "--backend", "vmware", "--", "true", env=cli_env)
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1
    assert b"'vmware'" in result.stderr
    assert _row_count(tmp_path) == 0


def test_malformed_env_file_is_usage_error(tmp_path, cli_env):
    (tmp_path / ".env").write_text("ENGINE_STEP_TIMEOUT=soon\n")
    result = run_cli(
        "run", "--backend", "instant", "--", "true", env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1
    assert b"ENGINE_STEP_TIMEOUT" in result.stderr
    assert b"'soon'" in result.stderr
    assert not (tmp_path / "engine.db").exists()


def test_missing_upload_path_is_usage_error(tmp_path, cli_env):
    missing = tmp_path / "no-such-folder"
    result = run_cli(
        "run",
        "--backend",
        "instant",
        "--upload",
        str(missing),
        "--",
        "true",
        env=cli_env,
    )
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1
    assert str(missing).encode() in result.stderr
    assert not (tmp_path / "engine.db").exists()


def test_unknown_execution_id_is_usage_error(tmp_path, cli_env):
    result = run_cli("show", "0123456789abcdef", env=cli_env)
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1
    assert b"0123456789abcdef" in result.stderr


def test_missing_command_is_usage_error(tmp_path, cli_env):
    result = run_cli("run", "--backend", "instant", env=cli_env)
    assert result.returncode == 2
    assert b"engine run -- CMD" in result.stderr


def test_instant_run_show_and_list(tmp_path, cli_env):
    result = run_cli("run", "--backend", "instant", "--json", "--", "true", env=cli_env)
    record = json.loads(result.stdout)
    listed = run_cli("list", "--state", "done", env=cli_env)
    shown = run_cli("show", record["id"][:6], env=cli_env)
    assert result.returncode == 0
    assert record["id"].encode() in listed.stdout
    assert b"deleting" in shown.stdout
    assert shown.returncode == 0


def test_db_upgrade_is_idempotent(tmp_path, cli_env):
    first = run_cli("db", "upgrade", env=cli_env)
    second = run_cli("db", "upgrade", env=cli_env)
    assert first.stdout == b"database migrated\n"
    assert second.stdout == b"database is up to date\n"


def test_parallel_first_runs_share_one_migration(tmp_path, cli_env):
    import subprocess

    from tests.helpers import engine_command

    processes = [
        subprocess.Popen(
            [*engine_command(), "run", "--backend", "instant", "--", "true"],
            env={**os.environ, **cli_env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    results = [
        (process.wait(timeout=120), process.stderr.read()) for process in processes
    ]
    for process in processes:
        process.stderr.close()
    assert [code for code, _ in results] == [0] * 6, results
    assert _row_count(tmp_path) == 6


@pytest.mark.parametrize("url", ["nonsense", "sqlite:////proc/no-such-dir/engine.db"])
def test_unusable_database_is_usage_error(tmp_path, cli_env, url):
    result = run_cli("list", env={**cli_env, "ENGINE_DATABASE_URL": url})
    assert result.returncode == 2
    assert result.stderr.startswith(b"engine: error: cannot open database")
    assert b"Traceback" not in result.stderr
    assert result.stderr.count(b"\n") == 1


def test_host_network_is_rejected(tmp_path, cli_env):
    result = run_cli(
        "run", "--backend", "instant", "--network", "host", "--", "true", env=cli_env
    )
    setting = run_cli("list", env={**cli_env, "ENGINE_DOCKER_NETWORK": "host"})
    assert result.returncode == 2
    assert b"'host'" in result.stderr
    assert setting.returncode == 2
    assert b"ENGINE_DOCKER_NETWORK" in setting.stderr


def test_closed_stdout_pipe_exits_quietly(tmp_path, cli_env):
    import subprocess

    from tests.helpers import engine_command

    for _ in range(3):
        run_cli("run", "--backend", "instant", "--", "true", env=cli_env)
    pipeline = subprocess.run(
        f"{' '.join(engine_command())} list --json | head -c 1",
        shell=True,
        env={**os.environ, **cli_env},
        capture_output=True,
        check=False,
    )
    assert pipeline.stdout == b"["
    assert b"Traceback" not in pipeline.stderr


def test_verbose_flag_after_subcommand(tmp_path, cli_env):
    result = run_cli("list", "-v", env=cli_env)
    assert result.returncode == 0


def test_input_folder_and_empty_id_are_rejected(tmp_path, cli_env):
    folder = run_cli(
        "run",
        "--backend",
        "instant",
        "--input",
        str(tmp_path),
        "--",
        "cat",
        env=cli_env,
    )
    empty = run_cli("show", "", env=cli_env)
    assert folder.returncode == 2
    assert b"is a folder" in folder.stderr
    assert empty.returncode == 2
    assert b"empty" in empty.stderr


@pytest.mark.docker
def test_interrupt_cancels_and_exits_130(tmp_path, cli_env, docker_host):
    import signal
    import subprocess
    import time

    from tests.helpers import engine_command

    process = subprocess.Popen(
        [*engine_command(), "run", "--json", "--", "sleep", "30"],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    state = None
    while time.monotonic() < deadline and state != "executing":
        time.sleep(0.2)
        listed = run_cli("list", "--json", env=cli_env)
        records = json.loads(listed.stdout or b"[]")
        state = records[0]["state"] if records else None
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    record = json.loads(stdout)
    assert state == "executing"
    assert process.returncode == 130
    assert record["state"] == "failed"
    assert record["error"]["type"] == "cancelled"
    assert containers_of(record["id"]) == []


def test_interrupt_before_submit_writes_nothing(tmp_path, cli_env):
    import signal
    import subprocess
    import time

    from tests.helpers import engine_command

    process = subprocess.Popen(
        [*engine_command(), "run", "--backend", "instant", "--", "true"],
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Late enough that the interpreter runs, early enough that modules still load.
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (0, 130), stderr
    assert b"Traceback" not in stderr
