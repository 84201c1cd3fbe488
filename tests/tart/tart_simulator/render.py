"""Output formats of `tart list` and `tart get` (Sources/tart/Formatter/Format.swift).

JSON is pretty-printed like Foundation's JSONEncoder (`"key" : value`). Text is a
plain table whose columns are separated by one space, without the deprecated
`Running` field.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any


def render_json(data: Any) -> str:
    return json.dumps(data, indent=2, separators=(",", " : "))


def render_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = [column for column in rows[0] if column != "Running"]
    cells = [[str(row[column]) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[index]) for line in cells))
        for index, column in enumerate(columns)
    ]
    lines = [columns, *cells]
    text = "\n".join(
        " ".join(
            value.ljust(width) for value, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )
    return text.strip()


def iso8601(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def relative(timestamp: float, now: float | None = None) -> str:
    """Format like RelativeDateTimeFormatter with the full units style."""
    seconds = int((now if now is not None else time.time()) - timestamp)
    if seconds < 0:
        return "in the future"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"
