"""The execution state machine: ten states and the one transition table.

    requested → cloning → booting → ip-ready → uploading → executing → collecting
              → deleting → done
    any step that fails, times out or is cancelled → deleting → failed
    requested → failed when nothing was created yet

Entering a state means its step is about to run, so the store always records which
step may be half done.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from transitions.extensions.asyncio import AsyncMachine


class State(StrEnum):
    REQUESTED = "requested"
    CLONING = "cloning"
    BOOTING = "booting"
    IP_READY = "ip-ready"
    UPLOADING = "uploading"
    EXECUTING = "executing"
    COLLECTING = "collecting"
    DELETING = "deleting"
    DONE = "done"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({State.DONE, State.FAILED})

# The steps that a backend performs, in order. A failure in any of them leads to
# `deleting`, because each may have created or started the machine.
STEP_STATES = (
    State.CLONING,
    State.BOOTING,
    State.IP_READY,
    State.UPLOADING,
    State.EXECUTING,
    State.COLLECTING,
)

# The trigger that records a step's success, by the state it leaves.
SUCCESS_TRIGGERS: dict[State, str] = {
    State.REQUESTED: "claimed",
    State.CLONING: "cloned",
    State.BOOTING: "booted",
    State.IP_READY: "reachable",
    State.UPLOADING: "uploaded",
    State.EXECUTING: "agent_exited",
    State.COLLECTING: "collected",
    State.DELETING: "deleted",
}

# The trigger recorded when an execution row is first written.
CREATED_TRIGGER = "requested"

FAILURE_TRIGGERS = ("step_failed", "timed_out", "cancelled")

_STEPS = [state.value for state in STEP_STATES]

TRANSITIONS: list[dict[str, Any]] = [
    # trigger          source                dest
    {"trigger": "claimed", "source": "requested", "dest": "cloning"},
    {"trigger": "cloned", "source": "cloning", "dest": "booting"},
    {"trigger": "booted", "source": "booting", "dest": "ip-ready"},
    {"trigger": "reachable", "source": "ip-ready", "dest": "uploading"},
    {"trigger": "uploaded", "source": "uploading", "dest": "executing"},
    {"trigger": "agent_exited", "source": "executing", "dest": "collecting"},
    {"trigger": "collected", "source": "collecting", "dest": "deleting"},
    {
        "trigger": "deleted",
        "source": "deleting",
        "dest": "failed",
        "conditions": "has_error",
    },
    {"trigger": "deleted", "source": "deleting", "dest": "done"},
    {"trigger": "delete_failed", "source": "deleting", "dest": "failed"},
    # Failures inside a step clean up through `deleting`.
    {"trigger": "step_failed", "source": _STEPS, "dest": "deleting"},
    {"trigger": "timed_out", "source": _STEPS, "dest": "deleting"},
    {"trigger": "cancelled", "source": _STEPS, "dest": "deleting"},
    # Nothing exists yet in `requested`, so its failures end the run at once.
    {"trigger": "rejected", "source": "requested", "dest": "failed"},
    {"trigger": "timed_out", "source": "requested", "dest": "failed"},
    {"trigger": "cancelled", "source": "requested", "dest": "failed"},
]


def build_machine() -> AsyncMachine:
    """Build the shared machine; runs join it with `add_model` and leave when done.

    One machine for all runs keeps the per-run cost to the model object. Each
    model must provide `has_error()` and `record_transition(event)`, the
    callback that commits the transition before the state changes.
    """
    return AsyncMachine(
        model=None,
        states=[state.value for state in State],
        transitions=TRANSITIONS,
        initial=State.REQUESTED.value,
        send_event=True,
        auto_transitions=False,
        before_state_change="record_transition",
    )


def allowed_triggers(state: State | str) -> list[str]:
    """Return the triggers that the table allows in `state`, sorted."""
    source = str(state)
    names = {
        row["trigger"]
        for row in TRANSITIONS
        if row["source"] == source
        or (isinstance(row["source"], list) and source in row["source"])
    }
    return sorted(names)
