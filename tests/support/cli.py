"""Run the `engine` command as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ENGINE = Path(sys.executable).parent / "engine"


def engine_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """Return an environment with a private data folder and database under tmp_path.

    Inherited ENGINE_* and OTEL_* variables are dropped, so the caller's shell
    cannot change the settings that a test runs with.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ENGINE_", "OTEL_"))
    }
    env["ENGINE_DATA_DIR"] = str(tmp_path / "data")
    env["ENGINE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'engine.db'}"
    env.update(values)
    return env


def run_engine(
    args: list[str],
    env: Mapping[str, str],
    *,
    cwd: Path,
    input: bytes | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `engine ARGS...` in `cwd`; the caller checks the exit code.

    The engine reads `.env` from its working folder, so tests pass a folder of
    their own.
    """
    return subprocess.run(
        [str(ENGINE), *args],
        env=dict(env),
        input=input.decode() if input is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
