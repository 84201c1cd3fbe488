"""The floor for the engine overhead figure: the engine's writes, and nothing else.

The floor writes the rows that one happy run writes, in the same transactions,
with SQLAlchemy Core statements built once and executed with parameters, on a
database made by `Store` (same migrations, same PRAGMAs). It leaves out what the
engine adds around those writes: reads, hashing, the state machine, asyncio.

`count_writes` counts what the engine really writes per run, so the harness can
say when this module no longer matches the engine.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, event, insert, update

from engine.records import ExecutionRequest
from engine.store import Store, utcnow
from engine.store.schema import executions, resources, transitions

HAPPY_PATH = (
    ("requested", "cloning", "claimed"),
    ("cloning", "booting", "cloned"),
    ("booting", "ip-ready", "booted"),
    ("ip-ready", "uploading", "reachable"),
    ("uploading", "executing", "uploaded"),
    ("executing", "collecting", "agent_exited"),
    ("collecting", "deleting", "collected"),
    ("deleting", "done", "deleted"),
)

INSERT_EXECUTION = insert(executions)
INSERT_TRANSITION = insert(transitions)
INSERT_RESOURCE = insert(resources)
UPDATE_EXECUTION = update(executions).where(
    executions.c.id == bindparam("b_id"),
    executions.c.lease_token == bindparam("b_token"),
)
UPDATE_RESOURCE = update(resources).where(
    resources.c.backend == bindparam("b_backend"),
    resources.c.name == bindparam("b_name"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock and CPU seconds of one measured stretch."""

    wall: float
    cpu: float


@dataclasses.dataclass(frozen=True, slots=True)
class WriteCounts:
    """Commits and write statements per run."""

    commits: float
    inserts: float
    updates: float

    def describe(self) -> str:
        return (
            f"{self.commits:g} commits, {self.inserts:g} inserts, "
            f"{self.updates:g} updates per run"
        )


class Transaction(list[tuple[Any, dict[str, Any]]]):
    """The statements of one transaction, with their parameters."""


def prepare_run(install_id: str, worker: str, run_dir: str) -> list[Transaction]:
    """Build the transactions of one happy run, with fresh ids and realistic values."""
    execution_id = secrets.token_hex(8)
    name = f"eng-{install_id}-{execution_id}"
    now = utcnow()

    def transition(seq: int, source: str | None, dest: str, trigger: str):
        row = {
            "execution_id": execution_id,
            "seq": seq,
            "from_state": source,
            "to_state": dest,
            "trigger": trigger,
            "at": now,
            "duration": None if source is None else 0.001,
            "attempt": 1,
            "worker": worker,
            "details": None,
            "span_id": secrets.token_hex(8),
            "hash": secrets.token_hex(32),
        }
        return (INSERT_TRANSITION, row)

    def execution_update(**changes: Any):
        params = {"b_id": execution_id, "b_token": 1, "updated_at": now, **changes}
        return (UPDATE_EXECUTION, params)

    # Writes that a step makes while the run is in that state, besides transitions.
    step_writes = {
        "cloning": (
            INSERT_RESOURCE,
            {
                "backend": "instant",
                "name": name,
                "execution_id": execution_id,
                "created_at": now,
                "details": {},
            },
        ),
        "executing": execution_update(resource_details={}),
        "deleting": (
            UPDATE_RESOURCE,
            {"b_backend": "instant", "b_name": name, "deleted_at": now},
        ),
    }
    execution = execution_row(execution_id, install_id, run_dir, now)
    plan = [
        Transaction(
            [
                (INSERT_EXECUTION, execution),
                transition(1, None, "requested", "requested"),
            ]
        )
    ]
    for seq, (source, dest, trigger) in enumerate(HAPPY_PATH, start=2):
        if source in step_writes:
            plan.append(Transaction([step_writes[source]]))
        changes = _transition_changes(name, dest)
        plan.append(
            Transaction(
                [execution_update(**changes), transition(seq, source, dest, trigger)]
            )
        )
    return plan


