"""Tracing: one OpenTelemetry trace per execution, built from its stored rows.

`spans.build_spans(record)` builds a run's spans from the database alone;
`observer.TraceObserver` exports them live as the run moves; `otlp_json` writes
them as OTLP JSON. See docs/audit.md for the span model and attribute names.
"""

from engine.tracing.observer import TraceObserver, create_trace_observer
from engine.tracing.spans import build_spans

__all__ = ["TraceObserver", "build_spans", "create_trace_observer"]
