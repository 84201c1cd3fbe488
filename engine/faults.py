"""Fault injection for crash tests: the process kills itself at a chosen point.

FOR TESTS ONLY. With ENGINE_TEST_CRASH_IN set, the engine sends itself SIGKILL
right after it commits the transition into that state, or, for
`agent-started`, right after it commits that the agent was started. Nothing is
cleaned up, exactly as after a real crash, so a test can check that
`engine resume` and `engine reap` recover from that point.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, NoReturn

from engine.observers import RunObserver
from engine.states import State

if TYPE_CHECKING:
    from engine.records import TransitionRecord
    from engine.runner import Run

logger = logging.getLogger(__name__)

AGENT_STARTED = "agent-started"

# Every point where ENGINE_TEST_CRASH_IN can stop the process.
CRASH_POINTS = (
    *(state.value for state in State if not state.is_terminal),
    AGENT_STARTED,
)


def crash(point: str) -> NoReturn:
    """Kill this process with SIGKILL, which it cannot catch or clean up after."""
    logger.warning(
        "ENGINE_TEST_CRASH_IN=%s reached; killing this process",
        point,
        extra={"action": "test_crash"},
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("SIGKILL did not stop the process")


class CrashInjector(RunObserver):
    """Crashes the process when a run reaches `point`."""

    def __init__(self, point: str):
        if point not in CRASH_POINTS:
            raise ValueError(
                f"unknown crash point {point!r}; use one of {', '.join(CRASH_POINTS)}"
            )
        self.point = point

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        if row.to_state == self.point:
            crash(self.point)

    def on_agent_started(self, run: Run) -> None:
        if self.point == AGENT_STARTED:
            crash(self.point)
