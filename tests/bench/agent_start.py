"""When did the agent start? Read from the files the guest runner leaves.

`run.sh` writes `result/started-at` just before it starts the agent: epoch
seconds, with nanoseconds where the guest's `date` supports `%N`. Busybox's
`date` does not, so on Linux guests it also writes `result/started-uptime`
from /proc/uptime (hundredths of a second since boot). A container shares the
host's kernel, so the host turns that into epoch seconds with its own
CLOCK_BOOTTIME. That conversion is wrong for a VM, which has its own boot time.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from engine.records import ExecutionRecord
from tests.bench.report import Figure, median, spread

GOAL_MS = 100.0

# /proc/uptime truncates to hundredths, so the true time is on average half of
# that later.
UPTIME_RESOLUTION = 0.01


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStart:
    # Epoch seconds on the host's clock.
    seconds: float
    # Which file the time came from, and its resolution in seconds.
    source: str
    resolution: float


def agent_started_at(run_dir: Path, same_kernel: bool = True) -> AgentStart | None:
    """Return the agent's start time from a collected run folder, or None."""
    result = run_dir / "result"
    started_at = _read(result / "started-at")
    if started_at is not None and "." in started_at:
        return AgentStart(float(started_at), "started-at (date +%s.%N)", 1e-9)
    uptime = _read(result / "started-uptime")
    if uptime is not None and same_kernel:
        boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        seconds = boot + float(uptime) + UPTIME_RESOLUTION / 2
        return AgentStart(seconds, "started-uptime (10 ms)", UPTIME_RESOLUTION)
    if started_at is not None:
        return AgentStart(float(started_at), "started-at (1 s)", 1.0)
    return None


def _read(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        float(text)
    except ValueError:
        return None
    return text


@dataclasses.dataclass(frozen=True, slots=True)
class AgentDelays:
    """Per run: the agent's start minus `ready_at`, in ms, and the starts used."""

    delays_ms: list[float]
    starts: list[AgentStart]


def agent_delays(
    records: list[ExecutionRecord], same_kernel: bool = True
) -> AgentDelays:
    """Read the delays of `records`, whose run folders must still exist."""
    delays, starts = [], []
    for record in records:
        started = agent_started_at(Path(record.run_dir or ""), same_kernel)
        ready_at = record.resource_details.get("ready_at")
        if started is None or ready_at is None:
            continue
        delays.append((started.seconds - ready_at) * 1000)
        starts.append(started)
    return AgentDelays(delays, starts)


def time_to_agent_figure(name: str, measured: AgentDelays) -> Figure:
    goal = f"<= {GOAL_MS:g} ms"
    delays, starts = measured.delays_ms, measured.starts
    if not delays:
        return Figure(name=name, goal=goal, note="no run recorded both times")
    value = median(delays)
    sources = ", ".join(sorted({start.source for start in starts}))
    # A start time known only to the second cannot show a 100 ms goal.
    precise = max(start.resolution for start in starts) <= UPTIME_RESOLUTION
    return Figure(
        name=name,
        goal=goal,
        measured=f"{value:.0f} ms",
        ratio=f"{value / GOAL_MS:.2f}x goal",
        met=value <= GOAL_MS if precise else None,
        note=f"{len(delays)} runs; {spread(delays, ' ms')}; agent start from "
        + sources,
    )
