"""Builders for the tracing and audit tests: rows written by hand, and a resume.

The rows carry real chained hashes, so the same rows serve the span tests and
the audit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from backends.instant import InstantBackend
from engine.engine import Engine
from engine.records import ExecutionRecord, ExecutionRequest, TransitionRecord
from engine.settings import Settings
from engine.states import State
from engine.store import Store
from engine.store.chain import GENESIS, transition_hash

START = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)

HAPPY_PATH = [
    ("requested", "requested"),
    ("cloning", "claimed"),
    ("booting", "cloned"),
    ("ip-ready", "booted"),
    ("uploading", "reachable"),
    ("executing", "uploaded"),
    ("collecting", "agent_exited"),
    ("deleting", "collected"),
    ("done", "deleted"),
]


@dataclass(frozen=True)
class Step:
    """One row to write: the state it enters and how."""

    to_state: str
    trigger: str
    # Seconds after START.
    offset: float
    attempt: int = 1
    details: dict[str, Any] | None = None
    worker: str = "host:100:1"


@dataclass
class RowChain:
    execution_id: str = "exec0001"
    rows: list[TransitionRecord] = field(default_factory=list)

    def add(self, step: Step) -> TransitionRecord:
        previous = self.rows[-1] if self.rows else None
        at = START + timedelta(seconds=step.offset)
        fields: dict[str, Any] = {
            "execution_id": self.execution_id,
            "seq": len(self.rows) + 1,
            "from_state": previous.to_state if previous else None,
            "to_state": step.to_state,
            "trigger": step.trigger,
            "at": at,
            "duration": (at - previous.at).total_seconds() if previous else None,
            "attempt": step.attempt,
            "worker": step.worker,
            "details": step.details,
            "span_id": secrets.token_hex(8),
        }
        digest = transition_hash(previous.hash if previous else GENESIS, **fields)
        row = TransitionRecord(**fields, hash=digest)
        self.rows.append(row)
        return row


def happy_steps(attempt_from_seq: int | None = None) -> list[Step]:
    """Return the nine steps of a successful run, one second apart.

    Rows from `attempt_from_seq` on are written by attempt 2.
    """
    steps = []
    for index, (state, trigger) in enumerate(HAPPY_PATH):
        seq = index + 1
        attempt = 2 if attempt_from_seq is not None and seq >= attempt_from_seq else 1
        steps.append(Step(state, trigger, float(index), attempt))
    return steps


def chain_of(steps: Sequence[Step], execution_id: str = "exec0001") -> RowChain:
    chain = RowChain(execution_id)
    for step in steps:
        chain.add(step)
    return chain


def record_of(rows: Sequence[TransitionRecord], **overrides: Any) -> ExecutionRecord:
    """Return an execution record whose state and times follow `rows`."""
    last = rows[-1]
    state = State(last.to_state)
    values: dict[str, Any] = {
        "id": rows[0].execution_id,
        "install_id": "install01",
        "state": state,
        "backend": "docker",
        "group": None,
        "request": {},
        "resource_name": f"eng-install01-{rows[0].execution_id}",
        "resource_details": {},
        "address": None,
        "exit_code": 0 if state is State.DONE else None,
        "failed_state": None,
        "error_type": None,
        "error_message": None,
        "leaked": False,
        "run_dir": None,
        "created_at": rows[0].at,
        "updated_at": last.at,
        "finished_at": last.at if state.is_terminal else None,
        "owner": "host:100:1",
        "lease_expires_at": None,
        "lease_token": 1,
        "attempt": max(row.attempt for row in rows),
        "cancel_requested_at": None,
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "root_span_id": "b7ad6b7169203331",
        "transitions": tuple(rows),
    }
    values.update(overrides)
    return ExecutionRecord(**values)


async def resume_in_executing(
    settings: Settings, backend: InstantBackend, request: ExecutionRequest
) -> ExecutionRecord:
    """Run `request` with attempt 1 stopped in executing and attempt 2 finishing it.

    Attempt 1 is cancelled without writing another row, as a crash would leave
    it. The claim that a new worker makes is played by hand: a new lease token
    and attempt 2. `backend` must keep the agent started by attempt 1 (an
    `InstantBackend` with `agent_seconds` > 0), so attempt 2 reattaches to it.
    """
    first = Engine(settings, backends={backend.name: backend})
    execution_id = await first.submit(request)
    task = asyncio.create_task(first.drive(execution_id, request))
    await _wait_for_state(first.store, execution_id, State.EXECUTING)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stopped = first.store.get_execution(execution_id)
    assert stopped.state is State.EXECUTING, stopped.state
    token = stopped.lease_token
    first.store.update_execution(execution_id, token, lease_token=token + 1, attempt=2)
    await first.aclose()

    second = Engine(settings, backends={backend.name: backend})
    try:
        return await second.drive(execution_id, request)
    finally:
        await second.aclose()


async def _wait_for_state(store: Store, execution_id: str, state: State) -> None:
    deadline = time.monotonic() + 10
    while store.get_execution(execution_id).state is not state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution {execution_id} never reached {state}")
        await asyncio.sleep(0.01)
