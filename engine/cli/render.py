"""Human and JSON renderings of execution records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from engine.records import ExecutionRecord

# Output files larger than this are named in --json output instead of inlined.
MAX_INLINE_OUTPUT = 1 << 20


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def record_with_output(record: ExecutionRecord) -> dict[str, Any]:
    """Return the record as a dict with the agent's collected stdout and stderr."""
    data = record.as_dict()
    output: dict[str, str | None] = {}
    for stream in ("stdout", "stderr"):
        path = Path(record.run_dir or "") / "result" / stream
        if (
            record.run_dir
            and path.is_file()
            and path.stat().st_size <= MAX_INLINE_OUTPUT
        ):
            output[stream] = path.read_bytes().decode(errors="replace")
        else:
            output[stream] = None
    data["output"] = output
    return data


def validation_message(exc: ValueError) -> str:
    """Return the first problem of a pydantic error as one line naming the field."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "request"
        return f"invalid {field}={first.get('input')!r}: {first['msg']}"
    return str(exc)


def print_list(records: list[ExecutionRecord]) -> None:
    table = Table(box=None)
    for column in ("id", "state", "backend", "exit", "created", "error"):
        table.add_column(column)
    for record in records:
        table.add_row(
            record.id,
            record.state.value,
            record.backend,
            "" if record.exit_code is None else str(record.exit_code),
            f"{record.created_at:%Y-%m-%d %H:%M:%S}",
            record.error_type or "",
        )
    Console(highlight=False).print(table)


def print_record(record: ExecutionRecord) -> None:
    console = Console(highlight=False)
    console.print(f"execution  {record.id}")
    console.print(f"state      {record.state.value}")
    console.print(f"backend    {record.backend}")
    console.print(f"machine    {record.resource_name or '-'}")
    if record.exit_code is not None:
        console.print(f"exit code  {record.exit_code}")
    if record.error_type:
        console.print(
            f"error      {record.error_type} in {record.failed_state}: "
            f"{record.error_message}"
        )
    if record.leaked:
        console.print("leaked     yes: `engine reap` removes the machine")
    console.print(f"created    {record.created_at.isoformat(timespec='seconds')}")
    console.print(f"run folder {record.run_dir}")
    table = Table(box=None)
    for column in ("seq", "at (UTC)", "from", "to", "trigger", "spent in from"):
        table.add_column(column)
    for row in record.transitions:
        table.add_row(
            str(row.seq),
            f"{row.at:%H:%M:%S.%f}"[:-3],
            row.from_state or "",
            row.to_state,
            row.trigger,
            "" if row.duration is None else f"{row.duration:.3f} s",
        )
    console.print(table)
