"""Live trace export: the exporters, the export queue, and what reaches a collector."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest

from backends.instant import InstantBackend
from engine.exceptions import UsageError
from engine.states import State
from engine.store import Store
from engine.tracing import otlp_json
from engine.tracing.exporters import resolve_exporter_name
from engine.tracing.spans import build_spans, default_resource
from tests.helpers import instant_engine, request, settings_for
from tests.support.cli import engine_env, run_engine
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver
from tests.tracing_rows import resume_in_executing


def _jsonl_spans(path: Path) -> list[dict]:
    spans = []
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                spans.extend(scope_spans["spans"])
    return spans


def _stored_spans(tmp_path: Path, execution_id: str) -> list[dict]:
    store = Store(f"sqlite:///{tmp_path / 'engine.db'}")
    try:
        record = store.get_execution(execution_id, with_transitions=True)
    finally:
        store.close()
    data = otlp_json.encode_request(build_spans(record, resource=default_resource()))
    return [
        span
        for resource_spans in data["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]


def _canonical(spans: list[dict]) -> list[str]:
    return sorted(json.dumps(span, sort_keys=True) for span in spans)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_jsonl_live_spans_match_stored(tmp_path):
    async with instant_engine(tmp_path, engine_trace_exporter="jsonl") as engine:
        record = await engine.run(request("echo", "hi"))

    live = _jsonl_spans(tmp_path / "data" / "traces.jsonl")
    assert record.state is State.DONE
    assert len(live) == 10
    assert _canonical(live) == _canonical(_stored_spans(tmp_path, record.id))


async def test_trace_file_setting_moves_jsonl(tmp_path):
    target = tmp_path / "elsewhere" / "spans.jsonl"
    async with instant_engine(
        tmp_path, engine_trace_exporter="jsonl", engine_trace_file=target
    ) as engine:
        await engine.run(request())

    assert len(_jsonl_spans(target)) == 10
    assert not (tmp_path / "data" / "traces.jsonl").exists()


async def test_secrets_and_stdin_never_in_spans(tmp_path):
    secret = "s3cret-value-4921"
    prompt = "PROMPT: summarise the quarterly numbers"
    async with instant_engine(tmp_path, engine_trace_exporter="jsonl") as engine:
        record = await engine.run(
            request(
                "agent",
                "--prompt",
                "argv-prompt-7731",
                stdin=prompt.encode(),
                secrets={"API_TOKEN": secret},
            )
        )

    text = (tmp_path / "data" / "traces.jsonl").read_text()
    assert record.state is State.DONE
    assert record.id in text
    assert secret not in text
    assert "API_TOKEN" not in text
    assert "quarterly" not in text
    assert "argv-prompt-7731" not in text


async def test_otlp_http_reaches_receiver(tmp_path, monkeypatch):
    with OtlpHttpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with instant_engine(tmp_path, engine_trace_exporter="otlp-http") as e:
            record = await e.run(request())
        spans = receiver.wait_for_spans(10)

    assert len(spans) == 10
    assert {span.trace_id.hex() for span in spans} == {record.trace_id}


async def test_otlp_grpc_reaches_receiver(tmp_path, monkeypatch):
    with OtlpGrpcReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        async with instant_engine(tmp_path, engine_trace_exporter="otlp") as e:
            record = await e.run(request())
        spans = receiver.wait_for_spans(10)

    assert len(spans) == 10
    assert {span.trace_id.hex() for span in spans} == {record.trace_id}
    root = [span for span in spans if not span.parent_span_id]
    assert [span.span_id.hex() for span in root] == [record.root_span_id]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "otlp-http"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp-grpc"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp-http"),
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "otlp-grpc",
        ),
    ],
)
def test_otlp_protocol_variables(tmp_path, monkeypatch, variables, expected):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = settings_for(tmp_path, engine_trace_exporter="otlp")

    assert resolve_exporter_name(settings) == expected


def test_otlp_json_protocol_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    settings = settings_for(tmp_path, engine_trace_exporter="otlp")

    with pytest.raises(UsageError) as caught:
        resolve_exporter_name(settings)
    assert "'http/json'" in str(caught.value)
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in str(caught.value)


async def test_collector_down_logs_once_and_counts(tmp_path, monkeypatch, caplog):
    port = _closed_port()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    async with instant_engine(
        tmp_path, engine_trace_exporter="otlp-http", engine_trace_flush_timeout=3
    ) as engine:
        records = [await engine.run(request()) for _ in range(3)]
        run_seconds = time.monotonic() - started
        stats = engine._tracer.queue.stats
    closed_seconds = time.monotonic() - started

    assert [record.state for record in records] == [State.DONE] * 3
    assert run_seconds < 2
    assert closed_seconds < 3 + 2
    failures = [
        r
        for r in caplog.records
        if getattr(r, "action", None) == "trace_export_failed"
        and r.levelno >= logging.WARNING
    ]
    assert len(failures) == 1
    assert "Connection refused" in failures[0].getMessage()
    sdk_warnings = [
        r
        for r in caplog.records
        if r.name.startswith("opentelemetry.exporter") and r.levelno >= logging.WARNING
    ]
    assert sdk_warnings == []
    assert stats.exported_spans == 0
    assert stats.failed_exports >= 1
    assert stats.failed_spans + stats.dropped_spans == 30
    totals = [
        r for r in caplog.records if getattr(r, "action", None) == "trace_export_totals"
    ]
    assert len(totals) == 1


async def test_slow_collector_does_not_delay_run(tmp_path, monkeypatch):
    with OtlpHttpReceiver(delay=2.0) as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with instant_engine(
            tmp_path, engine_trace_exporter="otlp-http", engine_trace_flush_timeout=30
        ) as engine:
            started = time.monotonic()
            record = await engine.run(request())
            run_seconds = time.monotonic() - started
        spans = receiver.spans()

    assert record.state is State.DONE
    assert run_seconds < 1.0
    # Closing waited for the slow collector, so nothing was lost.
    assert len(spans) == 10


async def test_resumed_run_live_spans_match_stored(tmp_path):
    settings = settings_for(
        tmp_path, container_runtime="instant", engine_trace_exporter="jsonl"
    )
    backend = InstantBackend(agent_seconds=0.5)

    final = await resume_in_executing(settings, backend, request("true"))

    live = _jsonl_spans(tmp_path / "data" / "traces.jsonl")
    assert final.state is State.DONE
    assert final.attempt == 2
    assert len(live) == 10
    assert _canonical(live) == _canonical(_stored_spans(tmp_path, final.id))
    by_name = {span["name"]: span for span in live}
    executing = {a["key"]: a["value"] for a in by_name["executing"]["attributes"]}
    assert executing["engine.interrupted"] == {"boolValue": True}
    assert executing["engine.attempt"] == {"intValue": "1"}
    link = by_name["collecting"]["links"][0]
    assert link["spanId"] == by_name["executing"]["spanId"]


def test_console_exporter_writes_stderr(tmp_path):
    env = engine_env(tmp_path, ENGINE_TRACE_EXPORTER="console")

    result = run_engine(
        ["run", "--backend", "instant", "--json", "--", "true"], env, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["state"] == "done"
    assert result.stderr.count('"name": "') == 10
    assert f'"trace_id": "0x{record["trace_id"]}"' in result.stderr
