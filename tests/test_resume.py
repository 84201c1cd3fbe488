"""Resuming runs that a crashed worker left in each state (instant backend)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from engine import resume
from engine.exceptions import LeaseHeldError
from engine.faults import AGENT_STARTED, CRASH_POINTS
from engine.states import State
from engine.store import utcnow
from tests.helpers import request
from tests.recovery_helpers import (
    CrashingBackend,
    crash_at,
    engine_for,
    instant_settings,
)


async def resume_run(settings, backend, execution_id):
    engine = engine_for(settings, backend)
    try:
        return await engine.resume(execution_id)
    finally:
        await engine.aclose()


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_resume_finishes_run(tmp_path, point):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request("echo", "hi"), point)

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.DONE, final.error_message
    assert final.exit_code == 0
    assert final.attempt == 2
    assert backend.agent_starts == 1
    assert backend.machines == {}
    assert final.transitions[-1].attempt == 2


async def test_resume_records_where_it_continued(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "uploading")

    final = await resume_run(settings, backend, execution_id)

    by_attempt = {1: [], 2: []}
    for row in final.transitions:
        by_attempt[row.attempt].append(row.to_state)
    assert by_attempt[1] == ["requested", "cloning", "booting", "ip-ready", "uploading"]
    assert by_attempt[2] == ["executing", "collecting", "deleting", "done"]


@pytest.mark.parametrize(
    ("policy", "state", "error_type", "starts"),
    [("fail", State.FAILED, "agent_lost", 1), ("rerun", State.DONE, None, 2)],
)
async def test_lost_agent_follows_policy(tmp_path, policy, state, error_type, starts):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    run_request = request(resume_policy=policy)
    execution_id = await crash_at(settings, backend, run_request, AGENT_STARTED)
    backend.started.clear()  # the agent vanished without an exit status

    final = await resume_run(settings, backend, execution_id)

    assert final.state is state
    assert final.error_type == error_type
    assert backend.agent_starts == starts
    assert backend.machines == {}


async def test_policy_default_is_stored(tmp_path):
    settings = instant_settings(tmp_path, engine_resume_policy="rerun")
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), AGENT_STARTED)
    backend.started.clear()
    # The resuming process has the default policy, `fail`; the run keeps `rerun`.
    final = await resume_run(instant_settings(tmp_path), backend, execution_id)

    assert final.request["resume_policy"] == "rerun"
    assert final.state is State.DONE
    assert backend.agent_starts == 2


@pytest.mark.parametrize("point", ["requested", "booting", "uploading"])
async def test_secrets_before_upload_fail(tmp_path, point):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    run_request = request(secrets={"API_KEY": "s3cret-value"})
    execution_id = await crash_at(settings, backend, run_request, point)

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.FAILED
    assert final.error_type == "secrets_unavailable"
    assert final.failed_state == point
    assert "API_KEY" in final.error_message
    assert "s3cret-value" not in final.error_message
    assert backend.agent_starts == 0
    assert backend.machines == {}


async def test_secrets_after_upload_resume(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    run_request = request(secrets={"API_KEY": "s3cret-value"})
    execution_id = await crash_at(settings, backend, run_request, "executing")

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.DONE
    assert backend.agent_starts == 1


async def test_rerun_without_secrets_fails(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    run_request = request(secrets={"API_KEY": "x"}, resume_policy="rerun")
    execution_id = await crash_at(settings, backend, run_request, AGENT_STARTED)
    backend.started.clear()

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.FAILED
    assert final.error_type == "secrets_unavailable"
    assert final.failed_state == "executing"
    assert backend.agent_starts == 1


async def test_failed_run_stays_failed(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend(fail_in="upload")
    execution_id = await crash_at(settings, backend, request(), "deleting")
    backend.fail_in = None

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.FAILED
    assert final.error_type == "backend_error"
    assert final.failed_state == "uploading"
    assert backend.machines == {}


async def test_expired_run_times_out(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(timeout=0.2), "booting")
    engine = engine_for(settings, backend)
    try:
        record = engine.get(execution_id)
        blocker = resume.resume_blocker(
            record,
            now=record.created_at + timedelta(seconds=1),
            default_timeout=3600,
            stdin_present=True,
        )
    finally:
        await engine.aclose()
    await asyncio.sleep(0.3)
    final = await resume_run(settings, backend, execution_id)

    assert blocker is not None
    assert blocker.error_type == "timeout"
    assert final.state is State.FAILED
    assert final.error_type == "timeout"
    assert backend.machines == {}


async def test_stdin_is_restored(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(
        settings, backend, request("cat", stdin=b"line\n"), "cloning"
    )
    engine = engine_for(settings, backend)
    try:
        record = engine.get(execution_id)
        rebuilt, error = resume.rebuild_request(record, engine.run_dir(record))
    finally:
        await engine.aclose()

    assert error is None
    assert rebuilt.stdin == b"line\n"
    assert rebuilt.command == ["cat"]
    assert rebuilt.secrets == {}


async def test_missing_stdin_fails_run(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    run_request = request("cat", stdin=b"line\n")
    execution_id = await crash_at(settings, backend, run_request, "booting")
    (settings.runs_dir / execution_id / "stdin").unlink()

    final = await resume_run(settings, backend, execution_id)

    assert final.state is State.FAILED
    assert final.error_type == "input_unavailable"
    assert backend.machines == {}


async def test_resume_of_ended_run_changes_nothing(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    engine = engine_for(settings, backend)
    try:
        finished = await engine.run(request())
        again = await engine.resume(finished.id)
    finally:
        await engine.aclose()

    assert again.state is State.DONE
    assert again.attempt == 1
    assert again.lease_token == finished.lease_token
    assert len(again.transitions) == len(finished.transitions)


async def test_resume_of_live_run_is_rejected(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    owner = engine_for(settings, backend)
    try:
        execution_id = await owner.submit(request())
        with pytest.raises(LeaseHeldError):
            await owner.resume(execution_id)
        record = owner.get(execution_id)
    finally:
        await owner.aclose()

    assert record.lease_token == 1
    assert record.state is State.REQUESTED


async def test_resume_all_finishes_every_run(tmp_path):
    settings = instant_settings(tmp_path, engine_max_concurrent_runs=2)
    backend = CrashingBackend()
    crashed = [
        await crash_at(settings, backend, request(), point)
        for point in ("requested", "booting", "executing", AGENT_STARTED, "deleting")
    ]
    engine = engine_for(settings, backend)
    try:
        finished = await engine.resume_all()
        again = await engine.resume_all()
    finally:
        await engine.aclose()

    assert sorted(record.id for record in finished) == sorted(crashed)
    assert {record.state for record in finished} == {State.DONE}
    assert again == []
    assert backend.machines == {}


async def test_cancel_request_ends_resumed_run(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "ip-ready")
    engine = engine_for(settings, backend)
    try:
        engine.store.request_cancel(execution_id, utcnow())
        final = await engine.resume(execution_id)
    finally:
        await engine.aclose()

    assert final.state is State.FAILED
    assert final.error_type == "cancelled"
    assert final.failed_state == "ip-ready"
    assert backend.machines == {}
