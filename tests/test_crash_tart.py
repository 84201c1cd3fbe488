"""Crash recovery on the Tart backend, against the tart simulator with real sshd.

Each crashed run is an `engine run` process that ENGINE_TEST_CRASH_IN makes kill
itself with SIGKILL at one point of the run; `tart run` lives in its own session
and keeps the VM up. `engine resume --all` then continues every run over a new
SSH connection that must present the host key pinned by the first attempt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from engine.faults import AGENT_STARTED
from engine.states import State
from engine.store import Store
from engine.tracing.spans import INTERRUPTED, build_spans

pytestmark = [pytest.mark.tart, pytest.mark.slow]

BIN_DIR = Path(__file__).parent / "tart" / "bin"
ENGINE = Path(sys.executable).with_name("engine")
PASSWORD = "crash-" + uuid.uuid4().hex[:8]
AGENT = "echo started >> output/count; sleep 2; echo out"
# Still runs when `engine resume` starts, so the resume reattaches over SSH.
LONG_AGENT = "echo started >> output/count; sleep 12; echo out"
NINE_STATES = [state.value for state in State if not state.is_terminal]
TIMEOUT = 240


@pytest.fixture
def tart_env(tmp_path):
    home = tmp_path / "tart-home"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ENGINE_", "CONTAINER_RUNTIME", "TART_"))
    }
    env.update(
        PATH=f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
        TART_HOME=str(home),
        TART_VM_PASSWORD=PASSWORD,
        TART_SSH_TIMEOUT="60",
        # Ten runs crash with their VMs up, so allow more than macOS's two.
        TART_SIM_VM_LIMIT="12",
        TART_MAX_VMS="12",
        ENGINE_DATA_DIR=str(tmp_path / "data"),
        CONTAINER_RUNTIME="tart",
        ENGINE_LEASE_SECONDS="3",
    )
    subprocess.run(
        [str(BIN_DIR / "tart-sim"), "create-base"],
        env=env,
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    yield env
    _stop_all_vms(env)


def _tart(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "tart"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _vms(env: dict[str, str]) -> list[dict[str, Any]]:
    return json.loads(_tart(env, "list", "--format", "json").stdout or "[]")


def _stop_all_vms(env: dict[str, str]) -> None:
    for vm in _vms(env):
        if vm["Running"]:
            _tart(env, "stop", vm["Name"])


def _engine(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENGINE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _runs_by_group(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    listed = _engine(env, "list", "--json", "--limit", "100")
    return {run["group"]: run for run in json.loads(listed.stdout)}


def _starts(run: dict[str, Any]) -> int:
    count = Path(run["run_dir"]) / "work" / "output" / "count"
    return len(count.read_text().splitlines()) if count.exists() else 0


def test_crash_in_every_state_on_tart(tart_env, capsys):
    assert _engine(tart_env, "db", "upgrade").returncode == 0
    rows = {point: (point, AGENT) for point in NINE_STATES}
    rows[AGENT_STARTED] = (AGENT_STARTED, LONG_AGENT)
    processes = {
        row: subprocess.Popen(
            [str(ENGINE), "run", "--group", row, "--", "sh", "-c", agent],
            env={**tart_env, "ENGINE_TEST_CRASH_IN": point},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for row, (point, agent) in rows.items()
    }
    killed = {}
    for row, process in processes.items():
        _, stderr = process.communicate(timeout=TIMEOUT)
        killed[row] = (process.returncode, stderr)
    crashed = _runs_by_group(tart_env)

    resumed = _engine(tart_env, "resume", "--all", "--json")
    final = _runs_by_group(tart_env)
    reap = json.loads(_engine(tart_env, "reap", "--dry-run", "--json").stdout)
    names = {vm["Name"] for vm in _vms(tart_env)}

    with capsys.disabled():
        print("\ncrash point     state at crash  final   exit  agent starts  VM left")
        for row in rows:
            run = final[row]
            print(
                f"{row:15} {crashed[row]['state']:15} {run['state']:7} "
                f"{run['exit_code']!s:5} {_starts(run):<13} "
                f"{run['resource_name'] in names}"
            )
    assert resumed.returncode == 0, resumed.stderr
    for row in rows:
        assert killed[row][0] == -signal.SIGKILL, (row, killed[row][1])
        expected = rows[row][0].replace(AGENT_STARTED, "executing")
        assert crashed[row]["state"] == expected, row
        assert final[row]["state"] == "done", (row, final[row]["error"])
        assert final[row]["exit_code"] == 0, row
        assert _starts(final[row]) == 1, row
        assert final[row]["resource_name"] not in names, row
    assert reap["rows"] == []


def test_resumed_trace_marks_interrupted_state(tart_env):
    process = subprocess.run(
        [str(ENGINE), "run", "--group", "traced", "--", "sh", "-c", LONG_AGENT],
        env={**tart_env, "ENGINE_TEST_CRASH_IN": AGENT_STARTED},
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    resumed = _engine(tart_env, "resume", "--all")
    run = _runs_by_group(tart_env)["traced"]
    store = Store(f"sqlite:///{tart_env['ENGINE_DATA_DIR']}/engine.db")
    try:
        record = store.get_execution(run["id"], with_transitions=True)
    finally:
        store.close()
    spans = build_spans(record)
    states = [span.name for span in spans if span.parent is not None]
    interrupted = [span for span in spans if span.attributes.get(INTERRUPTED)]
    linked = [span for span in spans if span.links]

    assert process.returncode == -signal.SIGKILL
    assert resumed.returncode == 0, resumed.stderr
    assert record.state is State.DONE
    assert set(NINE_STATES) <= set(states)
    assert [span.name for span in interrupted] == ["executing"]
    assert len(linked) == 1
    assert linked[0].links[0].context.span_id == interrupted[0].context.span_id
    assert len({span.context.trace_id for span in spans}) == 1
