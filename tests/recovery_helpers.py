"""Builders for the crash-recovery tests: dead workers, simulated crashes, databases."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy

from backends.base import AgentStatus, Machine
from backends.instant import InstantBackend
from engine.engine import Engine
from engine.faults import AGENT_STARTED
from engine.observers import RunObserver
from engine.records import ExecutionRequest, TransitionRecord
from engine.runner import Run
from engine.settings import Settings
from engine.states import State
from engine.worker import WorkerIdentity
from tests.helpers import settings_for

# A pid above the Linux maximum (4194304), so no process on this host has it.
DEAD_PID = 999_999_999


def dead_worker() -> WorkerIdentity:
    """Return a worker on this host whose process does not exist."""
    return WorkerIdentity(socket.gethostname(), DEAD_PID, 1)


def remote_worker(name: str) -> WorkerIdentity:
    """Return a worker on another host, whose liveness cannot be checked."""
    return WorkerIdentity(f"{name}.invalid", 4242, 1)


class SimulatedCrash(BaseException):
    """Stops a drive like a crash: no `except Exception` in the engine catches it."""


class CrashingBackend(InstantBackend):
    """An instant backend that raises SimulatedCrash on its next call once armed."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.armed = False
        self.agent_starts = 0

    async def _step(self, method: str, name: str) -> None:
        if self.armed:
            self.armed = False
            raise SimulatedCrash(method)
        await super()._step(method, name)

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        started = await super().start_agent(machine, command)
        self.agent_starts += 1
        return started

    async def agent_status(self, machine: Machine) -> AgentStatus:
        if self.armed:
            self.armed = False
            raise SimulatedCrash("agent_status")
        return await super().agent_status(machine)


class StopDriveAt(RunObserver):
    """Arms the backend's crash when a run reaches `point`.

    The transition into the state is committed first, as with a real crash,
    and the backend's next call, the first side effect of the step, raises.
    """

    def __init__(self, point: str, backend: CrashingBackend):
        self.point = point
        self.backend = backend

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        if row.to_state == self.point:
            self.backend.armed = True

    def on_agent_started(self, run: Run) -> None:
        if self.point == AGENT_STARTED:
            self.backend.armed = True


def instant_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return settings_for(tmp_path, container_runtime="instant", **overrides)


def engine_for(
    settings: Settings,
    backend: InstantBackend,
    worker: WorkerIdentity | None = None,
    observers: list[RunObserver] | None = None,
) -> Engine:
    return Engine(
        settings,
        backends={"instant": backend},
        worker=worker,
        observers=observers or [],
    )


async def crash_at(
    settings: Settings,
    backend: CrashingBackend,
    request: ExecutionRequest,
    point: str,
) -> str:
    """Run `request` as a dead worker that stops at `point`; return the id.

    The run is left as a crash leaves it: its state committed, its lease owned
    by a worker whose process is gone.
    """
    engine = engine_for(settings, backend, dead_worker(), [StopDriveAt(point, backend)])
    try:
        execution_id = await engine.submit(request)
        if point != State.REQUESTED.value:
            with contextlib.suppress(SimulatedCrash):
                await engine.drive(execution_id, request)
    finally:
        backend.armed = False
        await engine.aclose()
    return execution_id


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the test server; yield its URL; drop it."""
    name = f"engine_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        url = sqlalchemy.engine.make_url(server_url).set(database=name)
        yield url.render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
