"""The store: every read and write of executions, transitions and resources.

Only this package imports SQLAlchemy. Writes to an execution carry the lease token
that its worker claimed; a write whose token is no longer current changes nothing
and raises `LeaseLostError` (fencing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    and_,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

from engine.exceptions import DatabaseError, ExecutionNotFoundError, LeaseLostError
from engine.records import ExecutionRecord, TransitionRecord
from engine.states import State
from engine.store import migrations, statements
from engine.store.recovery import RecoveryQueries
from engine.store.schema import executions, meta, resources

logger = logging.getLogger(__name__)

INSTALL_ID_KEY = "install_id"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` in UTC; SQLite hands back naive datetimes that were UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable across application crashes in WAL mode; only a power
    # loss can drop the last commits.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """Create a SQLAlchemy engine; SQLite gets WAL mode and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db_engine = create_engine(url)
        event.listen(db_engine, "connect", _set_sqlite_pragmas)
        return db_engine
    return create_engine(url, pool_pre_ping=True)


class Store(RecoveryQueries):
    """Persists executions; one instance per process and database."""

    def __init__(self, url: str, *, migrate: bool = True):
        self.url = url
        try:
            self.db = create_db_engine(url)
            with self.db.connect():
                pass
            if migrate:
                migrations.upgrade(self.db, url)
        except (ArgumentError, OperationalError, OSError) as exc:
            raise DatabaseError(
                f"cannot open database {_redacted(url)!r}: {_first_line(exc)}; "
                "check ENGINE_DATABASE_URL or ENGINE_DATA_DIR"
            ) from exc
        self._install_id: str | None = None

    def close(self) -> None:
        self.db.dispose()

    # -- install ----------------------------------------------------------

    def install_id(self) -> str:
        """Return this database's install id, made on first use."""
        if self._install_id is None:
            self._install_id = self._read_or_create_install_id()
        return self._install_id

    def _read_or_create_install_id(self) -> str:
        query = select(meta.c.value).where(meta.c.key == INSTALL_ID_KEY)
        with self.db.begin() as conn:
            value = conn.execute(query).scalar_one_or_none()
            if value is not None:
                return value
            try:
                new_id = uuid.uuid4().hex[:10]
                conn.execute(insert(meta).values(key=INSTALL_ID_KEY, value=new_id))
                return new_id
            except IntegrityError:
                pass
        with self.db.connect() as conn:
            return conn.execute(query).scalar_one()

    # -- writes -----------------------------------------------------------

    def create_execution(
        self, values: Mapping[str, Any], first: TransitionRecord
    ) -> None:
        """Insert a new execution and its first transition in one transaction."""
        with self.db.begin() as conn:
            conn.execute(statements.INSERT_EXECUTION, dict(values))
            conn.execute(statements.INSERT_TRANSITION, _transition_row(first))

    def record_transition(
        self,
        execution_id: str,
        token: int,
        row: TransitionRecord,
        changes: Mapping[str, Any],
    ) -> None:
        """Move the execution to `row.to_state` and append `row`, if `token` holds."""
        values = {"state": row.to_state, "updated_at": row.at, **changes}
        with self.db.begin() as conn:
            self._fenced_update(conn, execution_id, token, values)
            conn.execute(statements.INSERT_TRANSITION, _transition_row(row))

    def update_execution(self, execution_id: str, token: int, **changes: Any) -> None:
        """Change columns of the execution, if `token` is still current."""
        changes.setdefault("updated_at", utcnow())
        with self.db.begin() as conn:
            self._fenced_update(conn, execution_id, token, changes)

    def _fenced_update(
        self,
        conn: Connection,
        execution_id: str,
        token: int,
        values: Mapping[str, Any],
    ) -> None:
        params = statements.fenced(execution_id, token, values)
        if conn.execute(statements.FENCED_UPDATE, params).rowcount != 1:
            raise LeaseLostError(execution_id, token)

    def renew_leases(
        self, owner: str, tokens: Mapping[str, int], seconds: float
    ) -> set[str]:
        """Extend the leases of `owner`'s runs; return the ids whose lease was lost."""
        expires = utcnow() + timedelta(seconds=seconds)
        lost: set[str] = set()
        with self.db.begin() as conn:
            for execution_id, token in tokens.items():
                statement = (
                    update(executions)
                    .where(
                        and_(
                            executions.c.id == execution_id,
                            executions.c.lease_token == token,
                            executions.c.owner == owner,
                        )
                    )
                    .values(lease_expires_at=expires)
                )
                if conn.execute(statement).rowcount != 1:
                    lost.add(execution_id)
        return lost

    def record_resource(
        self,
        backend: str,
        name: str,
        execution_id: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Remember a machine that a backend created, for the reaper."""
        key = statements.resource_key(backend, name)
        with self.db.begin() as conn:
            found = conn.execute(statements.SELECT_RESOURCE, key).first()
            if found is None:
                row = {
                    "backend": backend,
                    "name": name,
                    "execution_id": execution_id,
                    "created_at": utcnow(),
                    "details": dict(details or {}),
                }
                conn.execute(statements.INSERT_RESOURCE, row)
            else:
                changes = {"deleted_at": None, "execution_id": execution_id}
                conn.execute(statements.UPDATE_RESOURCE, {**key, **changes})

    def mark_resource_deleted(self, backend: str, name: str) -> None:
        params = statements.resource_key(backend, name, deleted_at=utcnow())
        with self.db.begin() as conn:
            conn.execute(statements.UPDATE_RESOURCE, params)

    # -- reads ------------------------------------------------------------

    def get_execution(
        self, execution_id: str, *, with_transitions: bool = False
    ) -> ExecutionRecord:
        with self.db.connect() as conn:
            params = {"execution_id": execution_id}
            row = conn.execute(statements.SELECT_EXECUTION, params).mappings().first()
            if row is None:
                raise ExecutionNotFoundError(execution_id)
            record = _execution_record(row)
            if with_transitions:
                record = record.with_transitions(
                    tuple(self._transitions(conn, execution_id))
                )
        return record

    def find_executions(self, prefix: str) -> list[str]:
        """Return the ids that start with `prefix`, so users can type short ids."""
        with self.db.connect() as conn:
            rows = conn.execute(
                select(executions.c.id).where(executions.c.id.startswith(prefix))
            )
            return [row[0] for row in rows]

    def list_executions(
        self,
        *,
        states: Iterable[State] | None = None,
        limit: int | None = 100,
    ) -> list[ExecutionRecord]:
        query = select(executions).order_by(executions.c.created_at.desc())
        if states is not None:
            query = query.where(executions.c.state.in_([s.value for s in states]))
        if limit is not None:
            query = query.limit(limit)
        with self.db.connect() as conn:
            return [_execution_record(row) for row in conn.execute(query).mappings()]

    def transitions(self, execution_id: str) -> list[TransitionRecord]:
        with self.db.connect() as conn:
            return list(self._transitions(conn, execution_id))

    def _transitions(
        self, conn: Connection, execution_id: str
    ) -> Iterable[TransitionRecord]:
        params = {"execution_id": execution_id}
        for row in conn.execute(statements.SELECT_TRANSITIONS, params).mappings():
            yield _transition_record(row)

    def list_resources(self, *, backend: str | None = None) -> list[dict[str, Any]]:
        query = select(resources)
        if backend is not None:
            query = query.where(resources.c.backend == backend)
        with self.db.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]


def _redacted(url: str) -> str:
    """Return `url` with any password replaced, for error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1] if "@" in url else url


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _transition_row(row: TransitionRecord) -> dict[str, Any]:
    return {
        "execution_id": row.execution_id,
        "seq": row.seq,
        "from_state": row.from_state,
        "to_state": row.to_state,
        "trigger": row.trigger,
        "at": row.at,
        "duration": row.duration,
        "attempt": row.attempt,
        "worker": row.worker,
        "details": row.details,
        "span_id": row.span_id,
        "hash": row.hash,
    }


