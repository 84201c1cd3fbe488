"""Settings read from the environment and from `.env` in the working directory.

Names follow the NanoClaw integration where one existed (`CONTAINER_RUNTIME`,
`TART_*`); the engine's own settings start with `ENGINE_`. Durations are seconds
unless the name says otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.exceptions import UsageError
from engine.records import check_network_mode


def default_data_dir() -> Path:
    """Return `$XDG_DATA_HOME/engine`, or `~/.local/share/engine`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "engine"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    engine_data_dir: Path = Field(default_factory=default_data_dir)
    # Default: SQLite at ENGINE_DATA_DIR/engine.db.
    engine_database_url: str | None = None

    # Backend: auto, docker, tart, apple-container, or instant (benchmarks only).
    container_runtime: str = "auto"

    engine_step_timeout: float = Field(default=300.0, gt=0)
    engine_run_timeout: float = Field(default=3600.0, gt=0)
    engine_delete_timeout: float = Field(default=120.0, gt=0)
    engine_max_concurrent_runs: int = Field(default=16, ge=1)

    # Leases: a worker renews its runs, and checks them for cancel requests,
    # every ENGINE_LEASE_SECONDS / 3.
    engine_lease_seconds: float = Field(default=30.0, ge=1)

    # What to do when a resumed run's agent cannot be found: fail or rerun.
    engine_resume_policy: Literal["fail", "rerun"] = "fail"

    engine_docker_image: str = "engine-base:latest"
    engine_docker_network: str = "none"
    # Image for the apple-container backend, from its own local image store.
    engine_apple_image: str = "engine-base:latest"
    engine_cpus: float | None = Field(default=None, gt=0)
    engine_memory: str | None = Field(default=None, pattern=r"^[0-9]+[bkmgBKMG]?$")

    tart_base_image: str = "tart_nanoclaw_base"
    tart_vm_username: str = "admin"
    tart_vm_password: SecretStr | None = None
    tart_ssh_key: Path | None = None
    # Seconds; values above 1000 are read as milliseconds, as NanoClaw gave them.
    tart_ssh_timeout: float = Field(default=60.0, gt=0)
    tart_max_vms: int = Field(default=2, ge=1)
    # How `tart ip` finds the address: dhcp (NAT, the default) or arp (bridged).
    tart_ip_resolver: Literal["dhcp", "arp"] = "dhcp"

    # NanoClaw protocol (`engine run --protocol nanoclaw`, see docs/nanoclaw.md).
    # Agent runtime when neither --runtime nor the group's containerConfig names
    # one: claude, codex, opencode or command.
    agent_runtime: Literal["claude", "codex", "opencode", "command"] = "claude"
    # Folder that contains the groups/<folder>/ directories, relative to cwd.
    nanoclaw_groups_dir: Path = Path("groups")
    # NanoClaw's mount allowlist; default ~/.config/nanoclaw/mount-allowlist.json.
    nanoclaw_mount_allowlist: Path | None = None
    # Seconds a whole run may take when the group's containerConfig sets no timeout.
    nanoclaw_timeout: float = Field(default=1800.0, gt=0)
    # Seconds without agent output on stdout after which the run is stopped.
    nanoclaw_idle_timeout: float = Field(default=600.0, gt=0)
    # Comma-separated names of more environment variables (from the environment
    # or .env) to pass into the machine as secrets, besides the runtime's API keys.
    nanoclaw_env_secrets: str = ""

    # Span exporter: none, otlp (protocol from OTEL_EXPORTER_OTLP_PROTOCOL),
    # otlp-http, otlp-grpc, jsonl or console. The OTLP exporters read the
    # standard OTEL_EXPORTER_OTLP_* variables themselves.
    engine_trace_exporter: Literal[
        "none", "otlp", "otlp-http", "otlp-grpc", "jsonl", "console"
    ] = "none"
    # File for the jsonl exporter; default ENGINE_DATA_DIR/traces.jsonl.
    engine_trace_file: Path | None = None
    # Seconds that closing the engine waits for queued spans to be exported.
    engine_trace_flush_timeout: float = Field(default=5.0, ge=0)

    @field_validator("engine_docker_network")
    @classmethod
    def _isolated_network(cls, value: str) -> str:
        return check_network_mode(value) or value

    @field_validator("engine_data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Run folders are stored by path, so a relative one would move with cwd.
        return value.expanduser().resolve()

    # FOR TESTS ONLY: SIGKILL this process at that point of a run (a state name
    # or `agent-started`), to test crash recovery. See engine/faults.py.
    engine_test_crash_in: str | None = None

    @field_validator("engine_test_crash_in")
    @classmethod
    def _known_crash_point(cls, value: str | None) -> str | None:
        from engine.faults import CRASH_POINTS

        if value and value not in CRASH_POINTS:
            raise ValueError(f"use one of {', '.join(CRASH_POINTS)}")
        return value or None

    @field_validator("tart_ssh_timeout")
    @classmethod
    def _milliseconds_to_seconds(cls, value: float) -> float:
        # NanoClaw's TART_SSH_TIMEOUT=60000 meant 60 s; no SSH wait is 1000 s long.
        return value / 1000 if value > 1000 else value

    @property
    def database_url(self) -> str:
        if self.engine_database_url:
            return self.engine_database_url
        return f"sqlite:///{self.engine_data_dir / 'engine.db'}"

    @property
    def runs_dir(self) -> Path:
        return self.engine_data_dir / "runs"

    @property
    def trace_file(self) -> Path:
        return self.engine_trace_file or self.engine_data_dir / "traces.jsonl"


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into a one-line `UsageError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "settings"
        raise UsageError(
            f"invalid setting {name}={first.get('input')!r}: {first['msg']} "
            "(check the environment and .env)"
        ) from exc
