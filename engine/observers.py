"""Observers: code that watches runs without steering them (CLI progress, tracing).

An observer must return quickly and never raise into the run; the runner logs
and drops its errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.records import ExecutionRecord, TransitionRecord
    from engine.runner import Run


class RunObserver:
    """Base class with no-op hooks; override what you need."""

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        """Called after a transition row has been committed."""

    def on_agent_started(self, run: Run) -> None:
        """Called once the agent was started and its start was committed."""

    def on_output(self, run: Run, stream: str, data: bytes) -> None:
        """Called with agent output as it arrives (`stdout` or `stderr`)."""

    def on_finished(self, run: Run, record: ExecutionRecord) -> None:
        """Called once the run is terminal."""
