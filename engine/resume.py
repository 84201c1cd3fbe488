"""Resuming an execution whose worker stopped before the run ended.

The stored request has no stdin and no secret values. Stdin comes back from the
copy that `submit` saved at RUN_DIR/stdin. Secret values are never stored, so a
run that had secrets and stopped before its upload finished cannot be resumed:
it fails with `secrets_unavailable`. From `executing` on, the secrets are already
inside the machine.

`resume_blocker` returns the error that ends a run instead of resuming it. The
reaper calls it too, to decide which abandoned runs to fail and clean up.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from engine.exceptions import (
    EngineError,
    InputUnavailableError,
    RunCancelledError,
    SecretsUnavailableError,
    StepTimeoutError,
)
from engine.records import ExecutionRecord, ExecutionRequest
from engine.states import State

# States whose step runs before the bundle, secrets included, is in the machine.
BEFORE_UPLOAD = frozenset(
    {State.REQUESTED, State.CLONING, State.BOOTING, State.IP_READY, State.UPLOADING}
)

# Keys of the stored request that are not ExecutionRequest fields.
_STORED_ONLY_KEYS = ("secret_names", "stdin_bytes")

# Used when the stored request is invalid, so the run can still be driven to
# `failed` and its machine deleted.
_PLACEHOLDER_COMMAND = ["true"]


def stdin_path(run_dir: Path) -> Path:
    return run_dir / "stdin"


def secret_names(record: ExecutionRecord) -> list[str]:
    return list(record.request.get("secret_names") or [])


def stdin_restorable(record: ExecutionRecord, run_dir: Path) -> bool:
    """Return whether the run had no stdin, or its saved copy is complete."""
    size = record.request.get("stdin_bytes")
    if size is None:
        return True
    path = stdin_path(run_dir)
    return path.is_file() and path.stat().st_size == size


def rebuild_request(
    record: ExecutionRecord, run_dir: Path
) -> tuple[ExecutionRequest, EngineError | None]:
    """Return the request rebuilt from the store, and an error if that failed.

    The rebuilt request has no secrets. When the stored request is invalid, the
    request returned is a placeholder that only serves to delete the machine.
    """
    data = {
        key: value
        for key, value in record.request.items()
        if key not in _STORED_ONLY_KEYS
    }
    if record.request.get("stdin_bytes") is not None and stdin_restorable(
        record, run_dir
    ):
        data["stdin"] = stdin_path(run_dir).read_bytes()
    try:
        return ExecutionRequest.model_validate(data), None
    except ValidationError as exc:
        error = InputUnavailableError(
            f"the stored request of execution {record.id} is invalid and cannot be "
            f"resumed: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}",
            execution_id=record.id,
        )
        return ExecutionRequest(command=_PLACEHOLDER_COMMAND), error


def run_deadline_passed(
    record: ExecutionRecord, now: datetime, default_timeout: float
) -> float | None:
    """Return the run's timeout in seconds if it has passed at `now`, else None."""
    timeout = record.request.get("timeout") or default_timeout
    elapsed = (now - record.created_at).total_seconds()
    return timeout if elapsed >= timeout else None


def prepare_resume(
    record: ExecutionRecord, run_dir: Path, *, now: datetime, default_timeout: float
) -> tuple[ExecutionRequest, EngineError | None]:
    """Return the request to resume `record` with, and the error that blocks it."""
    request, error = rebuild_request(record, run_dir)
    if record.state is State.DELETING:
        # Deleting needs only the machine name, so a bad request does not matter.
        return request, None
    blocker = resume_blocker(
        record,
        now=now,
        default_timeout=default_timeout,
        stdin_present=stdin_restorable(record, run_dir),
    )
    return request, blocker or error


def resume_blocker(
    record: ExecutionRecord,
    *,
    now: datetime,
    default_timeout: float,
    stdin_present: bool,
) -> EngineError | None:
    """Return the error that ends `record` instead of resuming it, or None.

    Returns None for a run in `deleting` or later, because finishing the
    deletion of its machine is safe.
    """
    if record.state.is_terminal or record.state is State.DELETING:
        return None
    if record.cancel_requested_at is not None:
        return RunCancelledError(
            "the run was cancelled on request", execution_id=record.id
        )
    timeout = run_deadline_passed(record, now, default_timeout)
    if timeout is not None:
        return StepTimeoutError(
            f"the run's timeout of {timeout:g} s passed before it was resumed",
            execution_id=record.id,
        )
    if record.state not in BEFORE_UPLOAD:
        return None
    names = secret_names(record)
    if names:
        return SecretsUnavailableError(
            f"the run's secrets ({', '.join(names)}) were not uploaded before its "
            "worker stopped, and secret values are never stored; submit the run "
            "again",
            execution_id=record.id,
        )
    if not stdin_present:
        return InputUnavailableError(
            f"the run's stdin ({record.request.get('stdin_bytes')} bytes) was not "
            f"uploaded before its worker stopped, and its copy under {record.run_dir} "
            "is missing or incomplete; submit the run again",
            execution_id=record.id,
        )
    return None
