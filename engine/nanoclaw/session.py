"""Drives one NanoClaw invocation through the engine and frames its results.

`NanoClawSession.run` submits the invocation's request and watches the agent's
stdout while it runs. Each result that the runtime's parser reports is framed
on stdout at once. The run is stopped early when the agent reports rejected
credentials or an unreachable API (some CLIs retry those for minutes), or when
it writes nothing for the idle timeout. A session id that the agent reports as
unknown is retried once in a new session. After a run that ended normally, the
group folder and the session folder are copied back to the host.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from engine.exceptions import AgentFailedError, IdleTimeoutError
from engine.nanoclaw.agent_output import AgentEvent, ErrorKind, EventKind, tail
from engine.nanoclaw.invocation import GROUP_GUEST_PATH, Invocation
from engine.nanoclaw.protocol import ContainerOutput, frame_output
from engine.nanoclaw.runtimes import to_container_output
from engine.nanoclaw.workspace import FileSnapshot, copy_back
from engine.observers import RunObserver
from engine.states import State

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.records import ExecutionRecord, TransitionRecord
    from engine.runner import Run

logger = logging.getLogger(__name__)

# Exit codes of `engine run --protocol nanoclaw`.
EXIT_SUCCESS = 0
EXIT_AGENT_ERROR = 1
EXIT_INVALID = 2
EXIT_ENGINE_FAILED = 125
EXIT_INTERRUPTED = 130

# Bytes of the agent's stderr kept to explain an exit without a result.
STDERR_TAIL_BYTES = 16 * 1024
# Errors after which a CLI keeps retrying instead of exiting.
_STOPPING_ERRORS = frozenset({ErrorKind.AUTH, ErrorKind.NETWORK})
# Files of the group folder that the agent may not change for later runs.
PROTECTED_GROUP_FILES = frozenset({"config.json"})


class FrameWriter:
    """Writes framed outputs to a byte stream, each flushed at once."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.frames = 0
        self.errors = 0
        self.closed = False

    def write(self, output: ContainerOutput) -> None:
        self.frames += 1
        if output.status == "error":
            self.errors += 1
        if self.closed:
            return
        try:
            self.stream.write(frame_output(output).encode("ascii"))
            self.stream.flush()
        except OSError as exc:
            # NanoClaw closed its end; the results have nowhere to go.
            self.closed = True
            logger.error(
                "stdout is closed; the results are lost: %s",
                exc,
                extra={"action": "stdout_closed"},
            )


class RelayObserver(RunObserver):
    """Passes engine events to the observer of the attempt in progress."""

    def __init__(self) -> None:
        self.target: RunObserver | None = None

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        if self.target is not None:
            self.target.on_transition(run, row)

    def on_output(self, run: Run, stream: str, data: bytes) -> None:
        if self.target is not None:
            self.target.on_output(run, stream, data)


@dataclasses.dataclass
class Attempt:
    """The outcome of one run of the agent."""

    record: ExecutionRecord
    retry_in_new_session: bool
    stopped_by_agent_error: bool


class AgentWatch(RunObserver):
    """Parses one run's agent output into frames, and stops the run when it must."""

    def __init__(
        self,
        invocation: Invocation,
        writer: FrameWriter,
        *,
        session_requested: bool,
        session_reset: bool,
        stderr: IO[bytes] | None,
    ):
        self.invocation = invocation
        self.writer = writer
        self.parser = invocation.runtime.parser()
        self.session_requested = session_requested
        self.session_reset = session_reset
        self.stderr = stderr
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stderr_tail = b""
        self._last_output = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self.stale_session = False
        self.stopped_by_agent_error = False

    # -- engine events -----------------------------------------------------------

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        if row.to_state == State.EXECUTING.value:
            self._last_output = time.monotonic()
            self._watchdog = asyncio.get_running_loop().create_task(
                self._watch_idle(run)
            )
        elif row.from_state == State.EXECUTING.value:
            self.stop_watchdog()

    def on_output(self, run: Run, stream: str, data: bytes) -> None:
        if stream == "stderr":
            self._stderr_tail = (self._stderr_tail + data)[-STDERR_TAIL_BYTES:]
            if self.stderr is not None:
                self.stderr.write(data)
                self.stderr.flush()
            return
        self._last_output = time.monotonic()
        for event in self.parser.feed(self._decoder.decode(data)):
            self._handle(run, event)

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _watch_idle(self, run: Run) -> None:
        limit = self.invocation.idle_timeout
        while True:
            idle = time.monotonic() - self._last_output
            if idle >= limit:
                logger.warning(
                    "agent idle for %.0f s; stopping the run",
                    idle,
                    extra={"action": "idle_timeout", "execution_id": run.execution_id},
                )
                run.stop(
                    IdleTimeoutError(
                        f"the agent wrote no output for {limit:g} s (idle timeout)"
                    )
                )
                return
            await asyncio.sleep(min(limit - idle, 1.0))

    # -- events and the end of the run ---------------------------------------------

    def _handle(self, run: Run | None, event: AgentEvent) -> None:
        if event.kind is EventKind.SESSION:
            return
        if (
            event.kind is EventKind.ERROR
            and event.error_kind is ErrorKind.STALE_SESSION
            and self.session_requested
            and self.writer.frames == 0
        ):
            # Retried in a new session; not reported.
            self.stale_session = True
            return
        self._frame(to_container_output(event, self.parser.session_id))
        if (
            run is not None
            and run.state == State.EXECUTING.value
            and event.error_kind in _STOPPING_ERRORS
        ):
            self.stopped_by_agent_error = True
            run.stop(AgentFailedError(f"the agent reported: {event.text}"))

    def _frame(self, output: ContainerOutput) -> None:
        if self.session_reset:
            output = output.model_copy(update={"session_reset": True})
        self.writer.write(output)

    def finish(self, record: ExecutionRecord) -> None:
        """Frame what the agent's exit adds: last results, or why the run failed."""
        self.stop_watchdog()
        if record.state is State.DONE:
            self._finish_done(record.exit_code or 0)
        elif self.retry_in_new_session(record) or self.stopped_by_agent_error:
            return
        else:
            self._frame(
                _failure_output(record, self.invocation, self.parser.session_id)
            )

    def retry_in_new_session(self, record: ExecutionRecord) -> bool:
        """Whether the run should be repeated without the unknown session id."""
        return self.stale_session and record.error_type != "cancelled"

    def _finish_done(self, exit_code: int) -> None:
        errors_before = self.writer.errors
        events = self.parser.feed(self._decoder.decode(b"", final=True))
        stderr = self._stderr_tail.decode(errors="replace")
        events += self.parser.finish(exit_code, stderr)
        for event in events:
            self._handle(None, event)
        if self.stale_session or self.writer.errors > errors_before:
            return
        if exit_code != 0 and not self.parser.errors:
            message = f"{self.invocation.runtime.name} exited with code {exit_code}"
            if stderr.strip():
                message += f": {tail(stderr, 500)}"
            self._frame(
                ContainerOutput(
                    status="error", new_session_id=self.parser.session_id, error=message
                )
            )


