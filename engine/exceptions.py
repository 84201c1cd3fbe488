"""Errors raised by the engine and its backends.

Every error derives from `EngineError`. Ids travel as attributes, and `error_type`
is the short name stored on a failed execution.

    EngineError
    ├── UsageError                  bad input or settings; the CLI exits 2
    │   ├── DatabaseError           the database URL or its folder is unusable
    │   ├── UnknownBackendError
    │   ├── ExecutionNotFoundError
    │   ├── InvalidRequestError
    │   └── LeaseHeldError          a live worker holds the execution's lease
    ├── IllegalTransitionError      a trigger that the current state does not allow
    ├── LeaseLostError              another worker owns the execution now
    ├── ResumeInputError            a resumed run lacks an input that was never stored
    │   ├── SecretsUnavailableError the run had secrets and they were not uploaded yet
    │   └── InputUnavailableError   stdin or the stored request cannot be restored
    ├── StepTimeoutError            a step or the whole run took too long
    │   └── IdleTimeoutError        the agent wrote no output for too long
    ├── AgentFailedError            the agent reported an error that ends the run
    ├── RunCancelledError           `engine cancel` asked the run to stop
    ├── MigrationError              the database schema could not be brought up to date
    └── BackendError                a machine tool or runtime failed
        ├── BackendUnavailableError the tool is missing or its daemon does not answer
        ├── ImageNotFoundError
        ├── UploadError
        ├── CommandNotFoundError    the agent command does not exist in the machine
        ├── AgentLostError          the agent process vanished and left no exit status
        ├── MachineLostError        an unfinished run's machine is no longer there
        └── MachineDeleteError      deleting the machine failed; it is leaked
"""

from __future__ import annotations


class EngineError(Exception):
    """The engine failed."""

    error_type = "engine_error"

    def __init__(self, message: str | None = None, *, execution_id: str | None = None):
        super().__init__(message or self.__doc__ or self.error_type)
        self.execution_id = execution_id


class UsageError(EngineError):
    """Invalid input or settings."""

    error_type = "usage_error"


class UnknownBackendError(UsageError):
    """The backend name is not known."""

    error_type = "unknown_backend"

    def __init__(self, name: str, known: list[str]):
        super().__init__(
            f"unknown backend {name!r}: use one of {', '.join(known)} "
            "(set by --backend or CONTAINER_RUNTIME)"
        )
        self.name = name
        self.known = known


class ExecutionNotFoundError(UsageError):
    """No execution has this id."""

    error_type = "execution_not_found"

    def __init__(self, execution_id: str):
        super().__init__(
            f"execution {execution_id!r} not found: `engine list` shows the known ids",
            execution_id=execution_id,
        )


class InvalidRequestError(UsageError):
    """The execution request is invalid."""

    error_type = "invalid_request"


class LeaseHeldError(UsageError):
    """A live worker holds the execution's lease, so it cannot be claimed."""

    error_type = "lease_held"

    def __init__(self, execution_id: str, owner: str | None, expires_at: object):
        super().__init__(
            f"execution {execution_id} is owned by worker {owner} until {expires_at}; "
            "wait for that worker to finish it, or stop it and retry after the "
            "lease expires",
            execution_id=execution_id,
        )
        self.owner = owner
        self.expires_at = expires_at


class IllegalTransitionError(EngineError):
    """The current state does not allow this trigger."""

    error_type = "illegal_transition"

    def __init__(self, execution_id: str, state: str, trigger: str, allowed: list[str]):
        allowed_text = ", ".join(allowed) if allowed else "none"
        super().__init__(
            f"execution {execution_id} in state {state!r} cannot take trigger "
            f"{trigger!r}; allowed triggers: {allowed_text}",
            execution_id=execution_id,
        )
        self.state = state
        self.trigger = trigger
        self.allowed = allowed


class LeaseLostError(EngineError):
    """Another worker claimed the execution, so this one may not write to it."""

    error_type = "lease_lost"

    def __init__(self, execution_id: str, token: int):
        super().__init__(
            f"execution {execution_id}: lease token {token} is no longer current; "
            "another worker owns this run",
            execution_id=execution_id,
        )
        self.token = token


class ResumeInputError(EngineError):
    """A resumed run needs an input that the engine never stores."""

    error_type = "resume_input_missing"


class SecretsUnavailableError(ResumeInputError):
    """The run's secrets were not uploaded before the crash and are never stored."""

    error_type = "secrets_unavailable"


class InputUnavailableError(ResumeInputError):
    """The run's stdin file or stored request cannot be restored."""

    error_type = "input_unavailable"


class StepTimeoutError(EngineError):
    """A step or the whole run exceeded its time limit."""

    error_type = "timeout"


class IdleTimeoutError(StepTimeoutError):
    """The agent wrote no output for longer than the idle timeout."""

    error_type = "idle_timeout"


class AgentFailedError(EngineError):
    """The agent reported an error, such as rejected credentials, that ends the run."""

    error_type = "agent_failed"


class RunCancelledError(EngineError):
    """The run was cancelled on request."""

    error_type = "cancelled"


class DatabaseError(UsageError):
    """The database could not be opened; the URL or its folder is wrong."""

    error_type = "database_error"


class MigrationError(EngineError):
    """The database schema could not be migrated."""

    error_type = "migration_error"


class BackendError(EngineError):
    """A backend operation failed."""

    error_type = "backend_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        backend: str | None = None,
        execution_id: str | None = None,
        resource: str | None = None,
        command: list[str] | None = None,
        exit_code: int | None = None,
        stderr: str | None = None,
    ):
        super().__init__(message, execution_id=execution_id)
        self.backend = backend
        self.resource = resource
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr


class BackendUnavailableError(BackendError):
    """The backend's tool is not installed or its daemon does not respond."""

    error_type = "backend_unavailable"


class ImageNotFoundError(BackendError):
    """The machine image does not exist."""

    error_type = "image_not_found"


class UploadError(BackendError):
    """The run bundle could not be uploaded."""

    error_type = "upload_failed"


class CommandNotFoundError(BackendError):
    """The agent command was not found inside the machine."""

    error_type = "command_not_found"


class AgentLostError(BackendError):
    """The agent process is gone and left no exit status."""

    error_type = "agent_lost"


class MachineLostError(BackendError):
    """The machine of an unfinished run is no longer on its backend."""

    error_type = "machine_lost"


class MachineDeleteError(BackendError):
    """The machine could not be deleted, so it is recorded as leaked."""

    error_type = "delete_failed"
