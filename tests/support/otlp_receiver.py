"""Minimal OTLP trace receivers on 127.0.0.1 for the tests: HTTP and gRPC.

Each keeps every `ExportTraceServiceRequest` it decodes, so a test can check the
spans that an exporter really sent over the wire.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, Span

LOOPBACK = "127.0.0.1"


class _Collected:
    """Requests received so far, shared between server threads and the test."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.raw_bodies: list[bytes] = []
        self._lock = threading.Lock()

    def add(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self._lock:
            self.raw_bodies.append(body)
            self.requests.append(request)

    def resource_spans(self) -> list[ResourceSpans]:
        with self._lock:
            return [
                item for request in self.requests for item in request.resource_spans
            ]

    def spans(self) -> list[Span]:
        return [
            span
            for resource_spans in self.resource_spans()
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def wait_for_spans(self, count: int, timeout: float = 30.0) -> list[Span]:
        """Return the spans once at least `count` arrived; raise on time-out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            time.sleep(0.05)
        raise TimeoutError(
            f"received {len(self.spans())} spans in {timeout:g} s, "
            f"expected at least {count}"
        )


class OtlpHttpReceiver(_Collected):
    """An OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body.

    Each response waits `delay` seconds, to act as a slow collector.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = _decompress(
                    self.rfile.read(length), self.headers.get("Content-Encoding")
                )
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.add(body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                answer = trace_service_pb2.ExportTraceServiceResponse()
                payload = answer.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def _decompress(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpGrpcReceiver(_Collected):
    """An OTLP/gRPC receiver for the trace service, without TLS."""

    def __init__(self) -> None:
        super().__init__()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.add(request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
            Service(), self._server
        )
        self.port = self._server.add_insecure_port(f"{LOOPBACK}:0")
        self.endpoint = f"http://{LOOPBACK}:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.stop(grace=1).wait(5)
