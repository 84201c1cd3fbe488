"""Immutable records: what a caller requests, and what the store returns."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from engine.states import State

# Environment variable names that may be handed to the agent.
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Bundle entries that the engine writes itself, so an upload may not replace them.
_RESERVED_BUNDLE_NAMES = frozenset(
    {"run.sh", "start.sh", "follow.sh", "status.sh", "stdin", "env", "result"}
)


def check_network_mode(value: str | None) -> str | None:
    """Reject network modes that give the machine the host's own network."""
    if value is None:
        return value
    if value == "host" or value.startswith("container:"):
        raise ValueError(
            f"network mode {value!r} shares a network namespace with the host or "
            "another container and defeats isolation; use none, bridge or a "
            "network you created"
        )
    return value


class ShareRequest(BaseModel):
    """A host folder to mount into the machine, read-only unless asked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64)
    host_path: Path
    read_only: bool = True

    @field_validator("host_path")
    @classmethod
    def _existing_folder(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"share folder {str(value)!r} does not exist")
        return value.resolve()


class ExecutionRequest(BaseModel):
    """One agent invocation to run in a fresh machine.

    `stdin` is data: the backend writes it to a file that becomes the command's
    standard input. `secrets` reach the agent's environment inside the machine
    and are never stored, logged or traced.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: list[str] = Field(min_length=1)
    backend: str | None = None
    image: str | None = None
    upload_dir: Path | None = None
    # More host folders to upload, by guest path relative to the bundle root,
    # e.g. {"work/group": Path("groups/main")}.
    uploads: dict[str, Path] = Field(default_factory=dict)
    stdin: bytes | None = None
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    group: str | None = None
    timeout: float | None = Field(default=None, gt=0)
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, pattern=r"^[0-9]+[bkmgBKMG]?$")
    network: str | None = None
    # Host folders mounted into the machine by name; see docs/design.md.
    shares: tuple[ShareRequest, ...] = ()
    # Extra guest paths, relative to the run bundle, to copy back when collecting.
    collect_paths: tuple[str, ...] = ()
    resume_policy: Literal["fail", "rerun"] | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the command name is empty")
        return value

    @field_validator("uploads")
    @classmethod
    def _upload_paths(cls, value: dict[str, Path]) -> dict[str, Path]:
        for guest_path, host_dir in value.items():
            parts = guest_path.split("/")
            if (
                any(part in ("", ".", "..") for part in parts)
                or parts[0] in _RESERVED_BUNDLE_NAMES
                or guest_path in ("work/input", "work/output")
            ):
                raise ValueError(
                    f"upload guest path {guest_path!r} is invalid: give a relative "
                    "path without '.' or '..' that names no engine file "
                    "(result, stdin, env, the scripts, work/input, work/output)"
                )
            if not host_dir.is_dir():
                raise ValueError(f"upload folder {str(host_dir)!r} does not exist")
        return {path: host_dir.resolve() for path, host_dir in value.items()}

    @field_validator("network")
    @classmethod
    def _isolated_network(cls, value: str | None) -> str | None:
        return check_network_mode(value)

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not re.match(_ENV_NAME, name):
                raise ValueError(f"secret name {name!r} is not a valid variable name")
        return value

    def stored_form(self) -> dict[str, Any]:
        """Return the request as stored in the database: no stdin, no secret values."""
        data = self.model_dump(mode="json", exclude={"stdin", "secrets"})
        data["secret_names"] = sorted(self.secrets)
        data["stdin_bytes"] = len(self.stdin) if self.stdin is not None else None
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class TransitionRecord:
    execution_id: str
    seq: int
    from_state: str | None
    to_state: str
    trigger: str
    at: datetime
    # Seconds spent in `from_state`; None for the first row.
    duration: float | None
    attempt: int
    worker: str | None
    details: dict[str, Any] | None
    span_id: str | None
    hash: str

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["at"] = self.at.isoformat()
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionRecord:
    id: str
    install_id: str
    state: State
    backend: str
    group: str | None
    request: dict[str, Any]
    resource_name: str | None
    resource_details: dict[str, Any]
    address: str | None
    exit_code: int | None
    failed_state: str | None
    error_type: str | None
    error_message: str | None
    leaked: bool
    run_dir: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    owner: str | None
    lease_expires_at: datetime | None
    lease_token: int
    attempt: int
    cancel_requested_at: datetime | None
    trace_id: str | None
    root_span_id: str | None
    transitions: tuple[TransitionRecord, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    def as_dict(self) -> dict[str, Any]:
        data = {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.name != "transitions"
        }
        data["state"] = self.state.value
        data["error"] = (
            {"type": self.error_type, "message": self.error_message}
            if self.error_type
            else None
        )
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
        data["transitions"] = [row.as_dict() for row in self.transitions]
        return data

    def with_transitions(
        self, transitions: tuple[TransitionRecord, ...]
    ) -> ExecutionRecord:
        return dataclasses.replace(self, transitions=transitions)


class ClaimBasis(StrEnum):
    """The reason that a worker may take over an execution's lease."""

    # No worker owns the execution.
    NO_OWNER = "no_owner"
    # The owner did not renew the lease before it expired.
    EXPIRED = "expired"
    # The owner's process is gone from this host, so it can no longer renew.
    OWNER_GONE = "owner_gone"


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The lease columns of one execution, read to decide on a claim."""

    execution_id: str
    state: State
    owner: str | None
    expires_at: datetime | None
    token: int
