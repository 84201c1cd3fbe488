"""Span exporters chosen by ENGINE_TRACE_EXPORTER, and the queue that feeds them.

Runs never wait for an exporter: spans go into `SpanExportQueue`, and one
background thread exports them, so a collector that is down or slow never
delays a run. The first failed export is logged as a warning, later ones are only
counted, and `SpanExportQueue.close` logs the totals.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from engine.exceptions import UsageError
from engine.settings import Settings
from engine.tracing import otlp_json

logger = logging.getLogger(__name__)

# Loggers of the OTLP exporters in opentelemetry-exporter-otlp-proto-http and
# -grpc 1.45; each logs every retry and every failed export.
_SDK_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)
MAX_QUEUE_SIZE = 2048
MAX_BATCH_SIZE = 512
# How long the export thread gathers spans before it exports them. Exporting
# each span alone cost about as much CPU as building it, and every wake-up of
# the thread competes with the event loop for the GIL (docs/benchmarks.md).
BATCH_LINGER_SECONDS = 0.2
# Returned by `SpanExportQueue._next` when the linger time ran out.
_NO_SPAN = object()


def resolve_exporter_name(settings: Settings) -> str:
    """Return the exporter to use; `otlp` becomes `otlp-http` or `otlp-grpc`.

    `otlp` follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then
    OTEL_EXPORTER_OTLP_PROTOCOL, whose default is http/protobuf.
    """
    name = settings.engine_trace_exporter
    if name != "otlp":
        return name
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        return "otlp-grpc"
    if protocol == "http/protobuf":
        return "otlp-http"
    raise UsageError(
        f"OTLP protocol {protocol!r} is not supported for traces: set "
        "OTEL_EXPORTER_OTLP_PROTOCOL to http/protobuf or grpc"
    )


def create_exporter(settings: Settings) -> SpanExporter | None:
    """Return the exporter that the settings choose, or None for `none`."""
    name = resolve_exporter_name(settings)
    if name == "none":
        return None
    if name == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    if name == "otlp-grpc":
        # Imported here because grpc takes a while to import.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    if name == "jsonl":
        return JsonLinesExporter(settings.trace_file)
    # The console exporter writes to stderr, because stdout is the agent's output.
    return ConsoleSpanExporter(out=sys.stderr)


class JsonLinesExporter(SpanExporter):
    """Appends each batch of spans to a file as one line of OTLP JSON."""

    def __init__(self, path: Path):
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = (otlp_json.dumps(spans) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One write with O_APPEND, so lines from several engine processes that
        # share the file do not interleave on a local Linux file system.
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, data)
        finally:
            os.close(descriptor)
        if written != len(data):
            raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclasses.dataclass
class ExportStats:
    """Counts kept by a `SpanExportQueue`."""

    exported_spans: int = 0
    failed_exports: int = 0
    failed_spans: int = 0
    # Spans dropped because the queue was full or the flush timeout ran out.
    dropped_spans: int = 0


class SpanExportQueue:
    """Exports spans on a background thread, so callers never wait for a collector."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        name: str,
        max_queue_size: int = MAX_QUEUE_SIZE,
        max_batch_size: int = MAX_BATCH_SIZE,
    ):
        self.exporter = exporter
        self.name = name
        self.stats = ExportStats()
        self._max_queue_size = max_queue_size
        self._max_batch_size = max_batch_size
        # Unbounded so the stop marker always fits; `submit` enforces the limit.
        self._queue: queue.SimpleQueue[ReadableSpan | None] = queue.SimpleQueue()
        self._closed = False
        _install_sdk_log_capture()
        # A daemon thread, so a collector that never responds cannot keep the
        # process alive after `close` gave up on it.
        self._thread = threading.Thread(
            target=self._work, name=f"engine-trace-{name}", daemon=True
        )
        self._thread.start()

    def submit(self, spans: Sequence[ReadableSpan]) -> None:
        """Queue `spans` for export; drops and counts them when the queue is full."""
        if self._closed:
            self._drop(len(spans), "the trace exporter is closed")
            return
        room = self._max_queue_size - self._queue.qsize()
        for span in spans[: max(room, 0)]:
            self._queue.put(span)
        if len(spans) > room:
            self._drop(len(spans) - max(room, 0), "the trace export queue is full")

    def close(self, timeout: float) -> None:
        """Export what is queued, waiting at most `timeout` seconds, then stop."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Shutting the exporter down ends the OTLP exporters' retry waits.
            self.exporter.shutdown()
            self._thread.join(1.0)
            left = self._queue.qsize()
            if left:
                self._drop(left, f"the flush timeout of {timeout:g} s ran out")
        else:
            self.exporter.shutdown()
        self._log_totals()

    def _work(self) -> None:
        _SDK_LOG_CAPTURE.hold_back_in_this_thread()
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[ReadableSpan] = []
            deadline = time.monotonic() + BATCH_LINGER_SECONDS
            while item is not None:
                batch.append(item)
                if len(batch) >= self._max_batch_size:
                    break
                item = self._next(deadline)
                if item is _NO_SPAN:
                    break
            stopping = item is None
            if batch:
                self._export(batch)

    def _next(self, deadline: float) -> ReadableSpan | object | None:
        """Return the next queued item, or _NO_SPAN if none came by `deadline`."""
        try:
            return self._queue.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            return _NO_SPAN

    def _export(self, batch: list[ReadableSpan]) -> None:
        _SDK_LOG_CAPTURE.take_first()
        try:
            result = self.exporter.export(batch)
        except Exception as exc:
            self._record_failure(len(batch), f"{type(exc).__name__}: {exc}")
            return
        if result is SpanExportResult.SUCCESS:
            self.stats.exported_spans += len(batch)
        else:
            cause = _SDK_LOG_CAPTURE.take_first() or "the exporter returned FAILURE"
            self._record_failure(len(batch), cause)

    def _record_failure(self, spans: int, cause: str) -> None:
        self.stats.failed_exports += 1
        self.stats.failed_spans += spans
        if self.stats.failed_exports == 1:
            logger.warning(
                "trace export failed, runs go on without it: %s (later failures "
                "are counted and reported when the engine closes)",
                cause,
                extra={"action": "trace_export_failed", "exporter": self.name},
            )
        else:
            logger.debug(
                "trace export failed again: %s",
                cause,
                extra={"action": "trace_export_failed", "exporter": self.name},
            )

    def _drop(self, spans: int, reason: str) -> None:
        first = self.stats.dropped_spans == 0
        self.stats.dropped_spans += spans
        log = logger.warning if first else logger.debug
        log(
            "dropped %d spans: %s",
            spans,
            reason,
            extra={"action": "trace_spans_dropped", "exporter": self.name},
        )

    def _log_totals(self) -> None:
        stats = self.stats
        if stats.failed_exports or stats.dropped_spans:
            logger.warning(
                "trace export: %d spans exported, %d failed in %d exports, %d dropped",
                stats.exported_spans,
                stats.failed_spans,
                stats.failed_exports,
                stats.dropped_spans,
                extra={"action": "trace_export_totals", "exporter": self.name},
            )


class _SdkLogCapture(logging.Filter):
    """Holds back the OTLP exporters' warnings in export threads, keeping the first.

    `SpanExportQueue` logs the first failure itself, with the first held-back
    message of that export as its cause (the later ones of a retry loop only
    report that it gave up). So a collector that is down yields one warning per engine,
    not one per retry. Records from other threads pass unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def hold_back_in_this_thread(self) -> None:
        self._local.active = True

    def take_first(self) -> str | None:
        """Return the first message held back since the last call, and forget it."""
        message = getattr(self._local, "first", None)
        self._local.first = None
        return message

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not getattr(
            self._local, "active", False
        ):
            return True
        if getattr(self._local, "first", None) is None:
            self._local.first = record.getMessage()
        return False


_SDK_LOG_CAPTURE = _SdkLogCapture()


def _install_sdk_log_capture() -> None:
    for name in _SDK_EXPORTER_LOGGERS:
        sdk_logger = logging.getLogger(name)
        if _SDK_LOG_CAPTURE not in sdk_logger.filters:
            sdk_logger.addFilter(_SDK_LOG_CAPTURE)