def _failure_output(
    record: ExecutionRecord, invocation: Invocation, session_id: str | None
) -> ContainerOutput:
    if record.error_type == IdleTimeoutError.error_type:
        message = (
            f"the agent wrote no output for {invocation.idle_timeout:g} s and was "
            "stopped (idle timeout, NANOCLAW_IDLE_TIMEOUT)"
        )
    elif record.error_type == "timeout":
        message = (
            f"the run did not finish within {invocation.timeout:g} s and was stopped "
            "(hard timeout: --timeout, containerConfig.timeout or NANOCLAW_TIMEOUT)"
        )
    elif record.error_type == "cancelled":
        message = "the run was interrupted and its machine deleted"
    else:
        message = (
            f"the engine could not run the agent: {record.error_type} in "
            f"{record.failed_state}: {record.error_message} (execution {record.id})"
        )
    return ContainerOutput(
        status="error", result=None, new_session_id=session_id, error=message
    )


class NanoClawSession:
    """Runs one invocation, retrying a stale session once, and returns the exit code."""

    def __init__(
        self,
        invocation: Invocation,
        writer: FrameWriter,
        *,
        stderr: IO[bytes] | None = None,
    ):
        self.invocation = invocation
        self.writer = writer
        self.stderr = stderr if stderr is not None else sys.stderr.buffer
        self.observer = RelayObserver()
        self.records: list[ExecutionRecord] = []

    async def run(self, engine: Engine) -> int:
        """Run the agent; the engine must have `self.observer` among its observers."""
        session_id = self.invocation.container_input.session_id
        attempt = await self._attempt(engine, session_id, session_reset=False)
        if attempt.retry_in_new_session:
            logger.warning(
                "the agent does not know the session; retrying in a new session",
                extra={"action": "stale_session", "execution_id": attempt.record.id},
            )
            attempt = await self._attempt(engine, None, session_reset=True)
        return self._exit_code(attempt)

    async def _attempt(
        self, engine: Engine, session_id: str | None, *, session_reset: bool
    ) -> Attempt:
        watch = AgentWatch(
            self.invocation,
            self.writer,
            session_requested=session_id is not None,
            session_reset=session_reset,
            stderr=self.stderr,
        )
        snapshots = self.invocation.snapshots()
        request = self.invocation.request(session_id)
        self.observer.target = watch
        try:
            record = await engine.run(request)
        finally:
            self.observer.target = None
            watch.stop_watchdog()
        self.records.append(record)
        try:
            watch.finish(record)
            if record.state is State.DONE:
                self._copy_back(record, snapshots)
        finally:
            _discard_copies(record, snapshots)
        return Attempt(
            record, watch.retry_in_new_session(record), watch.stopped_by_agent_error
        )

    def _copy_back(
        self, record: ExecutionRecord, snapshots: dict[str, FileSnapshot]
    ) -> None:
        run_dir = Path(record.run_dir or "")
        for guest_path, before in snapshots.items():
            protected = (
                PROTECTED_GROUP_FILES if guest_path == GROUP_GUEST_PATH else frozenset()
            )
            report = copy_back(
                run_dir / guest_path,
                self.invocation.host_folder(guest_path),
                before,
                protected=protected,
                secrets=list(self.invocation.secrets.values()),
            )
            logger.info(
                "copied %d file(s) back and deleted %d",
                len(report.written),
                len(report.deleted),
                extra={"action": "copy_back", "execution_id": record.id},
            )

    def _exit_code(self, attempt: Attempt) -> int:
        record = attempt.record
        if record.state is State.FAILED and record.error_type == "cancelled":
            return EXIT_INTERRUPTED
        if self.writer.errors == 0:
            return EXIT_SUCCESS
        agent_ended = (
            record.state is State.DONE
            or attempt.stopped_by_agent_error
            or record.error_type in (IdleTimeoutError.error_type, "timeout")
        )
        return EXIT_AGENT_ERROR if agent_ended else EXIT_ENGINE_FAILED


def _discard_copies(
    record: ExecutionRecord, snapshots: dict[str, FileSnapshot]
) -> None:
    """Delete the collected copies: they contain transcripts and group files."""
    if not record.run_dir:
        return
    for guest_path in snapshots:
        shutil.rmtree(Path(record.run_dir) / guest_path, ignore_errors=True)
