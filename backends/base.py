"""The backend protocol: one method per step of the execution state machine.

The engine core talks to machines only through this protocol. A backend is the
only code that runs a VM tool or talks to a container runtime.

    state        method
    cloning      create        make the machine under a deterministic name
    booting      start         start it
    ip-ready     wait_ready    wait until it responds on its exec channel
    uploading    upload        copy the run bundle in as one tar stream
    executing    start_agent   start the command detached, output to files
                 agent_status  reattach: is it running, or did it exit?
                 wait_agent    stream its output and return its exit status
    collecting   collect       copy results back to the host, safely
    deleting     delete        stop and remove it; "not found" counts as done
    (reaper)     list_resources  this install's machines
                 delete_by_name  delete a listed machine; "not found" is done
    (submit)     check_available raise BackendUnavailableError if the tool is missing

Every method must be safe to repeat after a crash (see docs/operations.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from engine.bundle import Bundle

# Called with ("stdout" | "stderr", bytes) as the agent writes output.
OutputSink = Callable[[str, bytes], Awaitable[None] | None]

# Labels (or name parts) that tie a machine to an install and an execution.
INSTALL_LABEL = "engine.install"
EXECUTION_LABEL = "engine.execution"


@dataclasses.dataclass(frozen=True, slots=True)
class Share:
    """A host folder mounted into the machine under `name`."""

    name: str
    host_path: Path
    read_only: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class MachineSpec:
    """The machine that the cloning step creates."""

    name: str
    execution_id: str
    install_id: str
    image: str | None = None
    cpus: float | None = None
    memory: str | None = None
    network: str | None = None
    # Host folders mounted into the machine: Docker binds them at
    # /engine/shares/NAME, Tart shares them under /Volumes/My Shared Files/NAME.
    shares: tuple[Share, ...] = ()
    run_dir: Path | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {INSTALL_LABEL: self.install_id, EXECUTION_LABEL: self.execution_id}


@dataclasses.dataclass(frozen=True, slots=True)
class Machine:
    """A handle on a created machine. `details` is stored with the execution."""

    name: str
    spec: MachineSpec
    address: str | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def with_details(self, **changes: Any) -> Machine:
        return dataclasses.replace(self, details={**self.details, **changes})


class AgentState(StrEnum):
    RUNNING = "running"
    EXITED = "exited"
    # Never started, or gone without leaving an exit status.
    MISSING = "missing"


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStatus:
    state: AgentState
    exit_code: int | None = None
    pid: int | None = None
    # Set when the runner could not start the command at all.
    start_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Resource:
    """A machine that a backend found on the host."""

    backend: str
    name: str
    install_id: str | None
    execution_id: str | None
    created_at: datetime | None = None
    running: bool | None = None


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]

    def check_available(self) -> None: ...

    async def create(self, spec: MachineSpec) -> Machine: ...

    async def start(self, machine: Machine) -> Machine: ...

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine: ...

    async def upload(self, machine: Machine, bundle: Bundle) -> None: ...

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine: ...

    async def agent_status(self, machine: Machine) -> AgentStatus: ...

    async def wait_agent(
        self, machine: Machine, output: OutputSink, offsets: tuple[int, int] = (0, 0)
    ) -> AgentStatus: ...

    async def collect(
        self, machine: Machine, paths: tuple[str, ...], destination: Path
    ) -> None: ...

    async def delete(self, machine: Machine) -> None: ...

    async def delete_by_name(
        self, name: str, execution_id: str | None = None
    ) -> None: ...

    async def list_resources(self, install_id: str) -> list[Resource]: ...


def machine_name(install_id: str, execution_id: str) -> str:
    """Return the deterministic machine name for an execution."""
    return f"eng-{install_id}-{execution_id}"
