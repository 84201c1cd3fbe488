"""Build an execution's OpenTelemetry spans from its stored transition rows.

Every transition row is the start of one span: the span of the state that the
row enters, with the row's `span_id`, from the row's `at` to the `at` of the
next row. A terminal state's span has zero length. The root span uses the
execution's stored `trace_id` and `root_span_id` and runs from `created_at` to
`finished_at`. Because the ids and times all come from the database, the live
exporter and `engine trace --otlp` build the same spans, in any process.

A run that a new attempt resumed has one interrupted span: the span whose
entering row was written by an earlier attempt than its leaving row (or than the
execution, while no leaving row exists yet). It carries `engine.interrupted`,
and the first span of the new attempt links to it.

Only the fields named in this module become attributes. Requests, commands,
stdin, secrets and error messages never do, because they may contain prompts
or secret values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import metadata
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from engine.records import ExecutionRecord, TransitionRecord
from engine.states import State

ROOT_SPAN_NAME = "execution"
# Longer string attribute values are cut to this many characters.
MAX_ATTRIBUTE_LENGTH = 256
# The maximum number of attributes on one span; the builders set at most 11.
MAX_ATTRIBUTES = 32

# Attribute names. `error.type` and `process.exit.code` are OpenTelemetry
# semantic convention names; the rest live under `engine.`.
EXECUTION_ID = "engine.execution.id"
STATE = "engine.state"
TRIGGER = "engine.trigger"
BACKEND = "engine.backend"
MACHINE_NAME = "engine.machine.name"
ATTEMPT = "engine.attempt"
WORKER = "engine.worker"
SEQ = "engine.transition.seq"
OUTCOME = "engine.outcome"
INTERRUPTED = "engine.interrupted"
ERROR_TYPE = "error.type"
EXIT_CODE = "process.exit.code"
LINK_REASON = "engine.link.reason"

# Outcomes: how a state ended, or how the run ended for the root span.
OUTCOME_OK = "ok"
OUTCOME_ERROR = "error"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_CANCELLED = "cancelled"
OUTCOME_INTERRUPTED = "interrupted"
OUTCOME_IN_PROGRESS = "in_progress"

# Triggers that leave a state because its step failed, by outcome.
_FAILURE_OUTCOMES = {
    "step_failed": OUTCOME_ERROR,
    "delete_failed": OUTCOME_ERROR,
    "rejected": OUTCOME_ERROR,
    "timed_out": OUTCOME_TIMEOUT,
    "cancelled": OUTCOME_CANCELLED,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@cache
def engine_version() -> str:
    try:
        return metadata.version("engine")
    except metadata.PackageNotFoundError:
        return "unknown"


def default_resource() -> Resource:
    """Return the resource for engine spans.

    `Resource.create` also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
    so users can add attributes (such as a viewer's project name) without code.
    """
    return Resource.create(
        {"service.name": "engine", "service.version": engine_version()}
    )


def instrumentation_scope() -> InstrumentationScope:
    return InstrumentationScope("engine", engine_version())


def build_spans(
    record: ExecutionRecord,
    *,
    resource: Resource | None = None,
    now: datetime | None = None,
) -> list[ReadableSpan]:
    """Build every span of `record`: one per transition row, then the root.

    `record` must carry its transitions (`with_transitions=True`). Spans of a
    state that is not left yet, and the root of an unfinished run, end at `now`
    (default: the current time).
    """
    resource = resource or default_resource()
    spans = [
        state_span(record, index, resource=resource, now=now)
        for index in range(len(record.transitions))
    ]
    spans.append(root_span(record, resource=resource, now=now))
    return spans


def state_span(
    record: ExecutionRecord,
    index: int,
    *,
    resource: Resource,
    now: datetime | None = None,
) -> ReadableSpan:
    """Build the span of the state that `record.transitions[index]` enters."""
    rows = record.transitions
    entering = rows[index]
    leaving = rows[index + 1] if index + 1 < len(rows) else None
    state = State(entering.to_state)
    interrupted = _is_interrupted(record, entering, leaving)
    outcome = _state_outcome(state, leaving, interrupted)
    error_type = _state_error_type(record, state, leaving)

    attributes: dict[str, Any] = {
        **_execution_attributes(record),
        STATE: state.value,
        ATTEMPT: entering.attempt,
        WORKER: entering.worker,
        SEQ: entering.seq,
        OUTCOME: outcome,
        TRIGGER: entering.trigger if state.is_terminal else _trigger(leaving),
        ERROR_TYPE: error_type,
        INTERRUPTED: True if interrupted else None,
    }
    end = _state_end(entering, leaving, now)
    return ReadableSpan(
        name=state.value,
        context=_context(record, span_id_of(entering)),
        parent=_context(record, root_span_id_of(record)),
        resource=resource,
        attributes=_bounded(attributes),
        links=_resume_links(record, index),
        kind=SpanKind.INTERNAL,
        status=_status(outcome, error_type),
        start_time=nanoseconds(entering.at),
        end_time=nanoseconds(end),
        instrumentation_scope=instrumentation_scope(),
    )


def root_span(
    record: ExecutionRecord,
    *,
    resource: Resource,
    now: datetime | None = None,
) -> ReadableSpan:
    """Build the root span, from the request time to the end of the run."""
    if record.is_terminal:
        outcome = OUTCOME_OK if record.state is State.DONE else OUTCOME_ERROR
    else:
        outcome = OUTCOME_IN_PROGRESS
    error_type = (record.error_type or "_OTHER") if outcome == OUTCOME_ERROR else None
    attributes: dict[str, Any] = {
        **_execution_attributes(record),
        STATE: record.state.value,
        ATTEMPT: record.attempt,
        OUTCOME: outcome,
        ERROR_TYPE: error_type,
        EXIT_CODE: record.exit_code,
    }
    end = record.finished_at or max(now or datetime.now(UTC), record.created_at)
    return ReadableSpan(
        name=ROOT_SPAN_NAME,
        context=_context(record, root_span_id_of(record)),
        parent=None,
        resource=resource,
        attributes=_bounded(attributes),
        kind=SpanKind.INTERNAL,
        status=_status(outcome, error_type),
        start_time=nanoseconds(record.created_at),
        end_time=nanoseconds(end),
        instrumentation_scope=instrumentation_scope(),
    )


# -- ids and times ------------------------------------------------------------------


def trace_id_of(record: ExecutionRecord) -> int:
    """Return the stored trace id, or one derived from the execution id.

    Executions written before trace ids were stored have none; deriving one
    keeps their spans the same on every call.
    """
    if record.trace_id:
        return int(record.trace_id, 16)
    return _derived_id(record.id, "trace", 16)


def root_span_id_of(record: ExecutionRecord) -> int:
    if record.root_span_id:
        return int(record.root_span_id, 16)
    return _derived_id(record.id, "root", 8)


def span_id_of(row: TransitionRecord) -> int:
    if row.span_id:
        return int(row.span_id, 16)
    return _derived_id(row.execution_id, f"seq {row.seq}", 8)


def _derived_id(execution_id: str, purpose: str, size: int) -> int:
    digest = hashlib.sha256(f"{execution_id} {purpose}".encode()).digest()
    # An all-zero id is invalid in OpenTelemetry, so force the lowest bit on.
    return int.from_bytes(digest[:size], "big") | 1


def nanoseconds(at: datetime) -> int:
    """Return `at` as integer nanoseconds since the Unix epoch, without float loss."""
    return (at - _EPOCH) // timedelta(microseconds=1) * 1000


def _context(record: ExecutionRecord, span_id: int) -> SpanContext:
    return SpanContext(
        trace_id=trace_id_of(record),
        span_id=span_id,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


# -- attributes and status ------------------------------------------------------------


def _execution_attributes(record: ExecutionRecord) -> dict[str, Any]:
    return {
        EXECUTION_ID: record.id,
        BACKEND: record.backend,
        MACHINE_NAME: record.resource_name,
    }


def _bounded(attributes: Mapping[str, Any]) -> BoundedAttributes:
    """Drop unset values and cut long strings to MAX_ATTRIBUTE_LENGTH characters."""
    present = {name: value for name, value in attributes.items() if value is not None}
    return BoundedAttributes(
        maxlen=MAX_ATTRIBUTES,
        attributes=present,
        immutable=True,
        max_value_len=MAX_ATTRIBUTE_LENGTH,
    )


def _is_interrupted(
    record: ExecutionRecord,
    entering: TransitionRecord,
    leaving: TransitionRecord | None,
) -> bool:
    if leaving is not None:
        return leaving.attempt > entering.attempt
    return (
        not State(entering.to_state).is_terminal and record.attempt > entering.attempt
    )


def _state_end(
    entering: TransitionRecord,
    leaving: TransitionRecord | None,
    now: datetime | None,
) -> datetime:
    if leaving is not None:
        return leaving.at
    if State(entering.to_state).is_terminal:
        return entering.at
    # A state that has not been left yet ends now, but never before it began.
    return max(now or datetime.now(UTC), entering.at)


def _trigger(leaving: TransitionRecord | None) -> str | None:
    return leaving.trigger if leaving is not None else None


def _state_outcome(
    state: State, leaving: TransitionRecord | None, interrupted: bool
) -> str:
    if state.is_terminal:
        return OUTCOME_OK if state is State.DONE else OUTCOME_ERROR
    if leaving is None:
        return OUTCOME_INTERRUPTED if interrupted else OUTCOME_IN_PROGRESS
    return _FAILURE_OUTCOMES.get(leaving.trigger, OUTCOME_OK)


def _state_error_type(
    record: ExecutionRecord, state: State, leaving: TransitionRecord | None
) -> str | None:
    if state is State.FAILED:
        return record.error_type or "_OTHER"
    if leaving is None or leaving.trigger not in _FAILURE_OUTCOMES:
        return None
    stored = (leaving.details or {}).get("error_type")
    return str(stored) if stored else leaving.trigger


def _status(outcome: str, error_type: str | None) -> Status:
    if outcome in (OUTCOME_ERROR, OUTCOME_TIMEOUT, OUTCOME_CANCELLED):
        return Status(StatusCode.ERROR, error_type)
    if outcome == OUTCOME_OK:
        return Status(StatusCode.OK)
    return Status(StatusCode.UNSET)


def _resume_links(record: ExecutionRecord, index: int) -> Sequence[Link]:
    """Link the first span of a new attempt to the span that the last one left open."""
    rows = record.transitions
    if index == 0 or rows[index].attempt <= rows[index - 1].attempt:
        return ()
    previous = rows[index - 1]
    return (
        Link(
            _context(record, span_id_of(previous)),
            attributes={LINK_REASON: "resumed", ATTEMPT: previous.attempt},
        ),
    )