def _transition_changes(name: str, dest: str) -> dict[str, Any]:
    """Return the execution columns that the runner writes on entering `dest`."""
    changes: dict[str, Any] = {"state": dest}
    if dest == "cloning":
        changes["resource_name"] = name
    else:
        # From `booting` on, the runner has a machine and writes its details.
        changes.update(resource_details={}, address=None)
    if dest in ("collecting", "deleting", "done"):
        changes["exit_code"] = 0
    if dest == "done":
        changes.update(leaked=False, finished_at=utcnow())
    return changes


def plan_counts(plan: list[Transaction]) -> WriteCounts:
    """Return the commits and write statements of one prepared run."""
    statements = [statement for transaction in plan for statement, _ in transaction]
    updates = sum(1 for s in statements if s in (UPDATE_EXECUTION, UPDATE_RESOURCE))
    return WriteCounts(
        commits=len(plan), inserts=len(statements) - updates, updates=updates
    )


def execution_row(
    execution_id: str, install_id: str, run_dir: str, now: Any
) -> dict[str, Any]:
    return {
        "id": execution_id,
        "install_id": install_id,
        "group_name": None,
        "backend": "instant",
        "state": "requested",
        "request": ExecutionRequest(command=["true"]).stored_form(),
        "resource_name": None,
        "resource_details": {},
        "leaked": False,
        "run_dir": f"{run_dir}/{execution_id}",
        "created_at": now,
        "updated_at": now,
        "owner": "bench:1:1",
        "lease_expires_at": now + timedelta(seconds=30),
        "lease_token": 1,
        "attempt": 1,
        "trace_id": secrets.token_hex(16),
        "root_span_id": secrets.token_hex(8),
    }


def write_runs(db: Engine, plans: list[list[Transaction]]) -> Timing:
    """Execute the prepared runs one after another; return the time taken."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for plan in plans:
        for transaction in plan:
            with db.begin() as conn:
                for statement, params in transaction:
                    result = conn.execute(statement, params)
                    if statement is UPDATE_EXECUTION and result.rowcount != 1:
                        raise RuntimeError("floor: fenced update matched no row")
    return Timing(time.perf_counter() - started, time.process_time() - cpu_started)


def time_floor(url: str, runs: int, run_dir: str) -> tuple[Timing, WriteCounts]:
    """Write `runs` runs to a fresh database at `url`.

    Returns the seconds taken and what one run wrote.
    """
    store = Store(url)
    try:
        install_id = store.install_id()
        write_runs(store.db, [prepare_run(install_id, "bench:1:1", run_dir)])
        plans = [prepare_run(install_id, "bench:1:1", run_dir) for _ in range(runs)]
        return write_runs(store.db, plans), plan_counts(plans[0])
    finally:
        store.close()


class WriteCounter:
    """Counts commits and INSERT/UPDATE statements on a SQLAlchemy engine."""

    def __init__(self, db: Engine):
        self.db = db
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> WriteCounter:
        event.listen(self.db, "commit", self._on_commit)
        event.listen(self.db, "after_cursor_execute", self._on_execute)
        return self

    def __exit__(self, *exc_info: object) -> None:
        event.remove(self.db, "commit", self._on_commit)
        event.remove(self.db, "after_cursor_execute", self._on_execute)

    def _on_commit(self, conn: Any) -> None:
        self.counts["commits"] += 1

    def _on_execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        keyword = statement.lstrip().split(None, 1)[0].upper()
        if keyword in ("INSERT", "UPDATE"):
            self.counts[keyword.lower() + "s"] += 1

    def per_run(self, runs: int) -> WriteCounts:
        return WriteCounts(
            commits=self.counts["commits"] / runs,
            inserts=self.counts["inserts"] / runs,
            updates=self.counts["updates"] / runs,
        )
