"""The identity of a worker process: host, pid and process start time.

The start time distinguishes a live owner from a new process that reused its pid.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from functools import cache


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerIdentity:
    host: str
    pid: int
    # Clock ticks since boot when the process started (Linux), else 0.
    start_time: int

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.start_time}"

    @classmethod
    def parse(cls, text: str) -> WorkerIdentity | None:
        host, _, rest = text.rpartition(":")
        host, _, pid = host.rpartition(":")
        if not (host and pid.isdigit() and rest.isdigit()):
            return None
        return cls(host, int(pid), int(rest))


def process_start_time(pid: int) -> int | None:
    """Return the start time of `pid` from /proc, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return None
    except OSError:
        return 0
    # The command name may contain spaces, so split after its closing bracket.
    fields = stat.rpartition(")")[2].split()
    return int(fields[19])


@cache
def current_worker() -> WorkerIdentity:
    pid = os.getpid()
    return WorkerIdentity(socket.gethostname(), pid, process_start_time(pid) or 0)


def is_alive_on_this_host(worker: WorkerIdentity) -> bool | None:
    """Return whether `worker` still runs, or None if it lives on another host."""
    if worker.host != socket.gethostname():
        return None
    started = process_start_time(worker.pid)
    return started is not None and started == worker.start_time
