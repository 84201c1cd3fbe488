"""Store queries for crash recovery: lease claims, cancel requests, reaper lookups.

`Store` inherits these methods. A claim is one conditional UPDATE that bumps the
lease token and the attempt, so of two workers that try to claim the same lease,
exactly one changes the row. On PostgreSQL, `claim_next` also locks the candidate
rows with `FOR UPDATE SKIP LOCKED`, so concurrent claimers skip each other's rows
instead of waiting for them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from engine.exceptions import ExecutionNotFoundError
from engine.records import ClaimBasis, ExecutionRecord, LeaseRecord
from engine.states import TERMINAL_STATES, State
from engine.store.schema import executions

if TYPE_CHECKING:
    from sqlalchemy import Engine

# Ids per `IN (...)` list; SQLite before 3.32 allows at most 999 bound parameters.
ID_CHUNK = 500

_TERMINAL = [state.value for state in TERMINAL_STATES]
# Listed as IN (...) rather than NOT IN (done, failed), so ix_executions_state
# serves the query however many ended runs the table holds.
_UNFINISHED = [state.value for state in State if state not in TERMINAL_STATES]

_LEASE_COLUMNS = (
    executions.c.id,
    executions.c.state,
    executions.c.owner,
    executions.c.lease_expires_at,
    executions.c.lease_token,
)

# Decides whether a lease may be taken over, and on what basis.
ClaimDecider = Callable[[LeaseRecord, datetime], ClaimBasis | None]


class RecoveryQueries:
    """Lease claims, cancel requests and bulk reads for resume, cancel and reap."""

    db: Engine

    # -- leases -------------------------------------------------------------

    def get_lease(self, execution_id: str) -> LeaseRecord:
        query = select(*_LEASE_COLUMNS).where(executions.c.id == execution_id)
        with self.db.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise ExecutionNotFoundError(execution_id)
        return _lease_record(row)

    def claim_execution(
        self,
        lease: LeaseRecord,
        basis: ClaimBasis,
        owner: str,
        lease_seconds: float,
        *,
        now: datetime,
    ) -> bool:
        """Take over `lease` for `owner`; return False if the row changed meanwhile.

        The UPDATE matches only while the token is the one read and `basis` still
        holds: for EXPIRED and NO_OWNER the lease must still be expired or
        unowned, so an owner that renewed in between keeps its run.
        """
        with self.db.begin() as conn:
            return _claim(conn, lease, basis, owner, lease_seconds, now)

    def claim_next(
        self,
        owner: str,
        lease_seconds: float,
        decide: ClaimDecider,
        *,
        now: datetime,
        exclude: Collection[str] = (),
    ) -> str | None:
        """Claim the oldest unfinished execution that `decide` allows; return its id."""
        query = (
            select(*_LEASE_COLUMNS)
            .where(executions.c.state.in_(_UNFINISHED))
            .order_by(executions.c.created_at)
        )
        if self.db.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
            with self.db.begin() as conn:
                leases = [_lease_record(row) for row in conn.execute(query).mappings()]
                for lease, basis in _claimable(leases, decide, now, exclude):
                    if _claim(conn, lease, basis, owner, lease_seconds, now):
                        return lease.execution_id
            return None
        # In WAL mode, a SQLite read transaction that later writes fails with
        # SQLITE_BUSY_SNAPSHOT when another connection committed in between. So
        # each claim is its own one-statement transaction, kept safe by the
        # token check.
        with self.db.connect() as conn:
            leases = [_lease_record(row) for row in conn.execute(query).mappings()]
        for lease, basis in _claimable(leases, decide, now, exclude):
            if self.claim_execution(lease, basis, owner, lease_seconds, now=now):
                return lease.execution_id
        return None

    # -- cancel requests ----------------------------------------------------

    def request_cancel(self, execution_id: str, at: datetime) -> bool:
        """Record a cancel request; return False if the execution already ended.

        This write is not fenced: any process may ask, and the owner acts on it.
        An earlier request keeps its time.
        """
        statement = (
            update(executions)
            .where(
                and_(
                    executions.c.id == execution_id,
                    executions.c.state.not_in(_TERMINAL),
                )
            )
            .values(
                cancel_requested_at=func.coalesce(executions.c.cancel_requested_at, at)
            )
        )
        with self.db.begin() as conn:
            changed = conn.execute(statement).rowcount
        if changed == 0:
            self.get_lease(execution_id)  # raises ExecutionNotFoundError
        return changed == 1

    def cancel_requests(self, execution_ids: Collection[str]) -> set[str]:
        """Return the ids among `execution_ids` that have a cancel request."""
        found: set[str] = set()
        with self.db.connect() as conn:
            for chunk in _chunks(execution_ids):
                query = select(executions.c.id).where(
                    and_(
                        executions.c.id.in_(chunk),
                        executions.c.cancel_requested_at.is_not(None),
                    )
                )
                found.update(row[0] for row in conn.execute(query))
        return found

    # -- bulk reads for the reaper ------------------------------------------

    def get_executions(
        self, execution_ids: Collection[str]
    ) -> dict[str, ExecutionRecord]:
        """Return the records of `execution_ids` that exist, by id, in few queries."""
        from engine.store.store import _execution_record

        records: dict[str, ExecutionRecord] = {}
        with self.db.connect() as conn:
            for chunk in _chunks(execution_ids):
                query = select(executions).where(executions.c.id.in_(chunk))
                for row in conn.execute(query).mappings():
                    records[row["id"]] = _execution_record(row)
        return records

    def unfinished_executions(self) -> list[ExecutionRecord]:
        """Return every execution that is not done or failed, oldest first."""
        query = (
            select(executions)
            .where(executions.c.state.in_(_UNFINISHED))
            .order_by(executions.c.created_at)
        )
        return self._records(query)

    def leaked_executions(self) -> list[ExecutionRecord]:
        """Return the ended executions whose machine is recorded as leaked."""
        query = select(executions).where(
            and_(executions.c.leaked.is_(True), executions.c.state.in_(_TERMINAL))
        )
        return self._records(query)

    def clear_leaked(self, execution_id: str, at: datetime) -> None:
        """Record that an ended execution's leaked machine has been removed."""
        statement = (
            update(executions)
            .where(
                and_(
                    executions.c.id == execution_id,
                    executions.c.state.in_(_TERMINAL),
                )
            )
            .values(leaked=False, updated_at=at)
        )
        with self.db.begin() as conn:
            conn.execute(statement)

    def _records(self, query: Any) -> list[ExecutionRecord]:
        from engine.store.store import _execution_record

        with self.db.connect() as conn:
            return [_execution_record(row) for row in conn.execute(query).mappings()]


