"""Small builders shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from backends.instant import InstantBackend
from engine.engine import Engine
from engine.records import ExecutionRequest
from engine.settings import Settings


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "engine_data_dir": tmp_path / "data",
        "engine_database_url": f"sqlite:///{tmp_path / 'engine.db'}",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def request(*command: str, **fields: Any) -> ExecutionRequest:
    return ExecutionRequest(command=list(command or ("true",)), **fields)


@asynccontextmanager
async def instant_engine(tmp_path: Path, backend: InstantBackend | None = None, **kw):
    settings = settings_for(tmp_path, container_runtime="instant", **kw)
    engine = Engine(settings, backends={"instant": backend or InstantBackend()})
    try:
        yield engine
    finally:
        await engine.aclose()


def engine_command() -> list[str]:
    """Return the argv of the installed `engine` console script."""
    script = Path(sys.executable).parent / "engine"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "engine.cli.main"]


def run_cli(
    *args: str,
    env: dict[str, str],
    input: bytes | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
) -> subprocess.CompletedProcess[bytes]:
    """Run the engine CLI as a subprocess with `env` added to this environment."""
    return subprocess.run(
        [*engine_command(), *args],
        env={**os.environ, **env},
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def containers_of(execution_id: str) -> list[str]:
    """Return the names of all containers, running or not, labelled with the run."""
    result = subprocess.run(
        [
            "docker",
            "ps",
            "--all",
            "--filter",
            f"label=engine.execution={execution_id}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split()
