"""Memory: resident memory growth per in-flight run, on the instant backend.

Each repeat runs in a fresh Python process (`python -m tests.bench.memory`),
because a process that already held many runs reuses their freed memory. The
process warms up, reads VmRSS, starts N runs whose agents wait until released,
reads VmRSS again once all N are in `executing`, then releases them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.report import REPO_ROOT, Figure, median, spread

GOAL_KB = 200
WARM_UP_RUNS = 50


def resident_kb() -> int:
    """Return this process's resident set size (VmRSS) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


async def measure_growth(folder: Path, runs: int) -> dict[str, int]:
    from backends.instant import InstantBackend
    from engine.engine import Engine
    from engine.records import ExecutionRequest
    from engine.states import State
    from tests.bench.overhead import instant_settings

    class WaitingBackend(InstantBackend):
        """The instant backend, with agents that wait until released."""

        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()
            self.waiting = 0

        async def wait_agent(self, machine, output, offsets=(0, 0)):  # type: ignore[no-untyped-def]
            self.waiting += 1
            await self.release.wait()
            return await super().wait_agent(machine, output, offsets)

    backend = WaitingBackend()
    settings = instant_settings(folder, runs)
    engine = Engine(settings, backends={"instant": backend})
    request = ExecutionRequest(command=["true"], backend="instant")
    try:
        backend.release.set()
        await asyncio.gather(*(engine.run(request) for _ in range(WARM_UP_RUNS)))
        backend.release.clear()
        backend.waiting = 0
        gc.collect()
        before = resident_kb()
        tasks = [asyncio.create_task(engine.run(request)) for _ in range(runs)]
        while backend.waiting < runs:
            await asyncio.sleep(0.05)
        gc.collect()
        during = resident_kb()
        backend.release.set()
        records = await asyncio.gather(*tasks)
    finally:
        await engine.aclose()
    done = sum(1 for record in records if record.state is State.DONE)
    return {"before_kb": before, "during_kb": during, "runs": runs, "done": done}


def measure(runs: int, repeats: int) -> Figure:
    name = f"Memory per in-flight run, {runs} in flight"
    results = [_one_process(runs) for _ in range(repeats)]
    for result in results:
        if result["done"] != runs:
            raise RuntimeError(f"memory benchmark: {result['done']} of {runs} done")
    per_run = [(r["during_kb"] - r["before_kb"]) * 1024 / runs / 1000 for r in results]
    value = median(per_run)
    before_mb = median([r["before_kb"] for r in results]) / 1024
    during_mb = median([r["during_kb"] for r in results]) / 1024
    return Figure(
        name=name,
        goal=f"<= {GOAL_KB} KB per run",
        measured=f"{value:.0f} KB per run",
        reference=f"VmRSS {before_mb:.0f} MiB before, {during_mb:.0f} MiB during",
        ratio=f"{value / GOAL_KB:.2f}x goal",
        met=value <= GOAL_KB,
        note=f"{repeats} processes; KB per run " + spread(per_run),
    )


def _one_process(runs: int) -> dict[str, int]:
    command = [sys.executable, "-m", "tests.bench.memory", "--runs", str(runs)]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"memory benchmark process failed:\n{result.stderr}")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        result = asyncio.run(measure_growth(Path(name), args.runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
