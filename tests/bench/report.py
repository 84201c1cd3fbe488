"""Figures, the machine they ran on, and the markdown table the harness prints."""

from __future__ import annotations

import dataclasses
import os
import platform
import sqlite3
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True, slots=True)
class Figure:
    """One row of the table: a median over repeats, its reference and its goal.

    `met` is None when the figure could not be measured (then `note` says why).
    """

    name: str
    goal: str
    measured: str = "not available yet"
    reference: str = ""
    ratio: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def result(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else "missed"


def unavailable(name: str, goal: str, reason: str) -> Figure:
    return Figure(name=name, goal=goal, note=reason)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], unit: str = "", scale: float = 1.0) -> str:
    """Return `min to max` of `values`, for the notes column."""
    low, high = min(values) * scale, max(values) * scale
    return f"{low:.3g} to {high:.3g}{unit}"


def render_table(figures: Sequence[Figure]) -> str:
    header = "| figure | measured | reference | ratio | goal | result | notes |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for figure in figures:
        cells = (
            figure.name,
            figure.measured,
            figure.reference or "-",
            figure.ratio or "-",
            figure.goal,
            figure.result,
            figure.note or "-",
        )
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def machine_lines(docker_version: str | None) -> list[str]:
    """Describe the machine: CPUs, memory, CPU model, kernel, Python, versions."""
    import sqlalchemy

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    if commit and dirty:
        commit += " with uncommitted changes"
    lines = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit or 'unknown'}",
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}, model: {_cpu_model()}",
        f"- memory: {_memory_total()}",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"SQLAlchemy {sqlalchemy.__version__}",
    ]
    if docker_version:
        lines.append(f"- Docker server {docker_version}")
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""
