"""A real trace viewer: a Docker run exported to Arize Phoenix and read back.

Phoenix runs offline on loopback from its own venv (scripts/install-phoenix.sh).
The engine exports over OTLP/HTTP, and the spans are read back through
Phoenix's REST API. Phoenix keeps no span links and no resource attributes
other than the project name, so those are checked in test_tracing_spans.py.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.support.cli import engine_env, run_engine
from tests.support.phoenix import (
    PhoenixError,
    start_phoenix,
    stop_phoenix,
    wait_for_spans,
)

pytestmark = [pytest.mark.phoenix, pytest.mark.docker, pytest.mark.slow]

PROJECT = "engine-tests"
STATES = {
    "requested",
    "cloning",
    "booting",
    "ip-ready",
    "uploading",
    "executing",
    "collecting",
    "deleting",
    "done",
}


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    try:
        server = start_phoenix(tmp_path_factory.mktemp("phoenix"))
    except PhoenixError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield server
    finally:
        stop_phoenix(server)


def _run_exported(tmp_path, docker_host, phoenix, *command):
    env = engine_env(
        tmp_path,
        CONTAINER_RUNTIME="docker",
        DOCKER_HOST=docker_host,
        ENGINE_TRACE_EXPORTER="otlp-http",
        OTEL_EXPORTER_OTLP_ENDPOINT=phoenix.base_url,
        OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={PROJECT}",
    )
    result = run_engine(["run", "--json", "--", *command], env, cwd=tmp_path)
    return result, json.loads(result.stdout)


def test_phoenix_returns_run_spans(tmp_path, docker_host, phoenix):
    result, record = _run_exported(tmp_path, docker_host, phoenix, "echo", "hi")
    assert result.returncode == 0, result.stderr

    spans = wait_for_spans(phoenix.base_url, PROJECT, record["trace_id"], 10)

    assert len(spans) == 10
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {*STATES, "execution"}
    root = by_name["execution"]
    assert root["parent_id"] is None
    assert root["context"]["span_id"] == record["root_span_id"]
    for state in STATES:
        span = by_name[state]
        assert span["context"]["trace_id"] == record["trace_id"]
        assert span["parent_id"] == record["root_span_id"], state
        assert span["status_code"] == "OK"
        assert span["attributes"]["engine.state"] == state
        assert span["attributes"]["engine.execution.id"] == record["id"]
        assert span["attributes"]["engine.backend"] == "docker"
        assert span["attributes"]["engine.machine.name"] == record["resource_name"]
        assert span["attributes"]["engine.attempt"] == 1
    assert root["attributes"]["process.exit.code"] == 0
    starts = sorted(
        datetime.fromisoformat(by_name[name]["start_time"]) for name in STATES
    )
    assert starts[0] == datetime.fromisoformat(root["start_time"])


def test_phoenix_shows_failed_step(tmp_path, docker_host, phoenix):
    result, record = _run_exported(
        tmp_path, docker_host, phoenix, "no-such-command-4417"
    )
    assert result.returncode == 125

    spans = wait_for_spans(phoenix.base_url, PROJECT, record["trace_id"], 9)

    by_name = {span["name"]: span for span in spans}
    executing = by_name["executing"]
    assert executing["status_code"] == "ERROR"
    assert executing["attributes"]["error.type"] == record["error"]["type"]
    assert executing["attributes"]["engine.outcome"] == "error"
    assert by_name["execution"]["status_code"] == "ERROR"
    assert by_name["failed"]["attributes"]["engine.state"] == "failed"
