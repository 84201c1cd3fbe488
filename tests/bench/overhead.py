"""Engine overhead: runs through all states on the instant backend, against the floor.

Each repeat uses two fresh SQLite databases in one folder: the engine drives N
runs with a fixed number in flight, and the floor (tests/bench/floor.py) writes
the same rows in the same transactions. The figure is engine time over floor
time, a median over repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

from backends.instant import InstantBackend
from engine.engine import Engine
from engine.records import ExecutionRequest
from engine.settings import Settings
from engine.states import State
from tests.bench.floor import Timing, WriteCounter, WriteCounts, time_floor
from tests.bench.report import Figure, median, spread, unavailable

RATIO_GOAL = 2.0
RATE_GOAL = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class Repeat:
    engine: Timing
    floor: Timing
    runs: int

    @property
    def ratio(self) -> float:
        """Engine wall-clock time over floor wall-clock time."""
        return self.engine.wall / self.floor.wall

    @property
    def cpu_ratio(self) -> float:
        """Engine CPU time over floor CPU time.

        Less disturbed by other processes than the wall-clock ratio, but it
        leaves out the time both arms wait for the disk.
        """
        return self.engine.cpu / self.floor.cpu

    @property
    def rate(self) -> float:
        return self.runs / self.engine.wall


def tracing_missing() -> str | None:
    """Return why spans cannot be exported in this checkout, or None."""
    if importlib.util.find_spec("engine.tracing") is None:
        return "no tracing in this checkout (engine/tracing*)"
    if "engine_trace_exporter" not in Settings.model_fields:
        return "no ENGINE_TRACE_EXPORTER setting in this checkout"
    return None


def tracing_settings(folder: Path, tracing: bool) -> dict[str, Any]:
    """Return settings that export spans to a JSON lines file in `folder`, or none.

    Without tracing the exporter is set to `none` explicitly, so that an
    ENGINE_TRACE_EXPORTER in the environment cannot turn it on.
    """
    if not tracing:
        return {"engine_trace_exporter": "none"} if tracing_missing() is None else {}
    return {
        "engine_trace_exporter": "jsonl",
        "engine_trace_file": folder / "traces.jsonl",
    }


def instant_settings(folder: Path, in_flight: int, **overrides: Any) -> Settings:
    """Return settings for the instant backend in `folder`, tracing off by default."""
    values: dict[str, Any] = {
        "engine_data_dir": folder / "data",
        "engine_database_url": f"sqlite:///{folder / 'engine.db'}",
        "container_runtime": "instant",
        "engine_max_concurrent_runs": in_flight,
        **tracing_settings(folder, False),
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def drive_runs(engine: Engine, runs: int, in_flight: int) -> Timing:
    """Run `runs` executions, `in_flight` at a time; return the time taken."""
    request = ExecutionRequest(command=["true"], backend="instant")
    remaining = runs
    failed: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            record = await engine.run(request)
            if record.state is not State.DONE:
                failed.append(f"{record.id}: {record.error_message}")

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    timing = Timing(time.perf_counter() - started, time.process_time() - cpu_started)
    if failed:
        raise RuntimeError(f"{len(failed)} benchmark runs failed, first: {failed[0]}")
    return timing


async def time_engine(folder: Path, runs: int, in_flight: int, tracing: bool) -> Timing:
    settings = instant_settings(folder, in_flight, **tracing_settings(folder, tracing))
    engine = Engine(settings, backends={"instant": InstantBackend()})
    try:
        await drive_runs(engine, in_flight, in_flight)
        timing = await drive_runs(engine, runs, in_flight)
    finally:
        await engine.aclose()
    trace_file = folder / "traces.jsonl"
    if tracing and not (trace_file.exists() and trace_file.stat().st_size > 0):
        raise RuntimeError(f"tracing was on, but no spans reached {trace_file}")
    return timing


async def count_engine_writes(folder: Path, runs: int = 20) -> WriteCounts:
    """Count the commits and write statements of `runs` engine runs."""
    engine = Engine(instant_settings(folder, 1), backends={"instant": InstantBackend()})
    try:
        await drive_runs(engine, 1, 1)
        with WriteCounter(engine.store.db) as counter:
            await drive_runs(engine, runs, 1)
        return counter.per_run(runs)
    finally:
        await engine.aclose()


def run_repeat(runs: int, in_flight: int, tracing: bool, floor_first: bool) -> Repeat:
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        folder = Path(name)
        (folder / "engine").mkdir()

        def engine_arm() -> Timing:
            return asyncio.run(time_engine(folder / "engine", runs, in_flight, tracing))

        def floor_arm() -> Timing:
            url = f"sqlite:///{folder / 'floor.db'}"
            return time_floor(url, runs, str(folder / "runs"))[0]

        if floor_first:
            floor = floor_arm()
            engine = engine_arm()
        else:
            engine = engine_arm()
            floor = floor_arm()
    return Repeat(engine, floor, runs)


def measure(runs: int, in_flight: int, repeats: int, tracing: bool) -> list[Figure]:
    """Return the overhead and throughput figures, with tracing on or off."""
    label = "tracing on (JSON lines file)" if tracing else "tracing off"
    ratio_name = f"Engine overhead, {label}"
    rate_name = f"Throughput, {in_flight} in flight, {label}"
    ratio_goal = f"<= {RATIO_GOAL:g}x the floor"
    rate_goal = f">= {RATE_GOAL:g} runs/s"
    reason = tracing_missing() if tracing else None
    if reason is not None:
        return [
            unavailable(ratio_name, ratio_goal, reason),
            unavailable(rate_name, rate_goal, reason),
        ]
    # Alternating which arm goes first spreads slow drifts of the machine evenly.
    results = [
        run_repeat(runs, in_flight, tracing, floor_first=index % 2 == 1)
        for index in range(repeats)
    ]
    return _figures(results, ratio_name, rate_name, ratio_goal, rate_goal)


def _figures(
    results: list[Repeat],
    ratio_name: str,
    rate_name: str,
    ratio_goal: str,
    rate_goal: str,
) -> list[Figure]:
    runs = results[0].runs
    ratio = median([r.ratio for r in results])
    rate = median([r.rate for r in results])
    engine_ms = median([r.engine.wall for r in results]) * 1000 / runs
    floor_ms = median([r.floor.wall for r in results]) * 1000 / runs
    floor_rate = median([runs / r.floor.wall for r in results])
    overhead = Figure(
        name=ratio_name,
        goal=ratio_goal,
        measured=f"{engine_ms:.2f} ms per run",
        reference=f"floor {floor_ms:.2f} ms per run",
        ratio=f"{ratio:.2f}x",
        met=ratio <= RATIO_GOAL,
        note=f"{runs} runs x {len(results)} repeats; ratios "
        + spread([r.ratio for r in results], "x")
        + f"; CPU-time ratio {median([r.cpu_ratio for r in results]):.2f}x",
    )
    throughput = Figure(
        name=rate_name,
        goal=rate_goal,
        measured=f"{rate:.0f} runs/s",
        reference=f"floor {floor_rate:.0f} runs/s",
        met=rate >= RATE_GOAL,
        note="runs/s " + spread([r.rate for r in results]),
    )
    return [overhead, throughput]


def write_counts(folder: Path) -> tuple[WriteCounts, WriteCounts]:
    """Return what one engine run and one floor run write."""
    engine_counts = asyncio.run(count_engine_writes(folder / "count"))
    _, floor_counts = time_floor(
        f"sqlite:///{folder / 'count-floor.db'}", 1, str(folder / "runs")
    )
    return engine_counts, floor_counts


def profile(
    folder: Path, runs: int, in_flight: int, output: Path, tracing: bool = False
) -> None:
    """Write a pyinstrument text profile of `runs` engine runs to `output`.

    Only the event loop's thread is sampled, so with tracing on the export
    thread's own work does not appear, only its competition for the GIL.
    """
    from pyinstrument import Profiler

    folder.mkdir(parents=True, exist_ok=True)
    # Sample every task on the loop, not only the one that starts the profiler.
    profiler = Profiler(interval=0.001, async_mode="disabled")

    async def profiled() -> None:
        overrides = tracing_settings(folder, tracing)
        settings = instant_settings(folder, in_flight, **overrides)
        engine = Engine(settings, backends={"instant": InstantBackend()})
        try:
            await drive_runs(engine, in_flight, in_flight)
            profiler.start()
            await drive_runs(engine, runs, in_flight)
            profiler.stop()
        finally:
            await engine.aclose()

    asyncio.run(profiled())
    output.write_text(profiler.output_text(unicode=True, color=False))
