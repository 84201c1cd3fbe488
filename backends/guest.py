"""The argv and outputs of the guest scripts that every backend runs in a machine.

The scripts themselves live in `engine/guest/` and travel in the run bundle.
"""

from __future__ import annotations

from backends.base import AgentState, AgentStatus, Machine
from engine.exceptions import AgentLostError

# Where container backends (Docker, Apple Container) put the run bundle.
GUEST_ROOT = "/engine"
SHARES_ROOT = "/engine/shares"
# The main process of a container backend's machine: it only keeps the machine
# running between steps, and deleting the container ends it.
KEEPALIVE = ["-c", "while :; do sleep 3600; done"]


def agent_lost(backend: str, machine: Machine) -> AgentLostError:
    """Return the error for an agent that vanished without an exit status."""
    return AgentLostError(
        f"agent in {machine.name} is gone and left no exit status",
        backend=backend,
        execution_id=machine.spec.execution_id,
        resource=machine.name,
    )


def run_argv(root: str, command: list[str]) -> list[str]:
    """Return the argv that starts `command` under the runner; `command` stays argv."""
    return ["/bin/sh", f"{root}/run.sh", *command]


def start_argv(root: str, command: list[str]) -> list[str]:
    """Return the argv that starts `command` detached, in its own session."""
    return ["/bin/sh", f"{root}/start.sh", *command]


def follow_argv(root: str, offsets: tuple[int, int]) -> list[str]:
    return ["/bin/sh", f"{root}/follow.sh", str(offsets[0]), str(offsets[1])]


def status_argv(root: str) -> list[str]:
    return ["/bin/sh", f"{root}/status.sh"]


def parse_agent_status(text: str) -> AgentStatus:
    """Parse status.sh output: `exited CODE`, `running PID` or `missing`."""
    lines = text.strip().splitlines()
    first = lines[0].split() if lines else ["missing"]
    error = "\n".join(lines[1:]).strip() or None
    if first[0] == "exited" and len(first) == 2 and first[1].lstrip("-").isdigit():
        return AgentStatus(
            AgentState.EXITED, exit_code=int(first[1]), start_error=error
        )
    if first[0] == "running" and len(first) == 2 and first[1].isdigit():
        return AgentStatus(AgentState.RUNNING, pid=int(first[1]))
    return AgentStatus(AgentState.MISSING, start_error=error)
