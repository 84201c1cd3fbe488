"""The reaper: the per-machine decision, and reaping with the instant backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import event

from backends.base import Resource, machine_name
from engine.reaper import ReapAction, decide, execution_id_of
from engine.records import ExecutionRecord
from engine.states import State
from engine.store import utcnow
from tests.helpers import request
from tests.recovery_helpers import (
    CrashingBackend,
    crash_at,
    engine_for,
    instant_settings,
)

NOW = utcnow()


def machine(**changes) -> Resource:
    values = {
        "backend": "instant",
        "name": "eng-inst-e1",
        "install_id": "inst",
        "execution_id": "e1",
        "created_at": NOW - timedelta(hours=2),
    }
    values.update(changes)
    return Resource(**values)


def record(**changes) -> ExecutionRecord:
    values = {
        "id": "e1",
        "install_id": "inst",
        "state": State.EXECUTING,
        "backend": "instant",
        "group": None,
        "request": {"command": ["true"]},
        "resource_name": "eng-inst-e1",
        "resource_details": {},
        "address": None,
        "exit_code": None,
        "failed_state": None,
        "error_type": None,
        "error_message": None,
        "leaked": False,
        "run_dir": None,
        "created_at": NOW - timedelta(hours=2),
        "updated_at": NOW - timedelta(hours=1),
        "finished_at": None,
        "owner": "host:1:1",
        "lease_expires_at": NOW + timedelta(seconds=20),
        "lease_token": 1,
        "attempt": 1,
        "cancel_requested_at": None,
        "trace_id": None,
        "root_span_id": None,
    }
    values.update(changes)
    return ExecutionRecord(**values)


EXPIRED = NOW - timedelta(seconds=5)


@pytest.mark.parametrize(
    ("found", "run", "alive", "blocker", "older_than", "action", "reason_part"),
    [
        (machine(), None, None, None, None, ReapAction.DELETE, "no execution"),
        (machine(), record(state=State.DONE), None, None, None, ReapAction.DELETE,
         "done"),
        (machine(), record(state=State.FAILED, leaked=True), None, None, None,
         ReapAction.DELETE, "leaked"),
        (machine(), record(), True, None, None, ReapAction.KEEP, "owned by"),
        (machine(), record(), None, None, None, ReapAction.KEEP, "owned by"),
        (machine(), record(), False, None, None, ReapAction.KEEP, "engine resume"),
        (machine(), record(lease_expires_at=EXPIRED), None, None, None,
         ReapAction.KEEP, "expired"),
        (machine(), record(lease_expires_at=EXPIRED), None, "timeout: late", None,
         ReapAction.FAIL_RUN, "timeout: late"),
        (machine(), record(owner=None), None, "secrets_unavailable: x", None,
         ReapAction.FAIL_RUN, "no worker"),
        (machine(), record(), True, "timeout: late", None, ReapAction.KEEP,
         "owned by"),
        (machine(created_at=NOW - timedelta(minutes=5)), None, None, None,
         timedelta(hours=1), ReapAction.KEEP, "younger"),
        (machine(created_at=None), None, None, None, timedelta(hours=1),
         ReapAction.KEEP, "younger"),
        (machine(), None, None, None, timedelta(hours=1), ReapAction.DELETE,
         "no execution"),
        (None, record(state=State.FAILED, leaked=True), None, None, None,
         ReapAction.FORGET, "already gone"),
        (None, record(lease_expires_at=EXPIRED), None, "timeout: late", None,
         ReapAction.FAIL_RUN, "cannot be resumed"),
    ],
)  # fmt: skip
def test_decide_cases(found, run, alive, blocker, older_than, action, reason_part):
    decision = decide(
        found,
        run,
        now=NOW,
        owner_alive=alive,
        blocker=blocker,
        older_than=older_than,
    )

    assert decision.action is action
    assert reason_part in decision.reason


def test_execution_id_from_label_or_name():
    by_label = machine()
    by_name = machine(execution_id=None, name=machine_name("inst", "abc"))
    other_install = machine(execution_id=None, name=machine_name("inst2", "abc"))

    assert execution_id_of(by_label, "inst") == "e1"
    assert execution_id_of(by_name, "inst") == "abc"
    assert execution_id_of(other_install, "inst") is None


async def test_reap_removes_leaked_machine(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend(fail_in="delete")
    engine = engine_for(settings, backend)
    try:
        failed = await engine.run(request())
        name = failed.resource_name
        listed_before = set(backend.machines)
        report = await engine.reap()
        after = engine.get(failed.id)
        again = await engine.reap(dry_run=True)
    finally:
        await engine.aclose()

    assert failed.state is State.FAILED
    assert failed.error_type == "backend_error"
    assert failed.failed_state == "deleting"
    assert failed.leaked is True
    assert listed_before == {name}
    assert [(row.machine, row.action) for row in report.rows] == [
        (name, ReapAction.DELETE)
    ]
    assert report.rows[0].outcome == "done"
    assert backend.machines == {}
    assert after.leaked is False
    assert after.state is State.FAILED
    assert again.rows == []
    assert report.as_dict()["rows"][0]["action"] == "delete"


async def test_reap_decides_each_machine(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend(agent_seconds=30)
    live = engine_for(settings, backend)
    try:
        resumable = await crash_at(settings, backend, request(), "booting")
        blocked = await crash_at(settings, backend, request(timeout=0.1), "booting")
        unstarted = await crash_at(settings, backend, request(), "requested")
        live_id = await live.submit(request())
        backend.machines["eng-stray"] = Resource(
            "instant", "eng-stray", live.install_id, "0000000000000000"
        )
        backend.machines["eng-other"] = Resource(
            "instant", "eng-other", "another-install", "1111111111111111"
        )
        await asyncio.sleep(0.2)
        plan = await live.reap(dry_run=True)
        machines_after_plan = set(backend.machines)
        report = await live.reap()
    finally:
        await live.aclose()

    planned = {row.execution_id: row.action for row in plan.rows}
    outcome = {row.execution_id: row.outcome for row in report.rows}
    assert planned[resumable] is ReapAction.KEEP
    assert planned[unstarted] is ReapAction.KEEP
    assert planned[blocked] is ReapAction.FAIL_RUN
    assert planned["0000000000000000"] is ReapAction.DELETE
    assert "1111111111111111" not in planned
    assert live_id not in planned
    assert machines_after_plan == set(backend.machines) | {
        machine_name(live.install_id, blocked),
        "eng-stray",
    }
    assert outcome[blocked] == "done: run ended failed (timeout)"
    assert outcome["0000000000000000"] == "done"
    assert machine_name(live.install_id, resumable) in backend.machines
    assert "eng-other" in backend.machines
    assert "eng-stray" not in backend.machines


async def test_reap_queries_in_bulk(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    engine = engine_for(settings, backend)
    statements: list[str] = []
    try:
        finished = [await engine.run(request()) for _ in range(30)]
        for index in range(1200):
            run = finished[index % len(finished)]
            execution_id = run.id if index < len(finished) else f"{index:016x}"
            name = machine_name(engine.install_id, execution_id)
            backend.machines[name] = Resource(
                "instant", name, engine.install_id, execution_id
            )
        event.listen(
            engine.store.db,
            "before_cursor_execute",
            lambda *args: statements.append(args[2]),
        )
        report = await engine.reap(dry_run=True)
    finally:
        await engine.aclose()

    selects = [
        text for text in statements if text.lstrip().upper().startswith("SELECT")
    ]
    assert len(report.rows) == 1200
    assert {row.action for row in report.rows} == {ReapAction.DELETE}
    # 1200 ids in chunks of 500, plus the unfinished and leaked runs.
    assert len(selects) <= 6


async def test_reap_fails_run_without_machine(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    engine = engine_for(settings, backend)
    try:
        lost = await crash_at(settings, backend, request(), "executing")
        waiting = await crash_at(settings, backend, request(), "requested")
        backend.machines.clear()
        report = await engine.reap()
        final = engine.get(lost)
        untouched = engine.get(waiting)
    finally:
        await engine.aclose()

    rows = {row.execution_id: row for row in report.rows}
    assert rows[lost].action is ReapAction.FAIL_RUN
    assert "machine_lost" in rows[lost].reason
    assert rows[lost].outcome == "done: run ended failed (machine_lost)"
    assert final.state is State.FAILED
    assert final.failed_state == "executing"
    assert rows[waiting].action is ReapAction.KEEP
    assert untouched.state is State.REQUESTED
    assert untouched.attempt == 1
