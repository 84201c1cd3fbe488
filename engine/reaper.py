"""The reaper: finds this install's machines that no run needs, and deletes them.

For every machine that a usable backend lists for this install (by its install
label, or by a name that contains the full install id), `decide` compares the
machine with its execution record:

    execution                                       action
    none in this database                           delete the machine
    done or failed                                  delete the machine
    unfinished, lease held by a live worker         keep
    unfinished, lease free, can be resumed          keep (`engine resume` continues it)
    unfinished, lease free, cannot be resumed       fail-run: claim it, fail it, and
                                                    delete the machine in `deleting`

Unfinished runs without a machine get the same last three rows; a run past
`cloning` whose machine is gone cannot be resumed. An ended run whose leaked
machine is no longer listed gets `forget`, which clears its leaked mark.
Machines of another install are never listed, so never touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from backends.base import Resource, machine_name
from engine import lease, resume
from engine.exceptions import EngineError, LeaseHeldError, MachineLostError
from engine.records import ClaimBasis, ExecutionRecord, LeaseRecord
from engine.states import State
from engine.store import utcnow

if TYPE_CHECKING:
    from engine.engine import Engine

logger = logging.getLogger(__name__)

# Machines deleted or runs failed at the same time.
MAX_PARALLEL_ACTIONS = 8

# Drives an execution that this worker has claimed to its end, failing it with
# the error if one is given.
DriveClaimed = Callable[[str, EngineError | None], Awaitable[ExecutionRecord]]

# States in which an unfinished run must have a machine.
MACHINE_STATES = frozenset(
    {State.BOOTING, State.IP_READY, State.UPLOADING, State.EXECUTING, State.COLLECTING}
)


class ReapAction(StrEnum):
    KEEP = "keep"
    DELETE = "delete"
    FAIL_RUN = "fail-run"
    FORGET = "forget"


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    action: ReapAction
    reason: str


@dataclasses.dataclass(slots=True)
class ReapRow:
    """One machine or run that the reaper found, and what it did about it."""

    backend: str
    machine: str | None
    execution_id: str | None
    state: str | None
    action: ReapAction
    reason: str
    # "planned" in a dry run; "done" or "error: ..." after acting; "kept".
    outcome: str = "planned"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["action"] = self.action.value
        return data


@dataclasses.dataclass(slots=True)
class ReapReport:
    dry_run: bool
    rows: list[ReapRow] = dataclasses.field(default_factory=list)
    # Backends whose machines could not be listed, with the error.
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> list[ReapRow]:
        return [row for row in self.rows if row.outcome.startswith("error")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "rows": [row.as_dict() for row in self.rows],
            "unavailable": dict(self.unavailable),
        }


def decide(
    machine: Resource | None,
    record: ExecutionRecord | None,
    *,
    now: datetime,
    owner_alive: bool | None,
    blocker: str | None = None,
    older_than: timedelta | None = None,
) -> Decision:
    """Decide what to do with a machine, or with an unfinished run that has none.

    `owner_alive` is whether the run's owner process runs, and None when the
    owner is on another host. `blocker` is the reason the run cannot be
    resumed, or None when it can.
    """
    if older_than is not None:
        created = machine.created_at if machine is not None else None
        if created is None and record is not None:
            created = record.updated_at
        if created is None or now - created < older_than:
            return Decision(ReapAction.KEEP, f"younger than {older_than}")
    if record is None:
        return Decision(ReapAction.DELETE, "no execution of this install has it")
    if record.is_terminal:
        if machine is None:
            return Decision(ReapAction.FORGET, "leaked machine is already gone")
        leaked = " and its machine was recorded as leaked" if record.leaked else ""
        return Decision(ReapAction.DELETE, f"run is {record.state.value}{leaked}")
    basis = lease.claim_basis(_lease_of(record), now, lambda _worker: owner_alive)
    if basis is None:
        return Decision(
            ReapAction.KEEP, f"run is {record.state.value}, owned by {record.owner}"
        )
    claim_reason = _basis_text(basis, record)
    if blocker is not None:
        return Decision(
            ReapAction.FAIL_RUN, f"{claim_reason}; cannot be resumed: {blocker}"
        )
    return Decision(
        ReapAction.KEEP, f"{claim_reason}; `engine resume {record.id}` continues it"
    )


def _lease_of(record: ExecutionRecord) -> LeaseRecord:
    return LeaseRecord(
        execution_id=record.id,
        state=record.state,
        owner=record.owner,
        expires_at=record.lease_expires_at,
        token=record.lease_token,
    )


def _basis_text(basis: ClaimBasis, record: ExecutionRecord) -> str:
    if basis is ClaimBasis.OWNER_GONE:
        return f"owner {record.owner} is gone"
    if basis is ClaimBasis.EXPIRED:
        return f"lease of {record.owner} expired"
    return "no worker owns the run"


def execution_id_of(machine: Resource, install_id: str) -> str | None:
    """Return the machine's execution id, from its label or its name."""
    if machine.execution_id:
        return machine.execution_id
    prefix = machine_name(install_id, "")
    if machine.name.startswith(prefix) and len(machine.name) > len(prefix):
        return machine.name[len(prefix) :]
    return None


