"""`engine trace ID`, run as a subprocess against runs made by `engine run`."""

from __future__ import annotations

import json

import pytest

from backends.instant import InstantBackend
from engine.store import Store
from engine.tracing import otlp_json
from engine.tracing.spans import build_spans, default_resource
from tests.helpers import request, settings_for
from tests.support.cli import engine_env, run_engine
from tests.tracing_rows import resume_in_executing

STATES = [
    "requested",
    "cloning",
    "booting",
    "ip-ready",
    "uploading",
    "executing",
    "collecting",
    "deleting",
    "done",
]


@pytest.fixture
def finished_run(tmp_path):
    """Return (env, record dict) of one instant run made through the CLI."""
    env = engine_env(tmp_path)
    result = run_engine(
        ["run", "--backend", "instant", "--json", "--", "true"], env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return env, json.loads(result.stdout)


def test_timeline_lists_every_state(tmp_path, finished_run):
    env, record = finished_run

    result = run_engine(["trace", record["id"][:6]], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert f"execution  {record['id']}  done" in result.stdout
    assert record["trace_id"] in result.stdout
    lines = result.stdout.splitlines()
    for state in STATES:
        assert any(f" {state} " in line for line in lines), state
    assert "█" in result.stdout


def test_json_has_root_then_states(tmp_path, finished_run):
    env, record = finished_run

    result = run_engine(["trace", record["id"], "--json"], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert trace["trace_id"] == record["trace_id"]
    assert trace["root_span_id"] == record["root_span_id"]
    names = [span["name"] for span in trace["spans"]]
    assert names == ["execution", *STATES]
    root, *states = trace["spans"]
    assert root["parent_span_id"] is None
    assert {span["parent_span_id"] for span in states} == {record["root_span_id"]}
    offsets = [span["offset"] for span in states]
    assert offsets == sorted(offsets)
    assert states[0]["offset"] == 0
    assert [span["span_id"] for span in states] == [
        row["span_id"] for row in record["transitions"]
    ]
    assert states[1]["attributes"]["engine.trigger"] == "cloned"


def test_otlp_file_matches_stored_spans(tmp_path, finished_run):
    env, record = finished_run
    target = tmp_path / "trace.json"

    result = run_engine(
        ["trace", record["id"], "--otlp", str(target)], env, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert f"wrote 10 spans as OTLP JSON to {target}" in result.stderr
    data = json.loads(target.read_text())
    message = otlp_json.decode_request(data)
    spans = [
        span
        for resource_spans in message.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    assert len(spans) == 10
    assert {span.trace_id.hex() for span in spans} == {record["trace_id"]}
    store = Store(env["ENGINE_DATABASE_URL"])
    stored = store.get_execution(record["id"], with_transitions=True)
    store.close()
    expected = otlp_json.encode_request(
        build_spans(stored, resource=default_resource())
    )
    assert (
        data["resourceSpans"][0]["scopeSpans"]
        == expected["resourceSpans"][0]["scopeSpans"]
    )


def test_otlp_ids_are_hex(tmp_path, finished_run):
    env, record = finished_run

    result = run_engine(["trace", record["id"], "--otlp", "-"], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    spans = data["resourceSpans"][0]["scopeSpans"][0]["spans"]
    root = [span for span in spans if "parentSpanId" not in span]
    assert [span["spanId"] for span in root] == [record["root_span_id"]]
    assert {span["traceId"] for span in spans} == {record["trace_id"]}
    assert {span["kind"] for span in spans} == {1}


def test_export_sends_stored_trace(tmp_path, finished_run):
    env, record = finished_run
    target = tmp_path / "exported.jsonl"
    env = {**env, "ENGINE_TRACE_EXPORTER": "jsonl", "ENGINE_TRACE_FILE": str(target)}

    result = run_engine(["trace", record["id"], "--export"], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "exported 10 spans through jsonl" in result.stderr
    lines = target.read_text().splitlines()
    assert len(lines) == 1
    assert record["trace_id"] in lines[0]


def test_export_without_exporter_is_usage_error(tmp_path, finished_run):
    env, record = finished_run

    result = run_engine(["trace", record["id"], "--export"], env, cwd=tmp_path)

    assert result.returncode == 2
    assert "ENGINE_TRACE_EXPORTER" in result.stderr


def test_unknown_id_is_usage_error(tmp_path):
    result = run_engine(["trace", "nope"], engine_env(tmp_path), cwd=tmp_path)

    assert result.returncode == 2
    assert "'nope' not found" in result.stderr


async def test_timeline_marks_resumed_run(tmp_path):
    settings = settings_for(tmp_path, container_runtime="instant")
    record = await resume_in_executing(
        settings, InstantBackend(agent_seconds=0.5), request("true")
    )

    result = run_engine(
        ["trace", record.id], {**engine_env(tmp_path), "COLUMNS": "100"}, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines()[4:]}
    assert "ok, interrupted" in lines["executing"]
    assert "ok, resumed" in lines["collecting"]
    assert "interrupted" not in lines["collecting"]
    assert lines["collecting"].split()[2] == "2"
    assert lines["executing"].split()[2] == "1"
