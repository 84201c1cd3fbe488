"""The database schema, as SQLAlchemy Core tables. Alembic migrations must match it."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Key-value facts about this install, such as its id.
meta = Table(
    "engine_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

executions = Table(
    "executions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("install_id", String(32), nullable=False),
    Column("group_name", String(255)),
    Column("backend", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    # The stored request: no stdin content and no secret values.
    Column("request", JSON, nullable=False),
    Column("resource_name", String(255)),
    Column("resource_details", JSON, nullable=False, default=dict),
    Column("address", String(255)),
    Column("exit_code", Integer),
    Column("failed_state", String(16)),
    Column("error_type", String(64)),
    Column("error_message", Text),
    Column("leaked", Boolean, nullable=False, default=False),
    Column("run_dir", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    # Lease: the owning worker, until when, and a fencing token that grows on
    # every claim. Writes carry the token they were claimed with.
    Column("owner", String(255)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("lease_token", BigInteger, nullable=False, default=0),
    Column("attempt", Integer, nullable=False, default=1),
    Column("cancel_requested_at", DateTime(timezone=True)),
    # Trace context, made when the run is requested so every attempt shares it.
    Column("trace_id", String(32)),
    Column("root_span_id", String(16)),
    Index("ix_executions_state", "state"),
    Index("ix_executions_owner", "owner"),
)

transitions = Table(
    "transitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "execution_id",
        String(32),
        ForeignKey("executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # Seconds spent in from_state.
    Column("duration", Float),
    Column("attempt", Integer, nullable=False),
    Column("worker", String(255)),
    Column("details", JSON),
    # The span of the state this transition enters.
    Column("span_id", String(16)),
    # SHA-256 over this row's content and the previous row's hash.
    Column("hash", String(64), nullable=False),
    UniqueConstraint("execution_id", "seq", name="uq_transitions_execution_seq"),
)

# Machines that backends created, kept for the reaper.
resources = Table(
    "resources",
    metadata,
    Column("backend", String(32), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column(
        "execution_id",
        String(32),
        ForeignKey("executions.id", ondelete="SET NULL"),
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Column("details", JSON),
)
