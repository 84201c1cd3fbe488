"""Spans built from hand-written transition rows."""

from __future__ import annotations

import itertools
from datetime import timedelta

from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import StatusCode

from engine.tracing import otlp_json, spans
from engine.tracing.spans import build_spans, nanoseconds
from tests.tracing_rows import START, Step, chain_of, happy_steps, record_of

RESOURCE = Resource.create({"service.name": "engine"})


def _by_name(built):
    return {span.name: span for span in built}


def test_happy_path_has_span_per_state_and_root():
    record = record_of(chain_of(happy_steps()).rows)
    built = build_spans(record, resource=RESOURCE)

    names = [span.name for span in built]
    assert names == [
        "requested",
        "cloning",
        "booting",
        "ip-ready",
        "uploading",
        "executing",
        "collecting",
        "deleting",
        "done",
        "execution",
    ]
    root = built[-1]
    assert root.parent is None
    assert root.context.span_id == int(record.root_span_id, 16)
    assert {span.context.trace_id for span in built} == {int(record.trace_id, 16)}
    for row, span in zip(record.transitions, built[:-1], strict=True):
        assert span.context.span_id == int(row.span_id, 16)
        assert span.parent.span_id == root.context.span_id
        assert span.start_time == nanoseconds(row.at)


def test_happy_path_times_are_contiguous():
    record = record_of(chain_of(happy_steps()).rows)
    built = build_spans(record, resource=RESOURCE)
    states, root = built[:-1], built[-1]

    for before, after in itertools.pairwise(states):
        assert before.end_time == after.start_time
    assert states[0].start_time == root.start_time == nanoseconds(START)
    assert states[-1].start_time == states[-1].end_time == root.end_time
    assert root.end_time - root.start_time == 8 * 10**9


def test_state_span_attributes_and_status():
    record = record_of(chain_of(happy_steps()).rows)
    cloning = _by_name(build_spans(record, resource=RESOURCE))["cloning"]

    assert dict(cloning.attributes) == {
        "engine.execution.id": "exec0001",
        "engine.backend": "docker",
        "engine.machine.name": "eng-install01-exec0001",
        "engine.state": "cloning",
        "engine.attempt": 1,
        "engine.worker": "host:100:1",
        "engine.transition.seq": 2,
        "engine.outcome": "ok",
        "engine.trigger": "cloned",
    }
    assert cloning.status.status_code is StatusCode.OK
    assert cloning.links == ()


def test_root_and_terminal_span_attributes():
    record = record_of(chain_of(happy_steps()).rows, exit_code=3)
    built = _by_name(build_spans(record, resource=RESOURCE))

    root = built["execution"]
    assert root.attributes["engine.state"] == "done"
    assert root.attributes["engine.outcome"] == "ok"
    assert root.attributes["process.exit.code"] == 3
    assert "error.type" not in root.attributes
    assert built["done"].attributes["engine.trigger"] == "deleted"
    assert built["done"].attributes["engine.outcome"] == "ok"


def test_failed_step_span_is_error():
    steps = [
        Step("requested", "requested", 0),
        Step("cloning", "claimed", 1),
        Step("deleting", "step_failed", 2, details={"error_type": "image_not_found"}),
        Step("failed", "deleted", 3),
    ]
    record = record_of(
        chain_of(steps).rows, error_type="image_not_found", failed_state="cloning"
    )
    built = _by_name(build_spans(record, resource=RESOURCE))

    cloning = built["cloning"]
    assert cloning.status.status_code is StatusCode.ERROR
    assert cloning.status.description == "image_not_found"
    assert cloning.attributes["error.type"] == "image_not_found"
    assert cloning.attributes["engine.outcome"] == "error"
    assert cloning.attributes["engine.trigger"] == "step_failed"
    assert built["deleting"].status.status_code is StatusCode.OK
    assert built["failed"].attributes["error.type"] == "image_not_found"
    assert built["failed"].status.status_code is StatusCode.ERROR
    assert built["execution"].attributes["engine.outcome"] == "error"
    assert built["execution"].attributes["error.type"] == "image_not_found"


def test_timed_out_step_has_timeout_outcome():
    steps = [
        Step("requested", "requested", 0),
        Step("cloning", "claimed", 1),
        Step("booting", "cloned", 2),
        Step("deleting", "timed_out", 9, details={"error_type": "timeout"}),
        Step("failed", "deleted", 10),
    ]
    record = record_of(chain_of(steps).rows, error_type="timeout")
    booting = _by_name(build_spans(record, resource=RESOURCE))["booting"]

    assert booting.attributes["engine.outcome"] == "timeout"
    assert booting.attributes["error.type"] == "timeout"
    assert booting.status.status_code is StatusCode.ERROR