class Reaper:
    """Lists machines on every usable backend, decides, and acts for one engine."""

    def __init__(self, engine: Engine, drive_claimed: DriveClaimed):
        self.engine = engine
        self.drive_claimed = drive_claimed
        self.store = engine.store
        self.install_id = engine.install_id
        self.backend_names = engine.reap_backend_names()
        # Backends whose machines were listed, so a missing machine is gone.
        self.listed_backends: set[str] = set()
        # Why each run that is to be failed cannot be resumed.
        self.blockers: dict[str, EngineError] = {}

    async def reap(
        self, *, dry_run: bool = False, older_than: timedelta | None = None
    ) -> ReapReport:
        report = ReapReport(dry_run=dry_run)
        machines = await self._list_machines(report)
        now = utcnow()
        rows = self._plan(machines, report, now, older_than)
        report.rows = rows
        if not dry_run:
            limit = asyncio.Semaphore(MAX_PARALLEL_ACTIONS)
            await asyncio.gather(*(self._act(row, limit) for row in rows))
        logger.info(
            "reaped machines: %d found, %d errors",
            len(rows),
            len(report.errors),
            extra={"action": "reap"},
        )
        return report

    async def _list_machines(self, report: ReapReport) -> list[Resource]:
        machines: list[Resource] = []
        for name in self.backend_names:
            try:
                found = await self.engine.backend(name).list_resources(self.install_id)
            except EngineError as exc:
                logger.warning(
                    "cannot list machines on %s: %s",
                    name,
                    exc,
                    extra={"action": "reap", "backend": name},
                )
                report.unavailable[name] = str(exc)
                continue
            machines.extend(found)
            self.listed_backends.add(name)
        return machines

    def _plan(
        self,
        machines: list[Resource],
        report: ReapReport,
        now: datetime,
        older_than: timedelta | None,
    ) -> list[ReapRow]:
        machine_ids = {m.name: execution_id_of(m, self.install_id) for m in machines}
        records = self.store.get_executions(
            {execution_id for execution_id in machine_ids.values() if execution_id}
        )
        unfinished = {r.id: r for r in self.store.unfinished_executions()}
        alive = functools.cache(lease.owner_alive)
        rows: list[ReapRow] = []
        for machine in machines:
            execution_id = machine_ids[machine.name]
            record = records.get(execution_id) if execution_id else None
            unfinished.pop(execution_id or "", None)
            decision = self._decide(machine, record, now, older_than, alive)
            rows.append(
                _row(machine.backend, machine.name, execution_id, record, decision)
            )
        listed = {m.name for m in machines}
        for record in self._runs_without_machines(unfinished.values(), listed, report):
            decision = self._decide(None, record, now, older_than, alive)
            name = record.resource_name
            rows.append(_row(record.backend, name, record.id, record, decision))
        return rows

    def _runs_without_machines(
        self,
        unfinished: Iterable[ExecutionRecord],
        listed: set[str],
        report: ReapReport,
    ) -> Iterable[ExecutionRecord]:
        """Yield stuck runs whose lease is free, and leaked runs with no machine."""
        now = utcnow()
        for record in unfinished:
            if lease.claim_basis(_lease_of(record), now) is not None:
                yield record
        for record in self.store.leaked_executions():
            name = record.resource_name or machine_name(record.install_id, record.id)
            if record.backend in self.listed_backends and name not in listed:
                yield record

    def _decide(
        self,
        machine: Resource | None,
        record: ExecutionRecord | None,
        now: datetime,
        older_than: timedelta | None,
        alive: Any,
    ) -> Decision:
        error = None
        if record is not None and not record.is_terminal:
            error = self._blocker(machine, record, now)
        if error is not None and record is not None:
            self.blockers[record.id] = error
        owner = record.owner if record is not None else None
        return decide(
            machine,
            record,
            now=now,
            owner_alive=alive(owner),
            blocker=f"{error.error_type}: {error}" if error else None,
            older_than=older_than,
        )

    def _blocker(
        self, machine: Resource | None, record: ExecutionRecord, now: datetime
    ) -> EngineError | None:
        _, error = resume.prepare_resume(
            record,
            self.engine.run_dir(record),
            now=now,
            default_timeout=self.engine.settings.engine_run_timeout,
        )
        machine_gone = (
            machine is None
            and record.state in MACHINE_STATES
            and record.backend in self.listed_backends
        )
        if error is None and machine_gone:
            name = record.resource_name or machine_name(record.install_id, record.id)
            error = MachineLostError(
                f"machine {name} of the run is no longer on backend {record.backend}",
                backend=record.backend,
                execution_id=record.id,
                resource=name,
            )
        return error

    async def _act(self, row: ReapRow, limit: asyncio.Semaphore) -> None:
        if row.action is ReapAction.KEEP:
            row.outcome = "kept"
            return
        async with limit:
            try:
                row.outcome = await self._act_on(row)
            except EngineError as exc:
                row.outcome = f"error: {exc}"
                logger.error(
                    "reap action %s failed: %s",
                    row.action.value,
                    exc,
                    extra={
                        "action": "reap_failed",
                        "execution_id": row.execution_id,
                        "resource": row.machine,
                    },
                )

    async def _act_on(self, row: ReapRow) -> str:
        assert row.machine is not None or row.action is ReapAction.FAIL_RUN
        if row.action is ReapAction.DELETE:
            backend = self.engine.backend(row.backend)
            await backend.delete_by_name(row.machine, row.execution_id)
            self.store.mark_resource_deleted(row.backend, row.machine)
            if row.execution_id is not None:
                self.store.clear_leaked(row.execution_id, utcnow())
            return "done"
        if row.action is ReapAction.FORGET:
            assert row.execution_id is not None
            self.store.mark_resource_deleted(row.backend, row.machine)
            self.store.clear_leaked(row.execution_id, utcnow())
            return "done"
        assert row.execution_id is not None
        return await self._fail_run(row.execution_id)

    async def _fail_run(self, execution_id: str) -> str:
        engine = self.engine
        try:
            lease.claim(
                self.store,
                execution_id,
                engine.worker,
                engine.settings.engine_lease_seconds,
            )
        except LeaseHeldError:
            return "skipped: another worker claimed the run first"
        final = await self.drive_claimed(execution_id, self.blockers.get(execution_id))
        if final.leaked:
            return f"error: run ended {final.state.value} but its machine is leaked"
        return f"done: run ended {final.state.value} ({final.error_type})"


def _row(
    backend: str,
    machine: str | None,
    execution_id: str | None,
    record: ExecutionRecord | None,
    decision: Decision,
) -> ReapRow:
    return ReapRow(
        backend=backend,
        machine=machine,
        execution_id=execution_id,
        state=record.state.value if record is not None else None,
        action=decision.action,
        reason=decision.reason,
    )