def _claimable(
    leases: Iterable[LeaseRecord],
    decide: ClaimDecider,
    now: datetime,
    exclude: Collection[str],
) -> Iterable[tuple[LeaseRecord, ClaimBasis]]:
    for lease in leases:
        if lease.execution_id in exclude:
            continue
        basis = decide(lease, now)
        if basis is not None:
            yield lease, basis


def _claim(
    conn: Connection,
    lease: LeaseRecord,
    basis: ClaimBasis,
    owner: str,
    lease_seconds: float,
    now: datetime,
) -> bool:
    if basis is ClaimBasis.OWNER_GONE:
        # A process that is gone cannot renew, so the lease only has to still
        # name it. A claim by another worker in between changed the token.
        still_claimable = executions.c.owner == lease.owner
    else:
        still_claimable = or_(
            executions.c.owner.is_(None),
            executions.c.lease_expires_at.is_(None),
            executions.c.lease_expires_at < now,
        )
    statement = (
        update(executions)
        .where(
            and_(
                executions.c.id == lease.execution_id,
                executions.c.lease_token == lease.token,
                executions.c.state.not_in(_TERMINAL),
                still_claimable,
            )
        )
        .values(
            owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            lease_token=executions.c.lease_token + 1,
            attempt=executions.c.attempt + 1,
            updated_at=now,
        )
    )
    return conn.execute(statement).rowcount == 1


def _lease_record(row: RowMapping) -> LeaseRecord:
    from engine.store.store import as_utc

    return LeaseRecord(
        execution_id=row["id"],
        state=State(row["state"]),
        owner=row["owner"],
        expires_at=as_utc(row["lease_expires_at"]),
        token=row["lease_token"],
    )


def _chunks(ids: Collection[str]) -> Iterable[list[str]]:
    ordered = sorted(ids)
    for start in range(0, len(ordered), ID_CHUNK):
        yield ordered[start : start + ID_CHUNK]
