"""The statements that every run executes, built once and run with parameters.

Building a statement with `.values(...)` and a literal WHERE clause on every
call, and then its cache key, took more CPU than SQLite took to execute it
(profiles in docs/benchmarks.md). A statement built once has a fixed cache key,
so SQLAlchemy compiles it once for each set of parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from engine.store.schema import executions, resources, transitions

INSERT_EXECUTION = insert(executions)
INSERT_TRANSITION = insert(transitions)
INSERT_RESOURCE = insert(resources)

# An update of one execution that matches only while its lease token is
# current. The SET clause comes from the other keys of the parameters.
FENCED_UPDATE = update(executions).where(
    executions.c.id == bindparam("fence_execution_id"),
    executions.c.lease_token == bindparam("fence_token"),
)

SELECT_EXECUTION = select(executions).where(
    executions.c.id == bindparam("execution_id")
)
SELECT_TRANSITIONS = (
    select(transitions)
    .where(transitions.c.execution_id == bindparam("execution_id"))
    .order_by(transitions.c.seq)
)

_RESOURCE_KEY = (
    resources.c.backend == bindparam("resource_backend"),
    resources.c.name == bindparam("resource_name"),
)
SELECT_RESOURCE = select(resources.c.name).where(*_RESOURCE_KEY)
UPDATE_RESOURCE = update(resources).where(*_RESOURCE_KEY)


def fenced(execution_id: str, token: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """Return the parameters of FENCED_UPDATE that set `values`."""
    return {"fence_execution_id": execution_id, "fence_token": token, **values}


def resource_key(backend: str, name: str, **values: Any) -> dict[str, Any]:
    """Return the parameters of a resource statement, with `values` to set."""
    return {"resource_backend": backend, "resource_name": name, **values}
