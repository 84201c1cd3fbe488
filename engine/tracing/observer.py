"""The live trace exporter: a run observer that sends each span when it ends.

On each committed transition it exports the span of the state that the
transition left, and when the run ends it exports the terminal state's span and
the root. The spans come from `engine.tracing.spans`, the same builder that
`engine trace --otlp` uses, so live and stored traces match.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter

from engine.observers import RunObserver
from engine.settings import Settings
from engine.tracing import spans
from engine.tracing.exporters import (
    SpanExportQueue,
    create_exporter,
    resolve_exporter_name,
)

if TYPE_CHECKING:
    from engine.records import ExecutionRecord, TransitionRecord
    from engine.runner import Run

logger = logging.getLogger(__name__)


class TraceObserver(RunObserver):
    """Exports the spans of every run it observes through a `SpanExportQueue`."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        name: str,
        flush_timeout: float,
        resource: Resource | None = None,
    ):
        self.queue = SpanExportQueue(exporter, name=name)
        self.flush_timeout = flush_timeout
        self.resource = resource or spans.default_resource()
        # Each run's record with the rows observed so far, so only the first
        # row that this process observes for a run costs a database read.
        self._records: dict[str, ExecutionRecord] = {}

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        record = self._records.get(run.execution_id)
        if record is not None and record.transitions[-1].seq == row.seq - 1:
            record = record.with_transitions((*record.transitions, row))
        else:
            # The first row observed for this run, such as the first row of a
            # resumed attempt. The rows before it were written by `submit` or by
            # another process, so read them back.
            record = run.context.store.get_execution(
                run.execution_id, with_transitions=True
            )
        self._records[run.execution_id] = record
        index = _row_index(record, row.seq)
        if index > 0:
            left = spans.state_span(record, index - 1, resource=self.resource)
            self.queue.submit([left])

    def on_finished(self, run: Run, record: ExecutionRecord) -> None:
        self._records.pop(run.execution_id, None)
        if not record.is_terminal or not record.transitions:
            return
        # The engine does not guard this hook, so a failure must not escape.
        try:
            last = len(record.transitions) - 1
            self.queue.submit(
                [
                    spans.state_span(record, last, resource=self.resource),
                    spans.root_span(record, resource=self.resource),
                ]
            )
        except Exception:
            logger.exception(
                "building the final spans failed",
                extra={"action": "trace_error", "execution_id": record.id},
            )

    def close(self) -> None:
        """Export what is queued, waiting at most the flush timeout."""
        self.queue.close(self.flush_timeout)


def _row_index(record: ExecutionRecord, seq: int) -> int:
    for index in range(len(record.transitions) - 1, -1, -1):
        if record.transitions[index].seq == seq:
            return index
    raise LookupError(f"transition seq {seq} of execution {record.id} is not stored")


def create_trace_observer(settings: Settings) -> TraceObserver | None:
    """Return a `TraceObserver` for the configured exporter, or None for `none`."""
    exporter = create_exporter(settings)
    if exporter is None:
        return None
    return TraceObserver(
        exporter,
        name=resolve_exporter_name(settings),
        flush_timeout=settings.engine_trace_flush_timeout,
    )