def _transition_record(row: RowMapping) -> TransitionRecord:
    return TransitionRecord(
        execution_id=row["execution_id"],
        seq=row["seq"],
        from_state=row["from_state"],
        to_state=row["to_state"],
        trigger=row["trigger"],
        at=as_utc(row["at"]),  # type: ignore[arg-type]
        duration=row["duration"],
        attempt=row["attempt"],
        worker=row["worker"],
        details=row["details"],
        span_id=row["span_id"],
        hash=row["hash"],
    )


def _execution_record(row: RowMapping) -> ExecutionRecord:
    return ExecutionRecord(
        id=row["id"],
        install_id=row["install_id"],
        state=State(row["state"]),
        backend=row["backend"],
        group=row["group_name"],
        request=row["request"],
        resource_name=row["resource_name"],
        resource_details=row["resource_details"] or {},
        address=row["address"],
        exit_code=row["exit_code"],
        failed_state=row["failed_state"],
        error_type=row["error_type"],
        error_message=row["error_message"],
        leaked=bool(row["leaked"]),
        run_dir=row["run_dir"],
        created_at=as_utc(row["created_at"]),  # type: ignore[arg-type]
        updated_at=as_utc(row["updated_at"]),  # type: ignore[arg-type]
        finished_at=as_utc(row["finished_at"]),
        owner=row["owner"],
        lease_expires_at=as_utc(row["lease_expires_at"]),
        lease_token=row["lease_token"],
        attempt=row["attempt"],
        cancel_requested_at=as_utc(row["cancel_requested_at"]),
        trace_id=row["trace_id"],
        root_span_id=row["root_span_id"],
    )
