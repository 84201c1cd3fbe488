"""Runs AI-agent invocations in fresh, isolated machines as persisted state machines."""

from engine.engine import Engine
from engine.records import ExecutionRecord, ExecutionRequest, TransitionRecord
from engine.settings import Settings, load_settings
from engine.states import State

__all__ = [
    "Engine",
    "ExecutionRecord",
    "ExecutionRequest",
    "Settings",
    "State",
    "TransitionRecord",
    "load_settings",
]
