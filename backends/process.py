"""Running a tool as a child process from asyncio, killed if the caller gives up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode(errors="replace").strip()

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode(errors="replace").strip()


async def run_process(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcessResult:
    """Run `argv` to completion; a cancelled caller kills the child's process group.

    Raises `FileNotFoundError` when the program does not exist.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE
        if input is not None
        else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    try:
        stdout, stderr = await process.communicate(input)
    except BaseException:
        await kill_process_group(process)
        raise
    return ProcessResult(tuple(argv), process.returncode or 0, stdout, stderr)


async def kill_process_group(process: asyncio.subprocess.Process) -> None:
    """Kill a child started with `start_new_session=True`, and reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    with contextlib.suppress(Exception):
        await asyncio.shield(process.wait())
