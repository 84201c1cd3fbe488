"""The Engine: the Python API that submits and drives executions.

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
from typing import Any

from backends.base import Backend, Machine, MachineSpec, Share, machine_name
from backends.registry import create_backend, resolve_backend_name
from engine.bundle import Bundle
from engine.exceptions import InvalidRequestError, LeaseLostError
from engine.observers import RunObserver
from engine.records import ExecutionRecord, ExecutionRequest, TransitionRecord
from engine.runner import Run, RunContext
from engine.settings import Settings, load_settings
from engine.states import CREATED_TRIGGER, State, build_machine
from engine.store import Store, utcnow
from engine.store.chain import GENESIS, transition_hash
from engine.tracing import create_trace_observer
from engine.worker import current_worker

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
    ):
        self.settings = settings or load_settings()
        # None when ENGINE_TRACE_EXPORTER is `none`.
        self._tracer = create_trace_observer(self.settings)
        self.store = store or Store(self.settings.database_url)
        self.worker = str(current_worker())
        self.observers = list(observers)
        if self._tracer is not None:
            self.observers.append(self._tracer)
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
        values: dict[str, Any] = {
            "id": execution_id,
            "install_id": self.install_id,
            "group_name": request.group,
            "backend": backend_name,
            "state": State.REQUESTED.value,
            "request": request.stored_form(),
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
        run = self._build_run(record, request)
        self._machine.add_model(run, initial=record.state.value)
        self._runs[execution_id] = run
        if self._interrupted:
            run.cancel_requested.set()
        self._tasks[execution_id] = asyncio.current_task()
        self._ensure_heartbeat()
        try:
            await run.drive(self._slots)
        except LeaseLostError:
            logger.warning(
                "lease lost; stopping this worker's drive of the run",
                extra={"action": "lease_lost", "execution_id": execution_id},
            )
        except asyncio.CancelledError:
            if execution_id not in self._lost:
                raise
        finally:
            self._tasks.pop(execution_id, None)
            self._lost.discard(execution_id)
            self._runs.pop(execution_id, None)
            self._machine.remove_model(run)
        final = self.get(execution_id)
        for observer in self.observers:
            observer.on_finished(run, final)
        return final

    def _build_run(self, record: ExecutionRecord, request: ExecutionRequest) -> Run:
        backend = self.backend(record.backend)
        run_dir = Path(record.run_dir or self.settings.runs_dir / record.id)
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
        return run

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
            except Exception:
                logger.exception("lease renewal failed", extra={"action": "heartbeat"})
                continue
            for run_id in lost:
                logger.warning(
                    "lease taken over by another worker; stopping the run here",
                    extra={"action": "lease_lost", "execution_id": run_id},
                )
                self._lost.add(run_id)
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
