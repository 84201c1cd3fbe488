"""Human and JSON renderings of execution records."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from engine.records import ExecutionRecord
from engine.store import utcnow

# Rich is imported where it prints, because `engine run` imports this module
# too and importing Rich took about 35 ms.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# Output files larger than this are named in --json output instead of inlined.
MAX_INLINE_OUTPUT = 1 << 20


def console(*, stderr: bool = False) -> Console:
    """Return a console that wraps nothing when its stream is not a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=240, soft_wrap=True)


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
    from rich.table import Table

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
    console().print(table)


def print_record(record: ExecutionRecord) -> None:
    out = console()
    command = record.request.get("command") or []
    fields = [
        ("execution", record.id),
        ("state", record.state.value),
        ("command", shlex.join(command)),
        ("backend", record.backend),
        ("machine", record.resource_name or "-"),
    ]
    if record.exit_code is not None:
        fields.append(("exit code", str(record.exit_code)))
    if record.error_type:
        fields.append(
            (
                "error",
                f"{record.error_type} in {record.failed_state}: {record.error_message}",
            )
        )
    if record.leaked:
        fields.append(("leaked", "yes: `engine reap` removes the machine"))
    fields.append(("created", record.created_at.isoformat(timespec="seconds")))
    if record.finished_at is not None:
        seconds = (record.finished_at - record.created_at).total_seconds()
        fields.append(("finished", f"{record.finished_at:%H:%M:%S} ({seconds:.2f} s)"))
    else:
        fields.append(("owner", _owner_text(record)))
    fields.append(("attempt", str(record.attempt)))
    fields.append(("run folder", record.run_dir or "-"))
    for name, value in fields:
        out.print(f"{name:<11}{value}", markup=False)
    out.print(_transition_table(record))


def _owner_text(record: ExecutionRecord) -> str:
    if record.owner is None or record.lease_expires_at is None:
        return "-"
    remaining = (record.lease_expires_at - utcnow()).total_seconds()
    if remaining < 0:
        return f"{record.owner}, lease expired {-remaining:.0f} s ago"
    return f"{record.owner}, lease valid for {remaining:.0f} s"


def _transition_table(record: ExecutionRecord) -> Table:
    from rich.table import Table

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
    return table
