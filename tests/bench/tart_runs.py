"""Time to agent on the tart simulator, through the Engine API.

The simulator (tests/tart/bin/tart, docs/backends/tart-simulator.md) runs each
VM as a bubblewrap sandbox with a real sshd, so the Tart backend's SSH steps run
unchanged. It needs root, `bwrap` and `sshd`. The guest uses the host's GNU
`date`, so run.sh records the agent's start with nanoseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from engine.engine import Engine
from engine.records import ExecutionRecord, ExecutionRequest
from engine.settings import Settings
from engine.states import State
from tests.bench.agent_start import agent_delays, time_to_agent_figure
from tests.bench.report import REPO_ROOT, Figure, unavailable

NAME = "Time to agent, tart simulator"
BIN_DIR = REPO_ROOT / "tests" / "tart" / "bin"


def missing_prerequisite() -> str | None:
    """Return why the simulator cannot run here, or None if it can."""
    if importlib.util.find_spec("backends.tart") is None:
        return "no Tart backend in this checkout"
    if not (BIN_DIR / "tart").exists():
        return "no tart simulator in this checkout"
    if os.geteuid() != 0:
        return "the tart simulator needs root"
    search = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin"
    for tool in ("bwrap", "sshd", "ssh-keygen"):
        if shutil.which(tool, path=search) is None:
            return f"the tart simulator needs {tool}"
    return None


@contextlib.contextmanager
def simulator(home: Path) -> Iterator[str]:
    """Put the simulator first on PATH with a base VM; yield its password."""
    saved = dict(os.environ)
    password = "bench-" + secrets.token_hex(6)
    os.environ["PATH"] = f"{BIN_DIR}{os.pathsep}{saved.get('PATH', '')}"
    os.environ["TART_HOME"] = str(home)
    for name in list(os.environ):
        if name.startswith(("TART_SIM_", "TART_VM_")):
            del os.environ[name]
    try:
        subprocess.run(
            ["tart-sim", "create-base", "--password-stdin"],
            input=password,
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield password
    finally:
        _stop_all()
        os.environ.clear()
        os.environ.update(saved)


def _stop_all() -> None:
    listed = subprocess.run(
        ["tart", "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        machines = json.loads(listed.stdout or "[]")
    except ValueError:
        return
    for machine in machines:
        if machine.get("Running"):
            subprocess.run(
                ["tart", "stop", machine["Name"]],
                capture_output=True,
                timeout=60,
                check=False,
            )


async def run_many(folder: Path, password: str, runs: int) -> list[ExecutionRecord]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        engine_data_dir=folder / "data",
        engine_database_url=f"sqlite:///{folder / 'engine.db'}",
        container_runtime="tart",
        tart_vm_password=password,
        tart_ssh_timeout=30,
        engine_step_timeout=60,
    )
    request = ExecutionRequest(command=["true"])
    async with Engine(settings) as engine:
        return [await engine.run(request) for _ in range(runs)]


def measure(runs: int) -> Figure:
    reason = missing_prerequisite()
    if reason is not None:
        return unavailable(NAME, "<= 100 ms", reason)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        folder = Path(name)
        with simulator(folder / "tart-home") as password:
            records = asyncio.run(run_many(folder, password, runs))
        failed = [r for r in records if r.state is not State.DONE]
        if failed:
            raise RuntimeError(
                f"{len(failed)} tart simulator runs failed, first: "
                f"{failed[0].error_type}: {failed[0].error_message}"
            )
        # The sandbox shares the host's kernel, as a container does.
        return time_to_agent_figure(NAME, agent_delays(records, same_kernel=True))
