"""The transition table and illegal triggers."""

from __future__ import annotations

import pytest

from engine.exceptions import IllegalTransitionError
from engine.states import (
    STEP_STATES,
    SUCCESS_TRIGGERS,
    TRANSITIONS,
    State,
    allowed_triggers,
)
from tests.helpers import instant_engine, request


def test_state_names_are_the_ten_states():
    names = [state.value for state in State]
    assert names == [
        "requested",
        "cloning",
        "booting",
        "ip-ready",
        "uploading",
        "executing",
        "collecting",
        "deleting",
        "done",
        "failed",
    ]


def test_every_step_can_fail_into_deleting():
    for state in STEP_STATES:
        for trigger in ("step_failed", "timed_out", "cancelled"):
            dests = [
                row["dest"]
                for row in TRANSITIONS
                if row["trigger"] == trigger
                and isinstance(row["source"], list)
                and state.value in row["source"]
            ]
            assert dests == ["deleting"], (state, trigger)


def test_terminal_states_allow_no_trigger():
    assert allowed_triggers(State.DONE) == []
    assert allowed_triggers(State.FAILED) == []


def test_requested_fails_without_deleting():
    assert "rejected" in allowed_triggers(State.REQUESTED)
    assert "step_failed" not in allowed_triggers(State.REQUESTED)


def test_success_path_visits_every_state_once():
    state = State.REQUESTED
    visited = [state]
    while state in SUCCESS_TRIGGERS:
        trigger = SUCCESS_TRIGGERS[state]
        rows = [
            row
            for row in TRANSITIONS
            if row["trigger"] == trigger
            and row["source"] == state.value
            and "conditions" not in row
        ]
        assert len(rows) == 1
        state = State(rows[0]["dest"])
        visited.append(state)
    assert visited[-1] is State.DONE
    assert len(visited) == 9


async def test_illegal_trigger_names_execution_state_and_allowed(tmp_path):
    async with instant_engine(tmp_path) as engine:
        record = await engine.run(request())
        run = engine._build_run(record, request())
        engine._machine.add_model(run, initial=record.state.value)
        with pytest.raises(IllegalTransitionError) as caught:
            await run.fire("uploaded")
    message = str(caught.value)
    assert record.id in message
    assert "'done'" in message
    assert "'uploaded'" in message
    assert caught.value.allowed == []
    assert caught.value.execution_id == record.id
