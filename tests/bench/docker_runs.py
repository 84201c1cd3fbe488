"""Docker end to end, and time to agent, from the same `engine run` processes.

End to end: `engine run -- true` as a fresh process (Python start-up and imports
count) against `docker run --rm --network none IMAGE true` on the same daemon,
alternating which goes first. Time to agent: for each of those runs, from
`ready_at` (the host's clock at the first successful readiness probe) to the
agent's start as the guest runner recorded it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from engine.records import ExecutionRecord
from engine.states import State
from engine.store import Store
from tests.bench.agent_start import AgentDelays, agent_delays
from tests.bench.report import Figure, median, spread

E2E_GOAL = 1.5
IMAGE = "engine-base:latest"


@dataclasses.dataclass(frozen=True, slots=True)
class DockerResults:
    engine_seconds: list[float]
    docker_seconds: list[float]
    records: list[ExecutionRecord]
    agent: AgentDelays
    import_seconds: float

    @property
    def ratios(self) -> list[float]:
        return [
            e / d for e, d in zip(self.engine_seconds, self.docker_seconds, strict=True)
        ]


def engine_command() -> list[str]:
    script = Path(sys.executable).parent / "engine"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "engine.cli.main"]


def _timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, timeout=300, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return seconds


def run_pairs(docker_host: str, repeats: int) -> DockerResults:
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        folder = Path(name)
        url = f"sqlite:///{folder / 'engine.db'}"
        env = {
            **os.environ,
            "DOCKER_HOST": docker_host,
            "ENGINE_DATA_DIR": str(folder / "data"),
            "ENGINE_DATABASE_URL": url,
            "CONTAINER_RUNTIME": "docker",
            "ENGINE_DOCKER_IMAGE": IMAGE,
        }
        engine_run = [*engine_command(), "run", "--", "true"]
        docker_run = ["docker", "run", "--rm", "--network", "none", IMAGE, "true"]
        # Warm-up: the first engine run creates the database.
        _timed(engine_run, env, folder)
        _timed(docker_run, env, folder)
        engine_seconds, docker_seconds = [], []
        for index in range(repeats):
            if index % 2:
                docker_seconds.append(_timed(docker_run, env, folder))
                engine_seconds.append(_timed(engine_run, env, folder))
            else:
                engine_seconds.append(_timed(engine_run, env, folder))
                docker_seconds.append(_timed(docker_run, env, folder))
        store = Store(url)
        try:
            records = [
                store.get_execution(record.id, with_transitions=True)
                for record in store.list_executions(limit=None)
            ]
        finally:
            store.close()
        records = [r for r in records if r.state is State.DONE][:repeats]
        # Read while the run folders still exist.
        agent = agent_delays(records)
    imports = [_import_seconds() for _ in range(5)]
    return DockerResults(
        engine_seconds, docker_seconds, records, agent, median(imports)
    )


def _import_seconds() -> float:
    """Time a fresh Python importing what `engine run` imports before it runs."""
    program = "import engine.cli.main, engine.cli.run_command"
    command = [sys.executable, "-c", program]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def end_to_end_figure(results: DockerResults) -> Figure:
    ratios = results.ratios
    ratio = median(ratios)
    return Figure(
        name="Docker end to end: `engine run -- true`",
        goal=f"<= {E2E_GOAL:g}x `docker run --rm`",
        measured=f"{median(results.engine_seconds) * 1000:.0f} ms",
        reference=f"docker run {median(results.docker_seconds) * 1000:.0f} ms",
        ratio=f"{ratio:.2f}x",
        met=ratio <= E2E_GOAL,
        note=f"{len(ratios)} pairs; ratios {spread(ratios, 'x')}; Python start-up "
        f"and `engine run` imports {results.import_seconds * 1000:.0f} ms",
    )


def state_breakdown(results: DockerResults) -> list[str]:
    """Return lines with the median time each state took, for the notes."""
    spent: dict[str, list[float]] = defaultdict(list)
    for record in results.records:
        for row in record.transitions[1:]:
            spent[row.from_state or ""].append(row.duration or 0.0)
        if record.finished_at is not None:
            total = (record.finished_at - record.created_at).total_seconds()
            spent["requested to done"].append(total)
    lines = [
        f"  - {state}: {median(values) * 1000:.0f} ms"
        for state, values in spent.items()
    ]
    outside = median(results.engine_seconds) - median(spent["requested to done"])
    lines.append(
        f"  - process start-up and exit around the run: {outside * 1000:.0f} ms"
    )
    return lines


def profile_cli(docker_host: str, output: Path) -> None:
    """Write a pyinstrument text profile of one `engine run -- true` to `output`."""
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        folder = Path(name)
        env = {
            **os.environ,
            "DOCKER_HOST": docker_host,
            "ENGINE_DATA_DIR": str(folder / "data"),
            "ENGINE_DATABASE_URL": f"sqlite:///{folder / 'engine.db'}",
            "CONTAINER_RUNTIME": "docker",
            "ENGINE_DOCKER_IMAGE": IMAGE,
        }
        _timed([*engine_command(), "run", "--", "true"], env, folder)
        profiled = [
            sys.executable,
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--outfile",
            str(output),
            "--interval",
            "0.0005",
            # A program string, so that the profile includes the imports.
            "-c",
            "from engine.cli.main import main; main(['run', '--', 'true'])",
        ]
        _timed(profiled, env, folder)
