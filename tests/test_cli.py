"""The `engine` command as a subprocess: output, exit codes and bad input."""

from __future__ import annotations

import json

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
