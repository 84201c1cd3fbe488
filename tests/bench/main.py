"""Run the benchmarks and print the machine and a markdown table of figures.

    scripts/bench.py [--only overhead|memory|docker|reap ...] [--runs N] ...

Every figure is a median over repeats, and where it has a reference (the
SQLite floor, `docker run`), the ratio is taken within each repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.bench import agent_start, docker_runs, memory, overhead, reap, tart_runs
from tests.bench.report import Figure, machine_lines, render_table, unavailable

SECTIONS = ("overhead", "memory", "docker", "tart", "reap")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections"
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats per figure")
    parser.add_argument(
        "--runs", type=int, default=1000, help="runs per overhead repeat"
    )
    parser.add_argument(
        "--in-flight", type=int, default=50, help="overhead runs in flight"
    )
    parser.add_argument(
        "--memory-runs", type=int, default=1000, help="runs in flight for memory"
    )
    parser.add_argument(
        "--docker-repeats", type=int, default=25, help="pairs of Docker runs"
    )
    parser.add_argument(
        "--docker-host",
        help="use this daemon (default: the environment's, else a private dockerd)",
    )
    parser.add_argument(
        "--tart-runs", type=int, default=10, help="runs on the tart simulator"
    )
    parser.add_argument("--reap-runs", type=int, default=10_000)
    parser.add_argument("--reap-machines", type=int, default=1_000)
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="also write pyinstrument profiles of the engine overhead and of "
        "`engine run -- true` (Docker) into this folder",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = args.only or list(SECTIONS)
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    figures: list[Figure] = []
    details: list[str] = []
    docker_version = None
    if "overhead" in sections:
        figures += _overhead(args, details)
    if "memory" in sections:
        figures.append(memory.measure(args.memory_runs, max(3, args.repeats // 2)))
    if "docker" in sections:
        docker_figures, docker_version = _docker(args, details)
        figures += docker_figures
    if "tart" in sections:
        figures.append(tart_runs.measure(args.tart_runs))
    if "reap" in sections:
        figures.append(reap.measure(args.reap_runs, args.reap_machines, args.repeats))
    load = (load_before[0], os.getloadavg()[0])
    print(_report(figures, details, docker_version, load))
    return 0


def _report(
    figures: list[Figure],
    details: list[str],
    docker_version: str | None,
    load: tuple[float, float],
) -> str:
    lines = machine_lines(docker_version)
    lines.append(
        f"- load average (1 min): {load[0]:.2f} at start, {load[1]:.2f} at end"
    )
    parts = ["\n".join(lines), render_table(figures)]
    if details:
        parts.append("\n".join(details))
    return "\n\n".join(parts)


def _overhead(args: argparse.Namespace, details: list[str]) -> list[Figure]:
    off = overhead.measure(args.runs, args.in_flight, args.repeats, tracing=False)
    on = overhead.measure(args.runs, args.in_flight, args.repeats, tracing=True)
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as name:
        folder = Path(name)
        (folder / "count").mkdir()
        engine_counts, floor_counts = overhead.write_counts(folder)
        if args.profile_dir is not None:
            details += _profiles(args, folder)
    details.append(f"- the engine writes {engine_counts.describe()}")
    if engine_counts != floor_counts:
        details.append(
            f"- NOTE: the floor is out of date: it writes {floor_counts.describe()}"
        )
    return [off[0], on[0], off[1], on[1]]


def _profiles(args: argparse.Namespace, folder: Path) -> list[str]:
    lines = []
    for tracing, name in ((False, "overhead.txt"), (True, "overhead-tracing.txt")):
        if tracing and overhead.tracing_missing() is not None:
            continue
        path = args.profile_dir / name
        overhead.profile(folder / name, args.runs, args.in_flight, path, tracing)
        lines.append(
            f"- engine overhead profile, tracing {'on' if tracing else 'off'}: {path}"
        )
    return lines


def _docker(
    args: argparse.Namespace, details: list[str]
) -> tuple[list[Figure], str | None]:
    names = ("Docker end to end: `engine run -- true`", "Time to agent, Docker")
    goals = ("<= 1.5x `docker run --rm`", "<= 100 ms")
    try:
        with _docker_host(args.docker_host) as (host, version):
            results = docker_runs.run_pairs(host, args.docker_repeats)
            if args.profile_dir is not None:
                path = args.profile_dir / "engine-run.txt"
                docker_runs.profile_cli(host, path)
                details.append(f"- `engine run -- true` profile: {path}")
    except DockerUnavailable as exc:
        missing = [
            unavailable(n, g, str(exc)) for n, g in zip(names, goals, strict=True)
        ]
        return missing, None
    details.append("- Docker run, median time in each state:")
    details += docker_runs.state_breakdown(results)
    figures = [
        docker_runs.end_to_end_figure(results),
        agent_start.time_to_agent_figure("Time to agent, Docker", results.agent),
    ]
    return figures, version


class DockerUnavailable(Exception):
    """No Docker daemon for the Docker figures."""


@contextlib.contextmanager
def _docker_host(requested: str | None) -> Iterator[tuple[str, str]]:
    """Yield a DOCKER_HOST with the base image, and the server version."""
    from tests.support.dockerd import (
        DockerDaemonError,
        ensure_base_image,
        ensure_docker_daemon,
    )

    daemon = None
    try:
        if requested is None:
            daemon = ensure_docker_daemon()
            host = daemon.docker_host
        else:
            host = requested
        ensure_base_image(host)
    except DockerDaemonError as exc:
        if daemon is not None:
            daemon.stop()
        raise DockerUnavailable(f"no Docker daemon: {exc}") from exc
    try:
        yield host, _server_version(host)
    finally:
        if daemon is not None:
            daemon.stop()


def _server_version(host: str) -> str:
    result = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        env={**os.environ, "DOCKER_HOST": host},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
