"""NanoClawSession on the instant backend: framing, idle stop and stale-session retry.

The instant backend starts no machine and hands over a fixed agent output, so
these tests cover the session logic alone. tests/test_nanoclaw_cli.py runs the
same paths on Docker.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from backends.instant import InstantBackend
from engine.engine import Engine
from engine.nanoclaw.invocation import InvocationOptions, build_invocation
from engine.nanoclaw.protocol import ContainerInput, iter_framed_outputs
from engine.nanoclaw.session import (
    EXIT_AGENT_ERROR,
    EXIT_ENGINE_FAILED,
    EXIT_SUCCESS,
    FrameWriter,
    NanoClawSession,
)
from engine.states import State
from tests.helpers import settings_for

SAMPLES = Path(__file__).parent / "data" / "nanoclaw"
CLAUDE_SESSION = "6eca5efa-de06-4e2d-8209-f58e1e1f7193"
STALE_ID = "0f8e2a4c-1b7d-4c55-9a0e-2f3b4c5d6e7f"


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return tmp_path


async def run_session(
    tmp_path: Path,
    backend: InstantBackend,
    *,
    session_id: str | None = None,
    **settings: object,
) -> tuple[int, list, NanoClawSession]:
    data: dict[str, object] = {
        "prompt": "Reply with the single word: pong",
        "groupFolder": "main",
        "chatJid": "c",
        "isMain": True,
    }
    if session_id is not None:
        data["sessionId"] = session_id
    config = settings_for(tmp_path, container_runtime="instant", **settings)
    invocation = build_invocation(
        ContainerInput.model_validate(data), InvocationOptions(runtime="claude"), config
    )
    stdout = io.BytesIO()
    session = NanoClawSession(invocation, FrameWriter(stdout), stderr=io.BytesIO())
    async with Engine(
        config, backends={"instant": backend}, observers=[session.observer]
    ) as engine:
        code = await session.run(engine)
    frames = list(iter_framed_outputs(stdout.getvalue().decode("ascii")))
    return code, frames, session


async def test_claude_sample_gives_one_result(tmp_path: Path) -> None:
    backend = InstantBackend(output=(SAMPLES / "claude-ok.stdout").read_bytes())
    code, frames, session = await run_session(tmp_path, backend)
    assert code == EXIT_SUCCESS
    assert [f.to_wire() for f in frames] == [
        {"status": "success", "result": "pong", "newSessionId": CLAUDE_SESSION}
    ]
    assert session.records[0].state is State.DONE


async def test_error_result_exits_one(tmp_path: Path) -> None:
    backend = InstantBackend(
        output=(SAMPLES / "claude-no-key.stdout").read_bytes(), exit_code=1
    )
    code, frames, _ = await run_session(tmp_path, backend)
    assert code == EXIT_AGENT_ERROR
    assert len(frames) == 1
    assert frames[0].status == "error"
    assert "Not logged in" in (frames[0].error or "")


async def test_stale_session_retried_once(tmp_path: Path) -> None:
    # The instant agent prints the same stale-session error every time, so
    # the retry fails too and is reported, marked as a new session.
    backend = InstantBackend(
        output=(SAMPLES / "claude-stale-session.stdout").read_bytes(), exit_code=1
    )
    code, frames, session = await run_session(tmp_path, backend, session_id=STALE_ID)
    assert len(session.records) == 2
    assert code == EXIT_AGENT_ERROR
    assert len(frames) == 1
    assert frames[0].status == "error"
    assert frames[0].session_reset is True
    assert "No conversation found" in (frames[0].error or "")


async def test_no_retry_without_session_id(tmp_path: Path) -> None:
    backend = InstantBackend(
        output=(SAMPLES / "claude-stale-session.stdout").read_bytes(), exit_code=1
    )
    _, frames, session = await run_session(tmp_path, backend)
    assert len(session.records) == 1
    assert frames[0].session_reset is False


async def test_idle_agent_stopped(tmp_path: Path) -> None:
    backend = InstantBackend(agent_seconds=30)
    started = time.monotonic()
    code, frames, session = await run_session(
        tmp_path, backend, nanoclaw_idle_timeout=0.5
    )
    assert time.monotonic() - started < 10
    assert code == EXIT_AGENT_ERROR
    record = session.records[0]
    assert record.state is State.FAILED
    assert record.error_type == "idle_timeout"
    assert record.failed_state == "executing"
    assert len(frames) == 1
    assert "no output for 0.5 s" in (frames[0].error or "")


async def test_hard_timeout_reported(tmp_path: Path) -> None:
    backend = InstantBackend(agent_seconds=30)
    code, frames, session = await run_session(tmp_path, backend, nanoclaw_timeout=0.5)
    assert code == EXIT_AGENT_ERROR
    assert session.records[0].error_type == "timeout"
    assert "did not finish within 0.5 s" in (frames[0].error or "")


async def test_backend_failure_exits_125(tmp_path: Path) -> None:
    backend = InstantBackend(fail_in="upload")
    code, frames, session = await run_session(tmp_path, backend)
    assert code == EXIT_ENGINE_FAILED
    assert session.records[0].failed_state == "uploading"
    assert "upload failed as configured" in (frames[0].error or "")
    assert session.records[0].id in (frames[0].error or "")
