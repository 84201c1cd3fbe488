"""Reap: `Engine.reap(dry_run=True)` deciding over many machines and runs.

The database gets 10,000 executions written directly, and the instant backend
lists 1,000 machines of this install: 900 of failed runs whose machine leaked,
and 100 of runs still marked `executing` by a worker on this host whose process
is gone. The other runs are done. The figure is the time the dry run takes, a
median over repeats, each on a fresh database.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from backends.base import Resource, machine_name
from backends.instant import InstantBackend
from engine.engine import Engine
from engine.store import utcnow
from engine.store.schema import executions
from tests.bench.floor import execution_row
from tests.bench.overhead import instant_settings
from tests.bench.report import Figure, median, spread, unavailable

GOAL_SECONDS = 0.5


def gone_worker() -> str:
    """Return a worker identity on this host whose process does not exist."""
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return f"{socket.gethostname()}:{pid}:1"


def seed(engine: Engine, backend: InstantBackend, runs: int, machines: int) -> None:
    """Write `runs` executions and list `machines` machines of this install."""
    install_id = engine.install_id
    now = utcnow()
    owner = gone_worker()
    rows: list[dict[str, Any]] = []
    for index in range(runs):
        execution_id = secrets.token_hex(8)
        row = execution_row(execution_id, install_id, "/nonexistent", now)
        row.update(_shape(index, machines, now, owner))
        row["resource_name"] = machine_name(install_id, execution_id)
        rows.append(row)
        if index < machines:
            name = row["resource_name"]
            backend.machines[name] = Resource(
                backend.name, name, install_id, execution_id, now, running=True
            )
    with engine.store.db.begin() as conn:
        conn.execute(insert(executions), rows)


def _shape(index: int, machines: int, now: Any, owner: str) -> dict[str, Any]:
    """Return the state of run `index`: leaked, stale in flight, or done.

    Every row gets the same keys, because one INSERT writes them all.
    """
    old = now - timedelta(hours=1)
    shape: dict[str, Any] = {
        "state": "done",
        "exit_code": 0,
        "failed_state": None,
        "error_type": None,
        "leaked": False,
        "finished_at": old,
        "owner": owner,
        "lease_expires_at": old,
    }
    if index < machines * 9 // 10:
        shape.update(
            state="failed",
            exit_code=None,
            failed_state="deleting",
            error_type="machine_delete_failed",
            leaked=True,
        )
    elif index < machines:
        shape.update(state="executing", exit_code=None, finished_at=None)
    return shape


async def time_reap(folder: Path, runs: int, machines: int) -> tuple[float, str]:
    """Return the seconds the dry run took and how many rows got each action."""
    backend = InstantBackend()
    engine = Engine(instant_settings(folder, 16), backends={"instant": backend})
    # List only the instant backend's machines, not those of every backend whose
    # tool is installed here, so that the figure does not depend on the host.
    engine.reap_backend_names = lambda: ["instant"]  # type: ignore[method-assign]
    try:
        seed(engine, backend, runs, machines)
        started = time.perf_counter()
        report = await engine.reap(dry_run=True)
        seconds = time.perf_counter() - started
    finally:
        await engine.aclose()
    if len(backend.machines) != machines:
        raise RuntimeError("reap --dry-run deleted machines")
    if report.unavailable:
        raise RuntimeError(f"reap could not list machines: {report.unavailable}")
    actions = Counter(str(row.action) for row in report.rows)
    return seconds, ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))


def measure(runs: int, machines: int, repeats: int) -> Figure:
    name = f"Reap dry run: {machines:,} machines, {runs:,} runs"
    goal = f"<= {GOAL_SECONDS:g} s"
    if not hasattr(Engine, "reap"):
        return unavailable(name, goal, "no `Engine.reap` in this checkout")
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="engine-bench-") as folder:
            taken, actions = asyncio.run(time_reap(Path(folder), runs, machines))
            seconds.append(taken)
    value = median(seconds)
    return Figure(
        name=name,
        goal=goal,
        measured=f"{value:.3f} s",
        ratio=f"{value / GOAL_SECONDS:.2f}x goal",
        met=value <= GOAL_SECONDS,
        note=f"{repeats} repeats; {spread(seconds, ' s')}; decided: {actions}",
    )
