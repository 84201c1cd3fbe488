"""The transition hash chain: `engine audit verify` and `engine.audit`."""

from __future__ import annotations

import dataclasses
import json

import pytest
import sqlalchemy

from backends.instant import InstantBackend
from engine.audit import recompute_hash, verify_chain, verify_store
from engine.store import Store
from engine.store.chain import GENESIS
from tests.helpers import instant_engine, request
from tests.support.cli import engine_env, run_engine
from tests.tracing_rows import chain_of, happy_steps


async def _runs(tmp_path, count=2, **settings):
    async with instant_engine(tmp_path, **settings) as engine:
        return [(await engine.run(request())).id for _ in range(count)]


def _execute(url: str, statement: str, **params) -> None:
    db = sqlalchemy.create_engine(url)
    try:
        with db.begin() as conn:
            result = conn.execute(sqlalchemy.text(statement), params)
            assert result.rowcount == 1
    finally:
        db.dispose()


def _reports(url: str, ids=None):
    store = Store(url)
    try:
        return list(verify_store(store, ids))
    finally:
        store.close()


def _sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'engine.db'}"


async def test_untouched_history_verifies(tmp_path):
    ids = await _runs(tmp_path, count=3)
    async with instant_engine(
        tmp_path, backend=InstantBackend(fail_in="upload")
    ) as engine:
        failed = await engine.run(request())

    reports = _reports(_sqlite_url(tmp_path))

    assert [report.execution_id for report in reports] == [*ids, failed.id]
    assert all(report.intact for report in reports)
    assert [report.rows for report in reports] == [9, 9, 9, len(failed.transitions)]
    assert reports[0].head_hash is not None


async def test_edited_row_is_named(tmp_path):
    ids = await _runs(tmp_path)
    _execute(
        _sqlite_url(tmp_path),
        "update transitions set trigger = 'tampered' where execution_id = :id "
        "and seq = 4",
        id=ids[1],
    )

    reports = _reports(_sqlite_url(tmp_path))

    assert reports[0].intact
    broken = reports[1].broken
    assert broken is not None
    assert broken.execution_id == ids[1]
    assert broken.seq == 4
    assert "does not match" in broken.reason


async def test_edited_time_is_named(tmp_path):
    [execution_id] = await _runs(tmp_path, count=1)
    store = Store(_sqlite_url(tmp_path))
    row = store.transitions(execution_id)[5]
    store.close()
    _execute(
        _sqlite_url(tmp_path),
        "update transitions set at = :at where execution_id = :id and seq = 6",
        at=row.at.replace(microsecond=(row.at.microsecond + 1) % 1_000_000),
        id=execution_id,
    )

    [report] = _reports(_sqlite_url(tmp_path))

    assert report.broken is not None
    assert report.broken.seq == 6


async def test_rehashed_edit_breaks_next_link(tmp_path):
    [execution_id] = await _runs(tmp_path, count=1)
    store = Store(_sqlite_url(tmp_path))
    rows = store.transitions(execution_id)
    store.close()
    forged = dataclasses.replace(rows[3], worker="someone-else")
    new_hash = recompute_hash(rows[2].hash, forged)
    _execute(
        _sqlite_url(tmp_path),
        "update transitions set worker = 'someone-else', hash = :hash "
        "where execution_id = :id and seq = 4",
        hash=new_hash,
        id=execution_id,
    )

    [report] = _reports(_sqlite_url(tmp_path))

    assert report.broken is not None
    assert report.broken.seq == 5


async def test_deleted_row_is_named(tmp_path):
    [execution_id] = await _runs(tmp_path, count=1)
    _execute(
        _sqlite_url(tmp_path),
        "delete from transitions where execution_id = :id and seq = 3",
        id=execution_id,
    )

    [report] = _reports(_sqlite_url(tmp_path))

    assert report.broken is not None
    assert report.broken.seq == 3
    assert "missing" in report.broken.reason


async def test_deleted_last_row_is_named(tmp_path):
    [execution_id] = await _runs(tmp_path, count=1)
    _execute(
        _sqlite_url(tmp_path),
        "delete from transitions where execution_id = :id and seq = 9",
        id=execution_id,
    )

    [report] = _reports(_sqlite_url(tmp_path))

    assert report.broken is not None
    assert report.broken.seq == 8
    assert "'done'" in report.broken.reason


def test_hand_written_resume_chain_verifies():
    rows = chain_of(happy_steps(attempt_from_seq=7)).rows

    report = verify_chain("exec0001", rows, state="done")

    assert report.intact
    assert report.head_hash == rows[-1].hash


def test_empty_chain_is_broken():
    report = verify_chain("exec0001", [])

    assert report.broken is not None
    assert report.broken.seq is None


def test_first_row_links_to_genesis():
    rows = chain_of(happy_steps()).rows

    assert recompute_hash(GENESIS, rows[0]) == rows[0].hash


@pytest.mark.postgres
async def test_postgres_chain_verifies_and_breaks(tmp_path, postgres_url):
    ids = await _runs(tmp_path, count=1, engine_database_url=postgres_url)
    assert _reports(postgres_url, ids)[0].intact

    _execute(
        postgres_url,
        "update transitions set details = '{\"x\": 1}' where execution_id = :id "
        "and seq = 2",
        id=ids[0],
    )
    [report] = _reports(postgres_url, ids)

    assert report.broken is not None
    assert report.broken.seq == 2


async def test_cli_verify_passes_then_names_row(tmp_path):
    ids = await _runs(tmp_path)
    env = engine_env(tmp_path)

    passed = run_engine(["audit", "verify"], env, cwd=tmp_path)
    assert passed.returncode == 0, passed.stderr
    assert "2 executions, 18 transitions checked" in passed.stdout
    assert "every chain is intact" in passed.stdout

    _execute(
        _sqlite_url(tmp_path),
        "update transitions set to_state = 'done' where execution_id = :id and seq = 7",
        id=ids[0],
    )
    broken = run_engine(["audit", "verify"], env, cwd=tmp_path)
    assert broken.returncode == 1
    assert f"execution {ids[0]}, seq 7" in broken.stdout
    assert "checked: 1 broken" in broken.stdout

    single = run_engine(["audit", "verify", ids[1][:8], "--json"], env, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    [report] = json.loads(single.stdout)
    assert report["execution_id"] == ids[1]
    assert report["intact"] is True
    assert report["rows"] == 9
