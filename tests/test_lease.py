"""Leases: when a lease may be claimed, and fencing of the worker that lost it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest

from backends.instant import InstantBackend
from engine import lease
from engine.exceptions import LeaseHeldError, LeaseLostError
from engine.records import ClaimBasis, LeaseRecord
from engine.states import State
from engine.store import Store, utcnow
from tests.helpers import request, settings_for
from tests.recovery_helpers import (
    CrashingBackend,
    crash_at,
    dead_worker,
    engine_for,
    fresh_postgres_database,
    instant_settings,
    remote_worker,
)

NOW = utcnow()


def lease_record(**changes) -> LeaseRecord:
    values = {
        "execution_id": "e1",
        "state": State.BOOTING,
        "owner": "host:10:20",
        "expires_at": NOW + timedelta(seconds=30),
        "token": 3,
    }
    values.update(changes)
    return LeaseRecord(**values)


@pytest.mark.parametrize(
    ("changes", "alive", "expected"),
    [
        ({}, True, None),
        ({}, None, None),
        ({}, False, ClaimBasis.OWNER_GONE),
        ({"owner": None}, True, ClaimBasis.NO_OWNER),
        ({"expires_at": NOW - timedelta(seconds=1)}, True, ClaimBasis.EXPIRED),
        ({"expires_at": None}, True, ClaimBasis.EXPIRED),
        ({"state": State.DONE, "owner": None}, False, None),
        ({"state": State.FAILED}, False, None),
        ({"owner": "not-a-worker-id"}, False, None),
    ],
)
def test_claim_basis_cases(changes, alive, expected):
    basis = lease.claim_basis(lease_record(**changes), NOW, lambda _worker: alive)

    assert basis is expected


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'engine.db'}"
        return
    server_url = request.getfixturevalue("postgres_url")
    with fresh_postgres_database(server_url) as url:
        yield url


async def test_only_one_claim_wins(tmp_path, database_url):
    settings = settings_for(
        tmp_path, engine_database_url=database_url, container_runtime="instant"
    )
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "booting")
    store = Store(database_url)
    try:
        seen = store.get_lease(execution_id)
        first = store.claim_execution(
            seen, ClaimBasis.OWNER_GONE, "worker-a", 30, now=utcnow()
        )
        second = store.claim_execution(
            seen, ClaimBasis.OWNER_GONE, "worker-b", 30, now=utcnow()
        )
        after = store.get_execution(execution_id)
    finally:
        store.close()

    assert first is True
    assert second is False
    assert after.owner == "worker-a"
    assert after.lease_token == seen.token + 1
    assert after.attempt == 2


async def test_renewal_beats_expiry_claim(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    execution_id = await crash_at(settings, backend, request(), "cloning")
    store = Store(settings.database_url)
    try:
        owner = store.get_lease(execution_id).owner
        assert owner is not None
        # Seen expired, then renewed by its owner before the claim lands.
        seen = lease_record(
            execution_id=execution_id,
            owner=owner,
            expires_at=utcnow() - timedelta(seconds=5),
            token=1,
        )
        lost = store.renew_leases(owner, {execution_id: 1}, 30)
        claimed = store.claim_execution(
            seen, ClaimBasis.EXPIRED, "thief", 30, now=utcnow()
        )
    finally:
        store.close()

    assert lost == set()
    assert claimed is False


async def test_live_owner_lease_is_held(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    owner = engine_for(settings, backend)
    execution_id = await owner.submit(request())
    other = engine_for(settings, backend, remote_worker("other"))
    try:
        with pytest.raises(LeaseHeldError) as caught:
            await other.resume(execution_id)
    finally:
        await other.aclose()
        await owner.aclose()

    assert caught.value.execution_id == execution_id
    assert caught.value.owner == owner.worker
    assert execution_id in str(caught.value)


async def test_taken_over_worker_cannot_write(tmp_path, database_url):
    settings = settings_for(
        tmp_path,
        engine_database_url=database_url,
        container_runtime="instant",
        engine_lease_seconds=1,
    )
    backend = InstantBackend(delay=0.4)
    first = engine_for(settings, backend, remote_worker("first"))
    second = engine_for(settings, backend, remote_worker("second"))
    try:
        execution_id = await first.submit(request())
        first_drive = asyncio.create_task(first.drive(execution_id, request()))
        while first.get(execution_id).state is State.REQUESTED:
            await asyncio.sleep(0.05)
        # The first worker stalls: its heartbeat stops, so its lease expires.
        assert first._heartbeat is not None
        first._heartbeat.cancel()
        await asyncio.sleep(1.5)

        final = await second.resume(execution_id)
        left_behind = await first_drive
        with pytest.raises(LeaseLostError):
            first.store.update_execution(execution_id, 1, exit_code=99)
    finally:
        await first.aclose()
        await second.aclose()

    rows = final.transitions
    first_rows = [row for row in rows if row.worker == first.worker]
    second_rows = [row for row in rows if row.worker == second.worker]
    assert final.state is State.DONE
    assert final.attempt == 2
    assert final.exit_code == 0
    assert left_behind.id == execution_id
    assert first_rows
    assert second_rows
    assert {row.attempt for row in first_rows} == {1}
    assert {row.attempt for row in second_rows} == {2}
    assert max(r.seq for r in first_rows) < min(r.seq for r in second_rows)
    assert len(first_rows) + len(second_rows) == len(rows)


async def test_concurrent_claimers_split_runs(tmp_path, database_url):
    settings = settings_for(
        tmp_path, engine_database_url=database_url, container_runtime="instant"
    )
    backend = CrashingBackend()
    crashed = [
        await crash_at(settings, backend, request(), "booting") for _ in range(8)
    ]
    claims: dict[str, list[str]] = {"a": [], "b": []}

    def claim_all(name: str) -> None:
        store = Store(database_url)
        try:
            while True:
                claimed = lease.claim_next(store, f"worker-{name}", 30)
                if claimed is None:
                    return
                claims[name].append(claimed)
        finally:
            store.close()

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in claims]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    claimed = claims["a"] + claims["b"]
    assert sorted(claimed) == sorted(crashed)
    assert len(set(claimed)) == len(claimed)


async def test_claim_next_skips_live_and_ended(tmp_path):
    settings = instant_settings(tmp_path)
    backend = CrashingBackend()
    crashed = await crash_at(settings, backend, request(), "uploading")
    live = engine_for(settings, backend)
    try:
        await live.submit(request())
        finished = await live.run(request())
        claimed = lease.claim_next(live.store, "worker-x", 30)
        again = lease.claim_next(live.store, "worker-x", 30)
    finally:
        await live.aclose()

    assert finished.state is State.DONE
    assert claimed == crashed
    assert again is None


def test_dead_worker_is_not_alive():
    assert lease.owner_alive(str(dead_worker())) is False
    assert lease.owner_alive(str(remote_worker("x"))) is None
    assert lease.owner_alive(None) is None
