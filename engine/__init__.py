"""Runs AI-agent invocations in fresh, isolated machines as persisted state machines.

The public names load on first use, so that `backends` can import engine
modules such as `engine.exceptions` without importing the whole engine.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "engine.engine",
    "ExecutionRecord": "engine.records",
    "ExecutionRequest": "engine.records",
    "TransitionRecord": "engine.records",
    "Settings": "engine.settings",
    "load_settings": "engine.settings",
    "State": "engine.states",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
