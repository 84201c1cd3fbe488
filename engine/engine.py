"""The Engine: the Python API that submits, drives, resumes and cleans up executions.

async with Engine() as engine:
    record = await engine.run(ExecutionRequest(command=["echo", "hi"]))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import Backend, Machine, MachineSpec, Share, machine_name
from backends.registry import create_backend, resolve_backend_name, usable_backends
from engine import lease, resume
from engine.bundle import Bundle
from engine.exceptions import (
    EngineError,
    InvalidRequestError,
    LeaseHeldError,
    LeaseLostError,
)
from engine.faults import CrashInjector, crash
from engine.observers import RunObserver
from engine.reaper import Reaper, ReapReport
from engine.records import ExecutionRecord, ExecutionRequest, TransitionRecord
from engine.runner import Run, RunContext
from engine.settings import Settings, load_settings
from engine.states import CREATED_TRIGGER, State, build_machine
from engine.store import Store, utcnow
from engine.store.chain import GENESIS, transition_hash
from engine.worker import WorkerIdentity, current_worker

if TYPE_CHECKING:
    from engine.tracing import TraceObserver

logger = logging.getLogger(__name__)


class Engine:
    """Submits executions, drives them to a terminal state, and reads them back."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: Store | None = None,
        backends: dict[str, Backend] | None = None,
        observers: Sequence[RunObserver] = (),
        worker: WorkerIdentity | None = None,
    ):
        self.settings = settings or load_settings()
        # None when ENGINE_TRACE_EXPORTER is `none`.
        self._tracer = _trace_observer(self.settings)
        self.store = store or Store(self.settings.database_url)
        # The lease owner id; tests pass another identity to act as a second worker.
        self.worker = str(worker or current_worker())
        self.observers = list(observers)
        if self._tracer is not None:
            self.observers.append(self._tracer)
        if self.settings.engine_test_crash_in:
            self.observers.append(CrashInjector(self.settings.engine_test_crash_in))
        self._backends: dict[str, Backend] = dict(backends or {})
        self._machine = build_machine()
        self._slots = asyncio.Semaphore(self.settings.engine_max_concurrent_runs)
        self._runs: dict[str, Run] = {}
        self._tasks: dict[str, asyncio.Task[Any] | None] = {}
        self._lost: set[str] = set()
        self._interrupted = False
        self._heartbeat: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._tracer is not None:
            # Waits up to ENGINE_TRACE_FLUSH_TIMEOUT, so not on the event loop.
            await asyncio.to_thread(self._tracer.close)
        self.store.close()

    @property
    def install_id(self) -> str:
        return self.store.install_id()

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            self._backends[name] = create_backend(name, self.settings)
        return self._backends[name]

    # -- reads -------------------------------------------------------------------

    def get(self, execution_id: str) -> ExecutionRecord:
        return self.store.get_execution(execution_id, with_transitions=True)

    def list(
        self, states: Sequence[State] | None = None, limit: int | None = 100
    ) -> list[ExecutionRecord]:
        return self.store.list_executions(states=states, limit=limit)

    # -- submitting and running ----------------------------------------------------

    async def submit(self, request: ExecutionRequest) -> str:
        """Store `request` as a new execution in `requested`; return its id.

        Raises UsageError when the backend is unknown and BackendUnavailableError
        when its tool is missing; either way nothing is written.
        """
        backend_name = resolve_backend_name(request.backend, self.settings)
        self.backend(backend_name).check_available()
        execution_id = uuid.uuid4().hex[:16]
        run_dir = self.settings.runs_dir / execution_id
        now = utcnow()
        first = self._first_transition(execution_id, now)
        stored_request = request.stored_form()
        # Fixed at submit, so a resume in another process follows the same policy.
        stored_request["resume_policy"] = (
            request.resume_policy or self.settings.engine_resume_policy
        )
        values: dict[str, Any] = {
            "id": execution_id,
            "install_id": self.install_id,
            "group_name": request.group,
            "backend": backend_name,
            "state": State.REQUESTED.value,
            "request": stored_request,
            "resource_name": None,
            "resource_details": {},
            "leaked": False,
            "run_dir": str(run_dir),
            "created_at": now,
            "updated_at": now,
            "owner": self.worker,
            "lease_expires_at": now
            + timedelta(seconds=self.settings.engine_lease_seconds),
            "lease_token": 1,
            "attempt": 1,
            "trace_id": secrets.token_hex(16),
            "root_span_id": secrets.token_hex(8),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        if request.stdin is not None:
            (run_dir / "stdin").write_bytes(request.stdin)
        try:
            self.store.create_execution(values, first)
        except Exception:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if self.settings.engine_test_crash_in == State.REQUESTED.value:
            crash(State.REQUESTED.value)
        logger.info(
            "execution requested",
            extra={
                "action": "requested",
                "execution_id": execution_id,
                "backend": backend_name,
            },
        )
        return execution_id

    def _first_transition(self, execution_id: str, at: Any) -> TransitionRecord:
        span_id = secrets.token_hex(8)
        fields: dict[str, Any] = {
            "execution_id": execution_id,
            "seq": 1,
            "from_state": None,
            "to_state": State.REQUESTED.value,
            "trigger": CREATED_TRIGGER,
            "at": at,
            "duration": None,
            "attempt": 1,
            "worker": self.worker,
            "details": None,
            "span_id": span_id,
        }
        digest = transition_hash(GENESIS, **fields)
        return TransitionRecord(**fields, hash=digest)

    async def run(self, request: ExecutionRequest) -> ExecutionRecord:
        """Submit `request` and drive it until it is done or failed."""
        execution_id = await self.submit(request)
        return await self.drive(execution_id, request)

    async def drive(
        self, execution_id: str, request: ExecutionRequest
    ) -> ExecutionRecord:
        """Drive a submitted execution that this worker owns to a terminal state."""
        record = self.store.get_execution(execution_id)
        return await self._drive_run(record, self._build_run(record, request))

    async def _drive_run(
        self, record: ExecutionRecord, run: Run, blocker: EngineError | None = None
    ) -> ExecutionRecord:
        """Drive `run` from `record`'s state, failing it with `blocker` first if set."""
        execution_id = record.id
        self._machine.add_model(run, initial=record.state.value)
        self._runs[execution_id] = run
        if self._interrupted:
            run.cancel_requested.set()
        self._tasks[execution_id] = asyncio.current_task()
        self._ensure_heartbeat()
        try:
            if blocker is not None:
                await run.fail(blocker)
            await run.drive(self._slots)
        except LeaseLostError:
            logger.warning(
                "lease lost; stopping this worker's drive of the run",
                extra={"action": "lease_lost", "execution_id": execution_id},
            )
        except asyncio.CancelledError:
            if execution_id not in self._lost:
                raise
            # The cancel only stopped this run; the task, such as a loop of
            # `resume_all`, goes on.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        finally:
            self._tasks.pop(execution_id, None)
            self._lost.discard(execution_id)
            self._runs.pop(execution_id, None)
            self._machine.remove_model(run)
        final = self.get(execution_id)
        # Observer errors are logged and dropped here too, as during the run.
        run.notify("on_finished", final)
        return final

    def run_dir(self, record: ExecutionRecord) -> Path:
        """Return the host folder of a run's stdin copy and collected results."""
        return Path(record.run_dir or self.settings.runs_dir / record.id)

    def _build_run(self, record: ExecutionRecord, request: ExecutionRequest) -> Run:
        backend = self.backend(record.backend)
        run_dir = self.run_dir(record)
        spec = MachineSpec(
            name=machine_name(record.install_id, record.id),
            execution_id=record.id,
            install_id=record.install_id,
            image=request.image,
            cpus=request.cpus or self.settings.engine_cpus,
            memory=request.memory or self.settings.engine_memory,
            network=request.network,
            shares=tuple(
                Share(share.name, share.host_path, share.read_only)
                for share in request.shares
            ),
            run_dir=run_dir,
        )
        timeout = request.timeout or self.settings.engine_run_timeout
        elapsed = (utcnow() - record.created_at).total_seconds()
        context = RunContext(
            store=self.store,
            backend=backend,
            worker=self.worker,
            step_timeout=self.settings.engine_step_timeout,
            delete_timeout=self.settings.engine_delete_timeout,
            observers=self.observers,
        )
        transitions = self.store.transitions(record.id)
        last = transitions[-1]
        run = Run(
            context,
            execution_id=record.id,
            spec=spec,
            command=list(request.command),
            bundle=_bundle_for(request),
            run_dir=run_dir,
            token=record.lease_token,
            attempt=record.attempt,
            seq=last.seq,
            last_hash=last.hash,
            entered_at=last.at,
            deadline=time.monotonic() + timeout - max(elapsed, 0.0),
            collect_paths=request.collect_paths,
            machine=_stored_machine(record, spec),
            trace_id=record.trace_id,
            root_span_id=record.root_span_id,
        )
        run.resume_policy = request.resume_policy or self.settings.engine_resume_policy
        # What earlier attempts recorded, so a run resumed in `deleting` after a
        # failure still ends `failed`.
        run.error_type = record.error_type
        run.error_message = record.error_message
        run.failed_state = record.failed_state
        run.exit_code = record.exit_code
        run.leaked = record.leaked
        if record.cancel_requested_at is not None:
            run.cancel_requested.set()
        return run

    # -- recovery ------------------------------------------------------------------

    async def resume(self, execution_id: str) -> ExecutionRecord:
        """Take over an execution whose worker stopped, and drive it to its end.

        The run continues from its recorded state; in `executing` it reattaches
        to the agent. Returns the record unchanged if the run already ended.
        Raises LeaseHeldError while a live worker holds the lease.
        """
        record = self.store.get_execution(execution_id)
        if record.is_terminal:
            return self.get(execution_id)
        if execution_id in self._runs:
            raise LeaseHeldError(execution_id, self.worker, record.lease_expires_at)
        self.backend(record.backend)  # an unknown backend raises before the claim
        lease.claim(
            self.store, execution_id, self.worker, self.settings.engine_lease_seconds
        )
        return await self._drive_claimed(execution_id)

    async def resume_all(self) -> list[ExecutionRecord]:
        """Resume every execution whose lease may be taken over; return them ended.

        Up to ENGINE_MAX_CONCURRENT_RUNS runs are driven at once, and each is
        claimed only when a slot is free, so no claimed run waits without a
        heartbeat renewing its lease.
        """
        attempted: set[str] = set()
        finished: list[ExecutionRecord] = []

        async def resume_until_none_left() -> None:
            while True:
                execution_id = lease.claim_next(
                    self.store,
                    self.worker,
                    self.settings.engine_lease_seconds,
                    exclude=attempted | self._runs.keys(),
                )
                if execution_id is None:
                    return
                attempted.add(execution_id)
                try:
                    finished.append(await self._drive_claimed(execution_id))
                except EngineError as exc:
                    # The run stays claimed by this worker, so once this
                    # process exits, another worker can claim it again.
                    logger.error(
                        "resuming the execution failed: %s",
                        exc,
                        extra={"action": "resume", "execution_id": execution_id},
                    )
                    finished.append(self.get(execution_id))

        slots = self.settings.engine_max_concurrent_runs
        await asyncio.gather(*(resume_until_none_left() for _ in range(slots)))
        return finished

    async def _drive_claimed(
        self, execution_id: str, blocker: EngineError | None = None
    ) -> ExecutionRecord:
        """Drive an execution that this worker has just claimed to its end.

        With `blocker`, or when the run cannot be resumed, the run is failed
        with that error and its machine deleted.
        """
        record = self.store.get_execution(execution_id)
        run_dir = self.run_dir(record)
        request, found_blocker = resume.prepare_resume(
            record,
            run_dir,
            now=utcnow(),
            default_timeout=self.settings.engine_run_timeout,
        )
        blocker = blocker or found_blocker
        logger.info(
            "resuming execution",
            extra={
                "action": "resume",
                "execution_id": execution_id,
                "state": record.state.value,
                "error_type": blocker.error_type if blocker else None,
            },
        )
        run = self._build_run(record, request)
        run.missing_secrets = tuple(resume.secret_names(record))
        return await self._drive_run(record, run, blocker)

    async def cancel(self, execution_id: str) -> ExecutionRecord:
        """Request that an execution stop; it ends `failed` with error `cancelled`.

        The run's machine is deleted on the way. A run that this engine drives
        stops at once; one that another live worker drives stops at that
        worker's next heartbeat (within ENGINE_LEASE_SECONDS / 3). When no live
        worker owns the run, this engine claims it and drives it to `failed`
        itself. Returns the record as it is when this call returns.
        """
        if not self.store.request_cancel(execution_id, utcnow()):
            return self.get(execution_id)
        run = self._runs.get(execution_id)
        if run is not None:
            run.cancel_requested.set()
            return self.get(execution_id)
        try:
            lease.claim(
                self.store,
                execution_id,
                self.worker,
                self.settings.engine_lease_seconds,
            )
        except LeaseHeldError:
            return self.get(execution_id)
        return await self._drive_claimed(execution_id)

    async def reap(
        self, *, dry_run: bool = False, older_than: timedelta | None = None
    ) -> ReapReport:
        """Delete this install's machines that no run needs; see engine/reaper.py."""
        reaper = Reaper(self, self._drive_claimed)
        return await reaper.reap(dry_run=dry_run, older_than=older_than)

    def reap_backend_names(self) -> list[str]:
        """Return the backends that `reap` lists machines on."""
        names = set(self._backends) | set(usable_backends(self.settings))
        return sorted(names)

    # -- leases ------------------------------------------------------------------

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        interval = self.settings.engine_lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            tokens = {run_id: run.token for run_id, run in self._runs.items()}
            if not tokens:
                continue
            try:
                lost = self.store.renew_leases(
                    self.worker, tokens, self.settings.engine_lease_seconds
                )
                cancelled = self.store.cancel_requests(tokens.keys() - lost)
            except Exception:
                logger.exception("lease renewal failed", extra={"action": "heartbeat"})
                continue
            for run_id in cancelled:
                run = self._runs.get(run_id)
                if run is not None and not run.cancel_requested.is_set():
                    logger.info(
                        "cancel requested; stopping the run",
                        extra={"action": "cancel", "execution_id": run_id},
                    )
                    run.cancel_requested.set()
            for run_id in lost:
                logger.warning(
                    "lease taken over by another worker; stopping the run here",
                    extra={"action": "lease_lost", "execution_id": run_id},
                )
                self._lost.add(run_id)
                run = self._runs.get(run_id)
                if run is not None:
                    run.lease_lost = True
                task = self._tasks.get(run_id)
                if task is not None:
                    task.cancel()

    def interrupt(self) -> None:
        """Ask every run this engine drives to stop; each ends failed/cancelled.

        Runs that start driving afterwards are cancelled at once.
        """
        self._interrupted = True
        for run in self._runs.values():
            run.cancel_requested.set()


def _trace_observer(settings: Settings) -> TraceObserver | None:
    """Return the live trace exporter, importing OpenTelemetry only if one is set.

    Importing the OpenTelemetry SDK took about 40 ms of every `engine run`.
    """
    if settings.engine_trace_exporter == "none":
        return None
    from engine.tracing import create_trace_observer

    return create_trace_observer(settings)


def _bundle_for(request: ExecutionRequest) -> Bundle:
    directories: dict[str, Path] = {}
    if request.upload_dir is not None:
        directories["work/input"] = request.upload_dir
    directories.update(request.uploads)
    return Bundle(
        stdin=request.stdin,
        secrets={
            name: value.get_secret_value() for name, value in request.secrets.items()
        },
        directories=directories,
    )


def _stored_machine(record: ExecutionRecord, spec: MachineSpec) -> Machine | None:
    if record.resource_name is None:
        return None
    return Machine(spec.name, spec, record.address, dict(record.resource_details))


def validate_upload_dir(path: Path) -> Path:
    """Return `path` resolved, or raise InvalidRequestError naming it."""
    if not path.exists():
        raise InvalidRequestError(f"upload folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise InvalidRequestError(f"upload path {str(path)!r} is not a folder")
    return path.resolve()
