"""The store: fencing by lease token, the hash chain, and reads."""

from __future__ import annotations

import pytest

from engine.exceptions import ExecutionNotFoundError, LeaseLostError
from engine.store import Store, utcnow
from engine.store.chain import GENESIS, transition_hash
from tests.helpers import instant_engine, request


async def test_stale_token_cannot_write(tmp_path):
    async with instant_engine(tmp_path) as engine:
        execution_id = await engine.submit(request())
        store = engine.store
        with pytest.raises(LeaseLostError) as caught:
            store.update_execution(execution_id, 99, error_message="late write")
        record = store.get_execution(execution_id)
    assert caught.value.execution_id == execution_id
    assert record.error_message is None


async def test_hash_chain_links_every_row(tmp_path):
    async with instant_engine(tmp_path) as engine:
        record = await engine.run(request())
    previous = GENESIS
    for row in record.transitions:
        expected = transition_hash(
            previous,
            execution_id=row.execution_id,
            seq=row.seq,
            from_state=row.from_state,
            to_state=row.to_state,
            trigger=row.trigger,
            at=row.at,
            duration=row.duration,
            attempt=row.attempt,
            worker=row.worker,
            details=row.details,
            span_id=row.span_id,
        )
        assert row.hash == expected, row.seq
        previous = row.hash


def test_unknown_execution_raises(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with pytest.raises(ExecutionNotFoundError) as caught:
            store.get_execution("nope")
    finally:
        store.close()
    assert "nope" in str(caught.value)


@pytest.mark.postgres
async def test_postgres_store_runs_an_execution(tmp_path, postgres_url):
    store = Store(postgres_url)
    async with instant_engine(tmp_path, engine_database_url=postgres_url) as engine:
        record = await engine.run(request())
    try:
        stored = store.get_execution(record.id, with_transitions=True)
    finally:
        store.close()
    assert stored.state.value == "done"
    assert len(stored.transitions) == 9
    assert stored.created_at <= utcnow()
