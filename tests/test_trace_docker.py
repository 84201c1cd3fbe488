"""A real Docker run exports its trace over OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import itertools
import json

import pytest

from engine.tracing import otlp_json
from tests.support.cli import engine_env, run_engine
from tests.support.otlp_receiver import OtlpHttpReceiver

pytestmark = [pytest.mark.docker, pytest.mark.slow]

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
TRIGGERS = [
    "claimed",
    "cloned",
    "booted",
    "reachable",
    "uploaded",
    "agent_exited",
    "collected",
    "deleted",
    "deleted",
]
SECRET = "tok-8c1e55a0-secret"
PROMPT = "Summarise the incident report for the on-call rota"


def _attributes(span) -> dict:
    values = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind)
    return values


@pytest.fixture(scope="module")
def exported_run(docker_host, tmp_path_factory):
    """Run one Docker execution with OTLP/HTTP export; return (record, receiver)."""
    tmp_path = tmp_path_factory.mktemp("otlp-docker")
    (tmp_path / "prompt.txt").write_text(PROMPT)
    with OtlpHttpReceiver() as receiver:
        env = engine_env(
            tmp_path,
            CONTAINER_RUNTIME="docker",
            DOCKER_HOST=docker_host,
            ENGINE_TRACE_EXPORTER="otlp-http",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            API_TOKEN=SECRET,
        )
        result = run_engine(
            [
                "run",
                "--json",
                "--secret",
                "API_TOKEN",
                "--input",
                "prompt.txt",
                "--",
                "sh",
                "-c",
                'wc -c; test -n "$API_TOKEN"',
            ],
            env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        record = json.loads(result.stdout)
        # The CLI exits only after the exporter flushed, so all spans are in.
        receiver.wait_for_spans(10, timeout=5)
    return record, receiver, env, tmp_path


def test_one_trace_with_ten_spans(exported_run):
    record, receiver, _, _ = exported_run
    spans = receiver.spans()

    assert record["state"] == "done"
    assert len(spans) == 10
    assert {span.trace_id.hex() for span in spans} == {record["trace_id"]}
    assert sorted(span.name for span in spans) == sorted([*STATES, "execution"])


def test_parents_are_the_root(exported_run):
    record, receiver, _, _ = exported_run
    spans = receiver.spans()
    roots = [span for span in spans if not span.parent_span_id]

    assert len(roots) == 1
    assert roots[0].name == "execution"
    assert roots[0].span_id.hex() == record["root_span_id"]
    for span in spans:
        if span is not roots[0]:
            assert span.parent_span_id.hex() == record["root_span_id"], span.name
    rows = {row["to_state"]: row["span_id"] for row in record["transitions"]}
    for span in spans:
        if span.name in rows:
            assert span.span_id.hex() == rows[span.name]


def test_timestamps_are_in_order(exported_run):
    _, receiver, _, _ = exported_run
    spans = receiver.spans()
    root = next(span for span in spans if not span.parent_span_id)
    states = sorted(
        (span for span in spans if span.parent_span_id),
        key=lambda span: span.start_time_unix_nano,
    )

    assert [span.name for span in states] == STATES
    assert states[0].start_time_unix_nano == root.start_time_unix_nano
    assert states[-1].end_time_unix_nano == root.end_time_unix_nano
    for span in spans:
        assert span.start_time_unix_nano <= span.end_time_unix_nano, span.name
    for before, after in itertools.pairwise(states):
        assert before.end_time_unix_nano == after.start_time_unix_nano
    executing = states[STATES.index("executing")]
    assert executing.end_time_unix_nano > executing.start_time_unix_nano


def test_attributes_are_present(exported_run):
    record, receiver, _, _ = exported_run
    spans = {span.name: span for span in receiver.spans()}

    for state, trigger in zip(STATES, TRIGGERS, strict=True):
        attributes = _attributes(spans[state])
        assert attributes["engine.execution.id"] == record["id"], state
        assert attributes["engine.state"] == state
        assert attributes["engine.trigger"] == trigger, state
        assert attributes["engine.backend"] == "docker"
        assert attributes["engine.machine.name"] == record["resource_name"]
        assert attributes["engine.attempt"] == 1
        assert attributes["engine.worker"]
        assert attributes["engine.outcome"] == "ok"
        assert "error.type" not in attributes
    root = _attributes(spans["execution"])
    assert root["engine.outcome"] == "ok"
    assert root["engine.state"] == "done"
    assert root["process.exit.code"] == 0


def test_resource_names_the_service(exported_run):
    _, receiver, _, _ = exported_run

    for item in receiver.resource_spans():
        attributes = {a.key: a.value.string_value for a in item.resource.attributes}
        assert attributes["service.name"] == "engine"
        assert attributes["service.version"]


def test_secret_and_prompt_not_sent(exported_run):
    _, receiver, _, _ = exported_run
    sent = b"".join(receiver.raw_bodies)

    assert SECRET.encode() not in sent
    assert PROMPT.encode() not in sent
    assert b"API_TOKEN" not in sent
    assert b"wc -c" not in sent


def test_stored_trace_matches_live_spans(exported_run):
    record, receiver, env, tmp_path = exported_run

    result = run_engine(["trace", record["id"], "--otlp", "-"], env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    stored = otlp_json.decode_request(json.loads(result.stdout))
    stored_spans = {
        span.span_id: span
        for item in stored.resource_spans
        for scope in item.scope_spans
        for span in scope.spans
    }
    live_spans = {span.span_id: span for span in receiver.spans()}
    assert stored_spans == live_spans
