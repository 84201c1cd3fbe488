"""`Engine.cancel`: in this engine, through another worker's heartbeat, and unowned."""

from __future__ import annotations

import asyncio
import time

from engine.states import State
from tests.helpers import request
from tests.recovery_helpers import (
    CrashingBackend,
    crash_at,
    engine_for,
    instant_settings,
    remote_worker,
)


async def wait_for_state(engine, execution_id, state, timeout=10.0):
    deadline = time.monotonic() + timeout
    while engine.get(execution_id).state is not state:
        assert time.monotonic() < deadline, f"{execution_id} never reached {state}"
        await asyncio.sleep(0.02)


async def test_cancel_own_run_while_executing(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend(agent_seconds=30)
    engine = engine_for(settings, backend)
    try:
        execution_id = await engine.submit(request())
        drive = asyncio.create_task(engine.drive(execution_id, request()))
        await wait_for_state(engine, execution_id, State.EXECUTING)
        started = time.monotonic()
        await engine.cancel(execution_id)
        final = await asyncio.wait_for(drive, 5)
        elapsed = time.monotonic() - started
    finally:
        await engine.aclose()

    assert final.state is State.FAILED
    assert final.error_type == "cancelled"
    assert final.failed_state == "executing"
    assert final.cancel_requested_at is not None
    assert backend.machines == {}
    assert elapsed < 2


async def test_cancel_reaches_other_worker(tmp_path):
    settings = instant_settings(tmp_path, engine_lease_seconds=1.5)
    backend = CrashingBackend(agent_seconds=30)
    owner = engine_for(settings, backend)
    other = engine_for(settings, backend, remote_worker("other"))
    try:
        execution_id = await owner.submit(request())
        drive = asyncio.create_task(owner.drive(execution_id, request()))
        await wait_for_state(owner, execution_id, State.EXECUTING)
        started = time.monotonic()
        returned = await other.cancel(execution_id)
        final = await asyncio.wait_for(drive, 5)
        elapsed = time.monotonic() - started
    finally:
        await owner.aclose()
        await other.aclose()

    # The owner is alive, so the other worker only records the request.
    assert returned.state is State.EXECUTING
    assert returned.owner == owner.worker
    assert final.state is State.FAILED
    assert final.error_type == "cancelled"
    assert final.attempt == 1
    assert backend.machines == {}
    assert elapsed < 2


async def test_cancel_unowned_run_claims_it(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "booting")
    engine = engine_for(settings, backend)
    try:
        final = await engine.cancel(execution_id)
    finally:
        await engine.aclose()

    assert final.state is State.FAILED
    assert final.error_type == "cancelled"
    assert final.failed_state == "booting"
    assert final.attempt == 2
    assert backend.machines == {}


async def test_cancel_requested_run_skips_deleting(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "requested")
    engine = engine_for(settings, backend)
    try:
        final = await engine.cancel(execution_id)
    finally:
        await engine.aclose()

    assert final.state is State.FAILED
    assert final.error_type == "cancelled"
    assert [row.to_state for row in final.transitions] == ["requested", "failed"]
    assert backend.calls == []


async def test_cancel_of_ended_run_changes_nothing(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    engine = engine_for(settings, backend)
    try:
        finished = await engine.run(request())
        after = await engine.cancel(finished.id)
    finally:
        await engine.aclose()

    assert after.state is State.DONE
    assert after.cancel_requested_at is None
    assert after.updated_at == finished.updated_at
