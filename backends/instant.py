"""The instant backend: an in-process test double for unit tests and benchmarks.

Its machines are entries in a dict: every step returns at once, or after
`delay` seconds. It creates nothing on the host and is never auto-detected;
choose it with `--backend instant` or CONTAINER_RUNTIME=instant.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from backends.base import (
    AgentState,
    AgentStatus,
    Machine,
    MachineSpec,
    OutputSink,
    Resource,
)
from engine.bundle import Bundle
from engine.exceptions import AgentLostError, BackendError


class InstantBackend:
    name: ClassVar[str] = "instant"

    def __init__(
        self,
        *,
        delay: float = 0.0,
        agent_seconds: float = 0.0,
        exit_code: int = 0,
        fail_in: str | None = None,
        output: bytes = b"",
    ):
        self.delay = delay
        self.agent_seconds = agent_seconds
        self.exit_code = exit_code
        # The backend method that raises BackendError, for failure tests.
        self.fail_in = fail_in
        self.output = output
        self.machines: dict[str, Resource] = {}
        self.started: dict[str, float] = {}
        self.calls: list[tuple[str, str]] = []

    def check_available(self) -> None:
        """Do nothing: the instant backend needs no tool."""

    async def _step(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_in == method:
            raise BackendError(
                f"instant backend: {method} failed as configured", backend=self.name
            )

    async def create(self, spec: MachineSpec) -> Machine:
        await self._step("create", spec.name)
        self.machines.setdefault(
            spec.name,
            Resource(
                self.name,
                spec.name,
                spec.install_id,
                spec.execution_id,
                datetime.now(UTC),
                running=False,
            ),
        )
        return Machine(spec.name, spec)

    async def start(self, machine: Machine) -> Machine:
        await self._step("start", machine.name)
        return machine

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine:
        await self._step("wait_ready", machine.name)
        return machine.with_details(ready_at=time.time())

    async def upload(self, machine: Machine, bundle: Bundle) -> None:
        await self._step("upload", machine.name)

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        await self._step("start_agent", machine.name)
        self.started[machine.name] = time.monotonic()
        return machine.with_details(agent_started_at=time.time())

    async def agent_status(self, machine: Machine) -> AgentStatus:
        started = self.started.get(machine.name)
        if started is None:
            return AgentStatus(AgentState.MISSING)
        if time.monotonic() - started < self.agent_seconds:
            return AgentStatus(AgentState.RUNNING, pid=1)
        return AgentStatus(AgentState.EXITED, exit_code=self.exit_code)

    async def wait_agent(
        self, machine: Machine, output: OutputSink, offsets: tuple[int, int] = (0, 0)
    ) -> AgentStatus:
        await self._step("wait_agent", machine.name)
        started = self.started.get(machine.name)
        if started is None:
            raise AgentLostError("instant backend: agent never started")
        remaining = self.agent_seconds - (time.monotonic() - started)
        if remaining > 0:
            await asyncio.sleep(remaining)
        if self.output and offsets[0] == 0:
            outcome = output("stdout", self.output)
            if asyncio.iscoroutine(outcome):
                await outcome
        return AgentStatus(AgentState.EXITED, exit_code=self.exit_code)

    async def collect(
        self, machine: Machine, paths: tuple[str, ...], destination: Path
    ) -> None:
        await self._step("collect", machine.name)

    async def delete(self, machine: Machine) -> None:
        await self._step("delete", machine.name)
        self.machines.pop(machine.name, None)
        self.started.pop(machine.name, None)

    async def delete_by_name(self, name: str, execution_id: str | None = None) -> None:
        self.machines.pop(name, None)

    async def list_resources(self, install_id: str) -> list[Resource]:
        return [r for r in self.machines.values() if r.install_id == install_id]
