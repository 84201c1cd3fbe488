"""The hash chain over an execution's transitions.

Each transition row stores SHA-256 over its own content and the previous row's
hash, so editing or deleting a stored row breaks every later link.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

# The hash of the row before the first one.
GENESIS = "0" * 64


def transition_hash(
    previous_hash: str,
    *,
    execution_id: str,
    seq: int,
    from_state: str | None,
    to_state: str,
    trigger: str,
    at: datetime,
    duration: float | None,
    attempt: int,
    worker: str | None,
    details: dict[str, Any] | None,
    span_id: str | None,
) -> str:
    """Return the hex digest that links this row to `previous_hash`."""
    content = json.dumps(
        [
            previous_hash,
            execution_id,
            seq,
            from_state,
            to_state,
            trigger,
            at.isoformat(timespec="microseconds"),
            None if duration is None else round(duration, 6),
            attempt,
            worker,
            details,
            span_id,
        ],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(content.encode()).hexdigest()
