"""The runner: drives one execution through its states with a backend.

Each transition is committed (with the lease token) in the state machine's
`before_state_change` callback, so a state is stored before its step starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from backends.base import AgentState, AgentStatus, Backend, Machine, MachineSpec
from engine.bundle import DEFAULT_COLLECT_PATHS, Bundle
from engine.exceptions import (
    AgentLostError,
    CommandNotFoundError,
    EngineError,
    IllegalTransitionError,
    LeaseLostError,
    RunCancelledError,
    SecretsUnavailableError,
    StepTimeoutError,
)
from engine.observers import RunObserver
from engine.records import TransitionRecord
from engine.states import SUCCESS_TRIGGERS, State, allowed_triggers
from engine.store import Store, utcnow
from engine.store.chain import transition_hash

logger = logging.getLogger(__name__)

# Seconds spent copying back a failed agent's output before its machine is deleted.
SALVAGE_SECONDS = 15.0


class RunContext:
    """The parts a run shares with its engine: store, backend, worker, time limits."""

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        worker: str,
        step_timeout: float,
        delete_timeout: float,
        observers: Sequence[RunObserver] = (),
    ):
        self.store = store
        self.backend = backend
        self.worker = worker
        self.step_timeout = step_timeout
        self.delete_timeout = delete_timeout
        self.observers = observers


class Run:
    """One execution in flight: the state machine's model and the step driver."""

    state: str  # managed by the shared AsyncMachine

    def __init__(
        self,
        context: RunContext,
        *,
        execution_id: str,
        spec: MachineSpec,
        command: list[str],
        bundle: Bundle,
        run_dir: Path,
        token: int,
        attempt: int,
        seq: int,
        last_hash: str,
        entered_at: datetime,
        deadline: float,
        collect_paths: tuple[str, ...] = (),
        machine: Machine | None = None,
        trace_id: str | None = None,
        root_span_id: str | None = None,
    ):
        self.context = context
        self.execution_id = execution_id
        self.spec = spec
        self.command = command
        self.bundle = bundle
        self.run_dir = run_dir
        self.token = token
        self.attempt = attempt
        self.seq = seq
        self.last_hash = last_hash
        self.entered_at = entered_at
        self.deadline = deadline
        self.collect_paths = DEFAULT_COLLECT_PATHS + tuple(collect_paths)
        self.machine = machine
        self.trace_id = trace_id
        self.root_span_id = root_span_id
        self.exit_code: int | None = None
        self.error_type: str | None = None
        self.error_message: str | None = None
        self.failed_state: str | None = None
        self.leaked = False
        self.output_offsets = [0, 0]
        self.cancel_requested = asyncio.Event()
        # Set by `stop`: the error that the interrupted step fails with.
        self.stop_error: EngineError | None = None
        self.resume_policy = "fail"
        self._pending_create: asyncio.Future[Machine] | None = None
        # Secrets that the request named but whose values this process lacks,
        # as after a resume. A rerun of the agent would start without them.
        self.missing_secrets: tuple[str, ...] = ()
        # Set by the engine's heartbeat when another worker took the lease over.
        # The engine also cancels the drive task, but the transitions library
        # swallows a cancellation that lands inside a trigger, so the drive
        # checks this before every step.
        self.lease_lost = False

    # -- identity used by observers -----------------------------------------

    @property
    def backend_name(self) -> str:
        return self.context.backend.name

    @property
    def resource_name(self) -> str:
        return self.spec.name

    # -- state machine callbacks -------------------------------------------

    def has_error(self, event: Any) -> bool:
        return self.error_type is not None

    async def record_transition(self, event: Any) -> None:
        """Commit the transition that `event` is making, before the state changes."""
        now = utcnow()
        source = event.transition.source
        dest = event.transition.dest
        details = event.kwargs.get("details")
        span_id = secrets.token_hex(8)
        seq = self.seq + 1
        duration = (now - self.entered_at).total_seconds()
        fields: dict[str, Any] = {
            "execution_id": self.execution_id,
            "seq": seq,
            "from_state": source,
            "to_state": dest,
            "trigger": event.event.name,
            "at": now,
            "duration": duration,
            "attempt": self.attempt,
            "worker": self.context.worker,
            "details": details,
            "span_id": span_id,
        }
        digest = transition_hash(self.last_hash, **fields)
        row = TransitionRecord(**fields, hash=digest)
        changes = self._changes_for(State(dest), event.kwargs.get("changes") or {})
        if State(dest).is_terminal:
            changes["finished_at"] = now
        self.context.store.record_transition(
            self.execution_id, self.token, row, changes
        )
        self.seq = seq
        self.last_hash = digest
        self.entered_at = now
        self.notify("on_transition", row)

    def _changes_for(self, dest: State, extra: dict[str, Any]) -> dict[str, Any]:
        changes = dict(extra)
        if self.error_type is not None:
            changes.update(
                error_type=self.error_type,
                error_message=self.error_message,
                failed_state=self.failed_state,
            )
        if self.exit_code is not None:
            changes["exit_code"] = self.exit_code
        if dest.is_terminal:
            changes["leaked"] = self.leaked
        if self.machine is not None:
            changes["resource_details"] = self.machine.details
            changes["address"] = self.machine.address
        return changes

    async def fire(self, trigger: str, **kwargs: Any) -> None:
        """Fire `trigger`, raising IllegalTransitionError if the state forbids it."""
        allowed = allowed_triggers(self.state)
        if trigger not in allowed:
            raise IllegalTransitionError(
                self.execution_id, self.state, trigger, allowed
            )
        await getattr(self, trigger)(**kwargs)

    def stop(self, error: EngineError) -> None:
        """Interrupt the current step and fail the run with `error`.

        The step fails as if it had raised `error`, so the trigger follows its
        class: `cancelled` for a RunCancelledError, `timed_out` for a
        StepTimeoutError, `step_failed` for any other. A run still in
        `requested` fails as cancelled.
        """
        if self.stop_error is None:
            self.stop_error = error
        self.cancel_requested.set()

    def notify(self, hook: str, *args: Any) -> None:
        for observer in self.context.observers:
            try:
                getattr(observer, hook)(self, *args)
            except Exception:
                logger.exception(
                    "observer failed",
                    extra={
                        "action": "observer_error",
                        "execution_id": self.execution_id,
                    },
                )

    # -- driving -------------------------------------------------------------

    async def drive(self, slot: asyncio.Semaphore | None = None) -> None:
        """Run the remaining steps until the execution is done or failed."""
        steps: dict[State, Callable[[], Awaitable[None]]] = {
            State.CLONING: self._clone,
            State.BOOTING: self._boot,
            State.IP_READY: self._wait_ready,
            State.UPLOADING: self._upload,
            State.EXECUTING: self._execute,
            State.COLLECTING: self._collect,
        }
        # The run waits for a slot in `requested` (or in its resumed state) and
        # keeps it until it is terminal.
        if slot is not None:
            await slot.acquire()
        try:
            while not State(self.state).is_terminal:
                if self.lease_lost:
                    raise LeaseLostError(self.execution_id, self.token)
                state = State(self.state)
                if state is State.REQUESTED:
                    await self._claim()
                elif state is State.DELETING:
                    await self._delete()
                else:
                    await self._run_step(state, steps[state])
        finally:
            if slot is not None:
                slot.release()

    async def _claim(self) -> None:
        if self.cancel_requested.is_set():
            await self._fail(State.REQUESTED, RunCancelledError(), "cancelled")
            return
        if time.monotonic() > self.deadline:
            error = StepTimeoutError("the run timed out while waiting for a slot")
            await self._fail(State.REQUESTED, error, "timed_out")
            return
        await self.fire("claimed", changes={"resource_name": self.spec.name})

    async def _run_step(
        self, state: State, step: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await self._guarded(state, step())
        except LeaseLostError:
            raise
        except RunCancelledError as exc:
            await self._fail(state, exc, "cancelled")
        except StepTimeoutError as exc:
            await self._fail(state, exc, "timed_out")
        except EngineError as exc:
            await self._fail(state, exc, "step_failed")
        except Exception as exc:
            logger.exception(
                "step raised an unexpected error",
                extra={"action": "step_error", "execution_id": self.execution_id},
            )
            error = EngineError(f"{type(exc).__name__}: {exc}")
            error.error_type = "internal_error"
            await self._fail(state, error, "step_failed")
        else:
            await self.fire(SUCCESS_TRIGGERS[state])

    async def _guarded(self, state: State, step: Awaitable[None]) -> None:
        """Await `step`, stopping it on the step or run timeout or on cancel."""
        remaining = self.deadline - time.monotonic()
        limit = (
            remaining
            if state is State.EXECUTING
            else min(self.context.step_timeout, remaining)
        )
        task = asyncio.ensure_future(step)
        cancel = asyncio.ensure_future(self.cancel_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {task, cancel}, timeout=max(limit, 0), return_when="FIRST_COMPLETED"
            )
        finally:
            cancel.cancel()
            if not task.done():
                # Also reached when the drive itself is cancelled: stop the step.
                task.cancel()
        if task in done:
            task.result()
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if cancel in done:
            if self.stop_error is not None:
                raise self.stop_error
            raise RunCancelledError("the run was cancelled on request")
        if limit >= remaining:
            raise StepTimeoutError(f"the run exceeded its timeout in {state}")
        raise StepTimeoutError(
            f"step {state} exceeded its timeout of {self.context.step_timeout:g} s"
        )

    async def fail(self, error: EngineError) -> None:
        """Fail the run in its current state, as if its step had raised `error`."""
        state = State(self.state)
        if isinstance(error, RunCancelledError):
            trigger = "cancelled"
        elif isinstance(error, StepTimeoutError):
            trigger = "timed_out"
        elif state is State.REQUESTED:
            trigger = "rejected"
        else:
            trigger = "step_failed"
        await self._fail(state, error, trigger)

    async def _fail(self, state: State, error: EngineError, trigger: str) -> None:
        self.error_type = error.error_type
        self.error_message = str(error)
        self.failed_state = state.value
        logger.warning(
            "step failed: %s",
            error,
            extra={
                "action": "step_failed",
                "execution_id": self.execution_id,
                "state": state.value,
                "error_type": error.error_type,
            },
        )
        details = {"error_type": error.error_type}
        await self.fire(trigger, details=details)

    # -- steps -----------------------------------------------------------------

    async def _clone(self) -> None:
        # A create that a timeout or cancel interrupts may still finish in the
        # runtime (a Docker API request is not withdrawn), so deleting waits for it.
        self._pending_create = asyncio.ensure_future(
            self.context.backend.create(self.spec)
        )
        self.machine = await asyncio.shield(self._pending_create)
        self.context.store.record_resource(
            self.backend_name, self.spec.name, self.execution_id, self.machine.details
        )

    def _current_machine(self) -> Machine:
        if self.machine is None:
            self.machine = Machine(self.spec.name, self.spec)
        return self.machine

    async def _boot(self) -> None:
        self.machine = await self.context.backend.start(self._current_machine())

    async def _wait_ready(self) -> None:
        limit = min(self.context.step_timeout, self.deadline - time.monotonic())
        self.machine = await self.context.backend.wait_ready(
            self._current_machine(), limit
        )

    async def _upload(self) -> None:
        await self.context.backend.upload(self._current_machine(), self.bundle)

    async def _execute(self) -> None:
        backend = self.context.backend
        machine = self._current_machine()
        status = await self._reattach(machine)
        if status is None:
            self.machine = await backend.start_agent(machine, self.command)
            self.context.store.update_execution(
                self.execution_id, self.token, resource_details=self.machine.details
            )
            self.notify("on_agent_started")
        offsets = (self.output_offsets[0], self.output_offsets[1])
        status = await backend.wait_agent(
            self._current_machine(), self._on_output, offsets
        )
        if status.start_error and status.exit_code == 127:
            raise CommandNotFoundError(
                f"{status.start_error.strip()} in {machine.name}: check the command "
                "after `--` and the image",
                backend=self.backend_name,
                execution_id=self.execution_id,
                resource=machine.name,
            )
        self.exit_code = status.exit_code

    async def _reattach(self, machine: Machine) -> AgentStatus | None:
        """Return the agent's status if an earlier attempt started it, else None.

        A resumed run whose agent was started but is gone follows the resume
        policy: `fail` raises AgentLostError, `rerun` starts the agent again.
        """
        if self.attempt == 1:
            return None
        status = await self.context.backend.agent_status(machine)
        if status.state is not AgentState.MISSING:
            return status
        if "agent_started_at" not in machine.details:
            return None
        if self.resume_policy == "rerun" and self.missing_secrets:
            raise SecretsUnavailableError(
                f"the agent in {machine.name} is gone and the resume policy is "
                f"`rerun`, but its secrets ({', '.join(self.missing_secrets)}) were "
                "consumed by the first start and are never stored; submit the run "
                "again",
                execution_id=self.execution_id,
            )
        if self.resume_policy == "fail":
            raise AgentLostError(
                f"the agent in {machine.name} was started by an earlier attempt and "
                "is gone without an exit status; the resume policy is `fail` "
                "(set resume_policy=rerun to start it again)",
                backend=self.backend_name,
                execution_id=self.execution_id,
                resource=machine.name,
            )
        return None

    async def _on_output(self, stream: str, data: bytes) -> None:
        self.output_offsets[0 if stream == "stdout" else 1] += len(data)
        self.notify("on_output", stream, data)

    async def _collect(self) -> None:
        await self.context.backend.collect(
            self._current_machine(), self.collect_paths, self.run_dir
        )
        self._deliver_remaining_output()

    def _deliver_remaining_output(self) -> None:
        """Pass on output that the agent wrote after the last streamed chunk."""
        for index, stream in enumerate(("stdout", "stderr")):
            path = self.run_dir / "result" / stream
            if not path.is_file():
                continue
            with path.open("rb") as handle:
                handle.seek(self.output_offsets[index])
                rest = handle.read()
            if rest:
                self.output_offsets[index] += len(rest)
                self.notify("on_output", stream, rest)

    async def _delete(self) -> None:
        await self._settle_pending_create()
        machine = self._current_machine()
        if self.failed_state == State.EXECUTING.value:
            await self._salvage_output(machine)
        try:
            await asyncio.wait_for(
                self.context.backend.delete(machine), self.context.delete_timeout
            )
        except (EngineError, TimeoutError) as exc:
            if self._nothing_was_created():
                logger.warning(
                    "could not confirm deletion, but the backend was unavailable "
                    "when the machine was to be created: %s",
                    exc,
                    extra={
                        "action": "delete_skipped",
                        "execution_id": self.execution_id,
                    },
                )
                await self.fire("deleted", details={"unconfirmed": True})
                return
            self.leaked = True
            if self.error_type is None:
                self.error_type = getattr(exc, "error_type", "timeout")
                self.error_message = str(exc) or "deleting the machine timed out"
                self.failed_state = State.DELETING.value
            logger.error(
                "machine could not be deleted and is leaked: %s",
                exc,
                extra={
                    "action": "delete_failed",
                    "execution_id": self.execution_id,
                    "resource": machine.name,
                },
            )
            await self.fire("delete_failed", details={"leaked": True})
            return
        self.context.store.mark_resource_deleted(self.backend_name, machine.name)
        await self.fire("deleted")

    async def _settle_pending_create(self) -> None:
        """Wait for an interrupted create to finish, so its machine is deleted too."""
        pending = self._pending_create
        if pending is None or pending.done():
            return
        try:
            created = await asyncio.wait_for(
                asyncio.shield(pending), self.context.delete_timeout
            )
        except Exception as exc:
            logger.info(
                "interrupted create ended with an error: %s",
                exc,
                extra={"action": "create_settled", "execution_id": self.execution_id},
            )
            return
        self.machine = created

    def _nothing_was_created(self) -> bool:
        """Return whether this run's machine cannot exist: the first attempt's
        create failed because the backend's tool or daemon was unreachable."""
        return (
            self.attempt == 1
            and self.failed_state == State.CLONING.value
            and self.error_type == "backend_unavailable"
        )

    async def _salvage_output(self, machine: Machine) -> None:
        """Copy back what a failed agent wrote, so a timed-out or cancelled run
        keeps its output; failures here are logged, never raised."""
        limit = min(self.context.step_timeout, SALVAGE_SECONDS)
        try:
            await asyncio.wait_for(
                self.context.backend.collect(machine, self.collect_paths, self.run_dir),
                limit,
            )
        except Exception as exc:
            # Includes UnsafeArchiveError: a hostile archive is skipped, not fatal.
            logger.warning(
                "could not copy back the output of the failed agent: %s",
                exc,
                extra={"action": "salvage_failed", "execution_id": self.execution_id},
            )
            return
        self._deliver_remaining_output()
