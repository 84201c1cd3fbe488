"""`engine trace ID`: an execution's trace, built from the database alone.

By default it prints a timeline with one bar per state. `--json` prints the
spans as JSON, `--otlp FILE` writes them as OTLP JSON for a trace viewer, and
`--export` sends them through the exporter that ENGINE_TRACE_EXPORTER chooses.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from rich.table import Table
from rich.text import Text

from engine.cli import render
from engine.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from engine.cli.inspect_commands import resolve_execution_id
from engine.exceptions import UsageError
from engine.records import ExecutionRecord
from engine.settings import Settings
from engine.store import Store
from engine.tracing import otlp_json, spans
from engine.tracing.exporters import create_exporter, resolve_exporter_name

# Width of the timeline column, in characters: what the terminal leaves after
# the other columns, within these bounds.
MIN_BAR_WIDTH = 10
MAX_BAR_WIDTH = 50
_COLUMNS = ("seq", "state", "attempt", "start", "duration", "outcome")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OUTCOME_STYLES = {
    spans.OUTCOME_OK: "cyan",
    spans.OUTCOME_ERROR: "red",
    spans.OUTCOME_TIMEOUT: "red",
    spans.OUTCOME_CANCELLED: "red",
    spans.OUTCOME_INTERRUPTED: "yellow",
    spans.OUTCOME_IN_PROGRESS: "white",
}


def register(commands: argparse._SubParsersAction) -> None:
    trace = commands.add_parser(
        "trace", help="show an execution's trace: a timeline of its states"
    )
    trace.add_argument("id", help="execution id or a unique prefix of it")
    output = trace.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the spans as JSON")
    output.add_argument(
        "--otlp",
        metavar="FILE",
        help="write the trace as OTLP JSON to FILE (- for stdout)",
    )
    output.add_argument(
        "--export",
        action="store_true",
        help="send the trace through the exporter set by ENGINE_TRACE_EXPORTER",
    )
    trace.set_defaults(handler=trace_command)


def trace_command(args: argparse.Namespace, settings: Settings) -> int:
    store = Store(settings.database_url)
    try:
        execution_id = resolve_execution_id(store, args.id)
        record = store.get_execution(execution_id, with_transitions=True)
    finally:
        store.close()
    trace_spans = spans.build_spans(record)
    if args.json:
        render.print_json(trace_dict(record, trace_spans))
    elif args.otlp:
        write_otlp(trace_spans, args.otlp)
    elif args.export:
        return export_spans(settings, trace_spans)
    else:
        print_timeline(record, trace_spans)
    return EXIT_OK


def write_otlp(trace_spans: list[ReadableSpan], target: str) -> None:
    line = otlp_json.dumps(trace_spans) + "\n"
    if target == "-":
        sys.stdout.write(line)
        return
    path = Path(target)
    try:
        path.write_text(line, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--otlp {target}: writing the file failed: {exc}") from exc
    print(f"wrote {len(trace_spans)} spans as OTLP JSON to {path}", file=sys.stderr)


def export_spans(settings: Settings, trace_spans: list[ReadableSpan]) -> int:
    exporter = create_exporter(settings)
    if exporter is None:
        raise UsageError(
            "--export needs an exporter: set ENGINE_TRACE_EXPORTER to otlp, "
            "otlp-http, otlp-grpc, jsonl or console"
        )
    name = resolve_exporter_name(settings)
    try:
        result = exporter.export(trace_spans)
    finally:
        exporter.shutdown()
    if result is not SpanExportResult.SUCCESS:
        print(
            f"engine: error: exporting the trace through {name} failed; "
            "the log above names the cause",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"exported {len(trace_spans)} spans through {name}", file=sys.stderr)
    return EXIT_OK


# -- JSON ----------------------------------------------------------------------------


def trace_dict(record: ExecutionRecord, trace_spans: list[ReadableSpan]) -> dict:
    """Return the trace as JSON-ready data: the root span first, then the states."""
    root = trace_spans[-1]
    origin = root.start_time or 0
    return {
        "execution_id": record.id,
        "state": record.state.value,
        "trace_id": f"{spans.trace_id_of(record):032x}",
        "root_span_id": f"{spans.root_span_id_of(record):016x}",
        "spans": [span_dict(span, origin) for span in [root, *trace_spans[:-1]]],
    }


def span_dict(span: ReadableSpan, origin: int) -> dict[str, Any]:
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "name": span.name,
        "span_id": f"{span.context.span_id:016x}" if span.context else None,
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "start": _datetime(start).isoformat(),
        "end": _datetime(end).isoformat(),
        "offset": (start - origin) / 1e9,
        "duration": (end - start) / 1e9,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": f"{link.context.trace_id:032x}",
                "span_id": f"{link.context.span_id:016x}",
                "attributes": dict(link.attributes or {}),
            }
            for link in span.links
        ],
    }


def _datetime(nanoseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=nanoseconds // 1000)


# -- timeline ------------------------------------------------------------------------


def print_timeline(record: ExecutionRecord, trace_spans: list[ReadableSpan]) -> None:
    root = trace_spans[-1]
    origin = root.start_time or 0
    total = max((root.end_time or origin) - origin, 1)
    console = render.console()
    console.print(f"execution  {record.id}  {record.state.value}")
    console.print(f"trace      {spans.trace_id_of(record):032x}")
    console.print(
        f"started    {_datetime(origin).isoformat(timespec='milliseconds')}, "
        f"took {total / 1e9:.3f} s"
    )
    cells = [_timeline_cells(span, origin) for span in [root, *trace_spans[:-1]]]
    table = Table(box=None)
    for column in _COLUMNS:
        numeric = column not in ("state", "outcome")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    table.add_column("timeline", no_wrap=True)
    # Each column of a borderless rich table has one space of padding per side.
    used = sum(
        max(len(name), *(len(row[index]) for row in cells)) + 2
        for index, name in enumerate(_COLUMNS)
    )
    bar_width = max(MIN_BAR_WIDTH, min(console.width - used - 2, MAX_BAR_WIDTH))
    for span, row in zip([root, *trace_spans[:-1]], cells, strict=True):
        table.add_row(*row, _span_bar(span, origin, total, bar_width))
    console.print(table)


def _timeline_cells(span: ReadableSpan, origin: int) -> list[str]:
    attributes = span.attributes or {}
    start = span.start_time or origin
    end = span.end_time or start
    outcome = str(attributes.get(spans.OUTCOME, ""))
    notes = [outcome]
    if attributes.get(spans.INTERRUPTED) and outcome != spans.OUTCOME_INTERRUPTED:
        notes.append("interrupted")
    if span.links:
        # The first span of a new attempt links to the span it resumed.
        notes.append("resumed")
    seq = attributes.get(spans.SEQ)
    return [
        "" if seq is None else str(seq),
        span.name,
        str(attributes.get(spans.ATTEMPT, "")),
        f"+{(start - origin) / 1e9:.3f} s",
        f"{(end - start) / 1e9:.3f} s",
        ", ".join(notes),
    ]


def _span_bar(span: ReadableSpan, origin: int, total: int, columns: int) -> Text:
    start = span.start_time or origin
    end = span.end_time or start
    outcome = str((span.attributes or {}).get(spans.OUTCOME, ""))
    return _bar(start - origin, end - start, total, columns, outcome)


def _bar(offset: int, duration: int, total: int, columns: int, outcome: str) -> Text:
    """Return a bar placed at `offset` in a row `columns` wide, at least 1 wide."""
    first = min(int(offset / total * columns), columns - 1)
    width = max(1, round(duration / total * columns))
    width = min(width, columns - first)
    style = _OUTCOME_STYLES.get(outcome, "white")
    return Text(" " * first) + Text("█" * width, style=style)