def test_delete_failure_without_error_type_uses_trigger():
    steps = [
        Step("requested", "requested", 0),
        Step("cloning", "claimed", 1),
        Step("deleting", "step_failed", 2, details={"error_type": "backend_error"}),
        Step("failed", "delete_failed", 3, details={"leaked": True}),
    ]
    record = record_of(chain_of(steps).rows, error_type="backend_error")
    deleting = _by_name(build_spans(record, resource=RESOURCE))["deleting"]

    assert deleting.attributes["error.type"] == "delete_failed"
    assert deleting.attributes["engine.outcome"] == "error"


def test_resumed_run_marks_interrupted_span():
    # Attempt 1 entered executing (seq 6) and died; attempt 2 left it.
    record = record_of(chain_of(happy_steps(attempt_from_seq=7)).rows)
    built = build_spans(record, resource=RESOURCE)
    by_name = _by_name(built)

    executing = by_name["executing"]
    assert executing.attributes["engine.interrupted"] is True
    assert executing.attributes["engine.attempt"] == 1
    assert executing.attributes["engine.outcome"] == "ok"
    interrupted = [
        span.name for span in built if "engine.interrupted" in span.attributes
    ]
    assert interrupted == ["executing"]
    assert by_name["collecting"].attributes["engine.attempt"] == 2
    assert len(built) == 10


def test_resumed_run_links_first_new_span():
    record = record_of(chain_of(happy_steps(attempt_from_seq=7)).rows)
    built = build_spans(record, resource=RESOURCE)
    by_name = _by_name(built)

    links = by_name["collecting"].links
    assert len(links) == 1
    assert links[0].context.span_id == by_name["executing"].context.span_id
    assert links[0].context.trace_id == by_name["executing"].context.trace_id
    assert links[0].attributes["engine.link.reason"] == "resumed"
    assert links[0].attributes["engine.attempt"] == 1
    linked = [span.name for span in built if span.links]
    assert linked == ["collecting"]
    assert by_name["execution"].attributes["engine.attempt"] == 2


def test_resume_row_in_same_state():
    # A resume that records its own row while staying in executing.
    steps = happy_steps()[:6]
    steps.append(Step("executing", "resumed", 5.5, attempt=2))
    steps += [
        Step("collecting", "agent_exited", 6, attempt=2),
        Step("deleting", "collected", 7, attempt=2),
        Step("done", "deleted", 8, attempt=2),
    ]
    record = record_of(chain_of(steps).rows)
    built = build_spans(record, resource=RESOURCE)
    executing = [span for span in built if span.name == "executing"]

    assert len(executing) == 2
    assert executing[0].attributes["engine.interrupted"] is True
    assert executing[0].attributes["engine.trigger"] == "resumed"
    assert executing[0].end_time == executing[1].start_time
    assert "engine.interrupted" not in executing[1].attributes
    assert executing[1].links[0].context.span_id == executing[0].context.span_id


def test_interrupted_state_without_leaving_row():
    rows = chain_of(happy_steps()[:6]).rows
    record = record_of(rows, attempt=2)
    now = START + timedelta(seconds=60)
    built = _by_name(build_spans(record, resource=RESOURCE, now=now))

    executing = built["executing"]
    assert executing.attributes["engine.interrupted"] is True
    assert executing.attributes["engine.outcome"] == "interrupted"
    assert "engine.trigger" not in executing.attributes
    assert executing.status.status_code is StatusCode.UNSET
    assert executing.end_time == nanoseconds(now)
    assert built["execution"].attributes["engine.outcome"] == "in_progress"
    assert built["execution"].end_time == nanoseconds(now)


def test_running_state_is_in_progress():
    record = record_of(chain_of(happy_steps()[:6]).rows)
    now = START + timedelta(seconds=7)
    executing = _by_name(build_spans(record, resource=RESOURCE, now=now))["executing"]

    assert executing.attributes["engine.outcome"] == "in_progress"
    assert "engine.interrupted" not in executing.attributes
    assert executing.end_time == nanoseconds(now)


def test_long_attribute_values_are_capped():
    rows = chain_of(happy_steps()).rows
    record = record_of(rows, resource_name="m" * 1000)
    built = build_spans(record, resource=RESOURCE)

    for span in built:
        value = span.attributes["engine.machine.name"]
        assert value == "m" * spans.MAX_ATTRIBUTE_LENGTH


def test_build_spans_is_deterministic():
    record = record_of(chain_of(happy_steps(attempt_from_seq=7)).rows)

    first = otlp_json.dumps(build_spans(record, resource=RESOURCE))
    second = otlp_json.dumps(build_spans(record, resource=RESOURCE))

    assert first == second


def test_missing_stored_ids_are_derived_stably():
    rows = chain_of(happy_steps()).rows
    record = record_of(rows, trace_id=None, root_span_id=None)

    first = build_spans(record, resource=RESOURCE)
    second = build_spans(record, resource=RESOURCE)

    trace_ids = {span.context.trace_id for span in first}
    assert len(trace_ids) == 1
    assert trace_ids.pop() != 0
    assert first[-1].context.span_id == second[-1].context.span_id
    assert first[-1].context.span_id != 0


def test_nanoseconds_keeps_microseconds():
    assert nanoseconds(START) % 10**9 == 123456000
