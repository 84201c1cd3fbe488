"""The runner on the instant backend: every path through the state table."""

from __future__ import annotations

import asyncio

import pytest

from backends.instant import InstantBackend
from engine.observers import RunObserver
from engine.states import State
from tests.helpers import instant_engine, request

HAPPY_PATH = [
    "requested",
    "cloning",
    "booting",
    "ip-ready",
    "uploading",
    "executing",
    "collecting",
    "deleting",
    "done",
]

# Backend method that fails -> the state the run fails in.
FAILURES = {
    "create": "cloning",
    "start": "booting",
    "wait_ready": "ip-ready",
    "upload": "uploading",
    "start_agent": "executing",
    "collect": "collecting",
}


async def test_happy_path_records_nine_transitions(tmp_path):
    async with instant_engine(tmp_path) as engine:
        record = await engine.run(request("echo", "hi"))
    assert record.state is State.DONE
    assert [row.to_state for row in record.transitions] == HAPPY_PATH
    assert [row.seq for row in record.transitions] == list(range(1, 10))
    assert record.transitions[0].duration is None
    assert all(row.duration >= 0 for row in record.transitions[1:])
    assert record.finished_at is not None
    assert record.exit_code == 0


async def test_transition_times_are_ordered(tmp_path):
    async with instant_engine(tmp_path) as engine:
        record = await engine.run(request())
    times = [row.at for row in record.transitions]
    assert times == sorted(times)


async def test_agent_exit_code_is_data(tmp_path):
    backend = InstantBackend(exit_code=3)
    async with instant_engine(tmp_path, backend) as engine:
        record = await engine.run(request("sh", "-c", "exit 3"))
    assert record.state is State.DONE
    assert record.exit_code == 3
    assert record.error_type is None


@pytest.mark.parametrize(("method", "failed_state"), sorted(FAILURES.items()))
async def test_failure_goes_through_deleting(tmp_path, method, failed_state):
    backend = InstantBackend(fail_in=method)
    async with instant_engine(tmp_path, backend) as engine:
        record = await engine.run(request())
    states = [row.to_state for row in record.transitions]
    assert record.state is State.FAILED
    assert record.failed_state == failed_state
    assert record.error_type == "backend_error"
    assert states[-2:] == ["deleting", "failed"]
    assert states[-3] == failed_state
    assert backend.machines == {}


async def test_failed_delete_marks_machine_leaked(tmp_path):
    backend = InstantBackend(fail_in="delete")
    async with instant_engine(tmp_path, backend) as engine:
        record = await engine.run(request())
    assert record.state is State.FAILED
    assert record.failed_state == "deleting"
    assert record.leaked is True
    assert record.transitions[-1].trigger == "delete_failed"
    assert record.exit_code == 0


async def test_step_timeout_fails_the_step(tmp_path):
    backend = InstantBackend(delay=0.5)
    async with instant_engine(tmp_path, backend, engine_step_timeout=0.1) as engine:
        record = await engine.run(request())
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "timeout"
    assert "0.1 s" in record.error_message


async def test_run_timeout_during_executing(tmp_path):
    backend = InstantBackend(agent_seconds=5)
    async with instant_engine(tmp_path, backend) as engine:
        record = await engine.run(request(timeout=0.3))
    assert record.state is State.FAILED
    assert record.failed_state == "executing"
    assert record.error_type == "timeout"
    assert backend.machines == {}


async def test_interrupt_cancels_through_deleting(tmp_path):
    backend = InstantBackend(agent_seconds=5)
    async with instant_engine(tmp_path, backend) as engine:
        task = asyncio.create_task(engine.run(request()))
        while not backend.started:
            await asyncio.sleep(0.01)
        engine.interrupt()
        record = await task
    assert record.state is State.FAILED
    assert record.error_type == "cancelled"
    assert record.failed_state == "executing"
    assert [row.to_state for row in record.transitions][-2:] == ["deleting", "failed"]


async def test_agent_output_reaches_observers(tmp_path):
    class Collector(RunObserver):
        def __init__(self):
            self.chunks = []

        def on_output(self, run, stream, data):
            self.chunks.append((stream, data))

    collector = Collector()
    backend = InstantBackend(output=b"hello\n")
    async with instant_engine(tmp_path, backend) as engine:
        engine.observers.append(collector)
        await engine.run(request())
    assert collector.chunks == [("stdout", b"hello\n")]


async def test_secrets_are_not_stored(tmp_path):
    async with instant_engine(tmp_path) as engine:
        record = await engine.run(request(secrets={"API_KEY": "s3cr3t-value"}))
    assert record.request["secret_names"] == ["API_KEY"]
    assert "s3cr3t-value" not in repr(record.as_dict())
    for path in tmp_path.glob("engine.db*"):
        assert b"s3cr3t-value" not in path.read_bytes(), path
