"""Agent runtimes: argv, stdin from the prompt file, and parsing of real CLI output.

The samples in tests/data/nanoclaw were recorded from Claude Code 2.1.332, Codex
0.171.0 and OpenCode 1.18.33 in the image that scripts/build-agent-image.sh builds,
run with `--network none`, as tests/data/nanoclaw/README.md describes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.nanoclaw import agent_output, runtimes
from engine.nanoclaw.agent_output import AgentEvent, ErrorKind, EventKind
from engine.nanoclaw.runtimes import (
    RUNTIMES,
    AgentRuntime,
    ClaudeRuntime,
    CodexRuntime,
    CommandRuntime,
    OpenCodeRuntime,
    OutputParser,
    classify_error,
    to_container_output,
)

SAMPLES = Path(__file__).parent / "data" / "nanoclaw"

CLAUDE_SESSION = "6eca5efa-de06-4e2d-8209-f58e1e1f7193"
CODEX_THREAD = "01a241e1-73f5-7ed1-b83e-4668f7717a2b"
OPENCODE_SESSION = "ses_dbe1eee2effeOzN0X862puIwtb"
STALE_ID = "0f8e2a4c-1b7d-4c55-9a0e-2f3b4c5d6e7f"


def sample(name: str) -> tuple[str, str]:
    stdout = (SAMPLES / f"{name}.stdout").read_text()
    stderr_path = SAMPLES / f"{name}.stderr"
    stderr = stderr_path.read_text() if stderr_path.exists() else ""
    return stdout, stderr


def run_sample(
    runtime: AgentRuntime, name: str, exit_code: int, chunk: int = 7
) -> tuple[OutputParser, list[AgentEvent]]:
    """Feed a recorded stdout in small chunks, as a pipe would deliver it."""
    stdout, stderr = sample(name)
    parser = runtime.parser()
    events: list[AgentEvent] = []
    for start in range(0, len(stdout), chunk):
        events += parser.feed(stdout[start : start + chunk])
    events += parser.finish(exit_code, stderr)
    return parser, events


def kinds(events: list[AgentEvent]) -> list[EventKind]:
    return [event.kind for event in events]


@pytest.mark.parametrize(
    ("runtime", "name", "session_id"),
    [
        (ClaudeRuntime(), "claude-ok", CLAUDE_SESSION),
        (ClaudeRuntime(), "claude-resumed", CLAUDE_SESSION),
        (CodexRuntime(), "codex-ok", CODEX_THREAD),
        (CodexRuntime(), "codex-resumed", CODEX_THREAD),
        (OpenCodeRuntime(), "opencode-ok", OPENCODE_SESSION),
        (OpenCodeRuntime(), "opencode-resumed", OPENCODE_SESSION),
    ],
)
def test_sample_success_gives_session_and_result(
    runtime: AgentRuntime, name: str, session_id: str
) -> None:
    parser, events = run_sample(runtime, name, exit_code=0)
    assert kinds(events) == [EventKind.SESSION, EventKind.RESULT]
    assert events[0].session_id == session_id
    assert events[1].text == "pong"
    assert parser.session_id == session_id
    assert parser.stale_session is False


@pytest.mark.parametrize(
    ("runtime", "name", "exit_code", "error_kind", "message_part"),
    [
        (ClaudeRuntime(), "claude-no-key", 1, ErrorKind.AUTH, "Not logged in"),
        (ClaudeRuntime(), "claude-http401", 1, ErrorKind.AUTH, "HTTP 401"),
        (ClaudeRuntime(), "claude-no-network", 1, ErrorKind.NETWORK, "EAI_AGAIN"),
        (
            ClaudeRuntime(),
            "claude-no-network-retries0",
            1,
            ErrorKind.NETWORK,
            "Can't reach the API server",
        ),
        (ClaudeRuntime(), "claude-stale-session", 1, ErrorKind.STALE_SESSION, STALE_ID),
        (
            ClaudeRuntime(),
            "claude-json-stale-session",
            1,
            ErrorKind.STALE_SESSION,
            STALE_ID,
        ),
        (
            ClaudeRuntime(),
            "claude-as-root",
            1,
            ErrorKind.AGENT,
            "cannot be used with root",
        ),
        (CodexRuntime(), "codex-http401", 1, ErrorKind.AUTH, "401 Unauthorized"),
        (CodexRuntime(), "codex-no-network", 124, ErrorKind.NETWORK, "waiting for"),
        (CodexRuntime(), "codex-stale-session", 1, ErrorKind.STALE_SESSION, STALE_ID),
        (OpenCodeRuntime(), "opencode-http401", 1, ErrorKind.AUTH, "invalid x-api-key"),
        (
            OpenCodeRuntime(),
            "opencode-no-network",
            1,
            ErrorKind.NETWORK,
            "Cannot connect to API",
        ),
        (
            OpenCodeRuntime(),
            "opencode-stale-session",
            1,
            ErrorKind.STALE_SESSION,
            "Session not found",
        ),
    ],
)
def test_sample_failure_gives_one_classified_error(
    runtime: AgentRuntime,
    name: str,
    exit_code: int,
    error_kind: ErrorKind,
    message_part: str,
) -> None:
    parser, events = run_sample(runtime, name, exit_code)
    errors = [event for event in events if event.kind is EventKind.ERROR]
    assert len(errors) == 1, events
    assert errors[0].error_kind is error_kind
    assert message_part in (errors[0].text or "")
    assert EventKind.RESULT not in kinds(events)
    assert parser.stale_session is (error_kind is ErrorKind.STALE_SESSION)


def test_claude_stale_session_id_not_reported() -> None:
    parser, events = run_sample(ClaudeRuntime(), "claude-stale-session", 1)
    assert parser.session_id is None
    assert EventKind.SESSION not in kinds(events)


def first_error_line(runtime: AgentRuntime, name: str) -> int:
    stdout, _ = sample(name)
    parser = runtime.parser()
    for number, line in enumerate(stdout.splitlines(), start=1):
        if any(e.kind is EventKind.ERROR for e in parser.feed_line(line)):
            return number
    raise AssertionError(f"{name}: no error before the process exit")


def test_claude_rejected_key_reported_at_first_retry() -> None:
    # Claude Code retries the 401 ten times (lines 2-11) before its result line.
    assert first_error_line(ClaudeRuntime(), "claude-http401") == 2


def test_codex_network_wait_reported_before_exit() -> None:
    # Codex 0.171 waits for the network without limit; the sample ends where
    # `timeout` killed it. The error must come from the first "waiting" line.
    stdout, _ = sample("codex-no-network")
    waiting = next(
        number
        for number, line in enumerate(stdout.splitlines(), start=1)
        if "waiting for network" in line
    )
    assert first_error_line(CodexRuntime(), "codex-no-network") == waiting


def test_claude_later_errors_kept_not_emitted() -> None:
    parser, events = run_sample(ClaudeRuntime(), "claude-http401", 1)
    assert len([e for e in events if e.kind is EventKind.ERROR]) == 1
    assert len(parser.errors) == 2
    assert "Invalid API key" in (parser.errors[1].text or "")


def test_codex_retry_messages_alone_are_not_errors() -> None:
    parser = CodexRuntime().parser()
    line = '{"type":"error","message":"Reconnecting... 2/5 (stream disconnected)"}'
    assert parser.feed_line(line) == []


def test_codex_error_item_is_not_a_result() -> None:
    parser = CodexRuntime().parser()
    stdout, _ = sample("codex-ok")
    events = [event for line in stdout.splitlines() for event in parser.feed_line(line)]
    assert [e.text for e in events if e.kind is EventKind.RESULT] == ["pong"]


def test_codex_turn_without_message_gives_null_result() -> None:
    parser = CodexRuntime().parser()
    parser.feed_line('{"type":"thread.started","thread_id":"t-1"}')
    events = parser.feed_line('{"type":"turn.completed","usage":{}}')
    assert events == [AgentEvent.result(None)]


def test_opencode_tool_step_does_not_end_result() -> None:
    parser = OpenCodeRuntime().parser()
    lines = [
        '{"type":"step_start","sessionID":"ses_1","part":{}}',
        '{"type":"text","sessionID":"ses_1","part":{"text":"Let me look."}}',
        '{"type":"step_finish","sessionID":"ses_1","part":{"reason":"tool-calls"}}',
        '{"type":"step_start","sessionID":"ses_1","part":{}}',
        '{"type":"text","sessionID":"ses_1","part":{"text":"Done."}}',
        '{"type":"step_finish","sessionID":"ses_1","part":{"reason":"stop"}}',
    ]
    events = [event for line in lines for event in parser.feed_line(line)]
    assert events == [AgentEvent.session("ses_1"), AgentEvent.result("Done.")]


def test_opencode_text_without_step_finish_is_result_at_exit() -> None:
    parser = OpenCodeRuntime().parser()
    parser.feed_line('{"type":"text","sessionID":"ses_1","part":{"text":"partial"}}')
    assert parser.finish(0) == [AgentEvent.result("partial")]


def test_parser_waits_for_line_end() -> None:
    stdout, _ = sample("claude-ok")
    result_line = stdout.splitlines()[-1]
    parser = ClaudeRuntime().parser()
    assert parser.feed(result_line) == []
    events = parser.feed("\n")
    assert kinds(events) == [EventKind.SESSION, EventKind.RESULT]


def test_parser_last_line_without_newline_read_at_finish() -> None:
    stdout, _ = sample("codex-ok")
    parser = CodexRuntime().parser()
    events = parser.feed(stdout.rstrip("\n"))
    assert kinds(events) == [EventKind.SESSION]
    assert kinds(parser.finish(0)) == [EventKind.RESULT]


def test_parser_overlong_line_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_output, "MAX_LINE_CHARS", 100)
    parser = ClaudeRuntime().parser()
    events = parser.feed("x" * 150)
    assert kinds(events) == [EventKind.ERROR]
    assert "longer than 100 characters" in (events[0].text or "")


def test_parser_ignores_non_json_lines() -> None:
    parser = ClaudeRuntime().parser()
    assert parser.feed_line("Warning: something unrelated") == []
    assert parser.feed_line("[1, 2]") == []


def test_exit_without_output_is_an_error() -> None:
    events = ClaudeRuntime().parser().finish(137, "Killed\n")
    assert events == [
        AgentEvent.error("claude exited with code 137 without a result: Killed")
    ]


def test_opencode_stale_message_without_colours() -> None:
    _, events = run_sample(OpenCodeRuntime(), "opencode-stale-session", 1)
    assert events == [
        AgentEvent.error("Error: Session not found", ErrorKind.STALE_SESSION)
    ]


def test_exit_without_output_classifies_stderr() -> None:
    events = OpenCodeRuntime().parser().finish(1, "Error: Invalid API key\n")
    assert events[0].error_kind is ErrorKind.AUTH


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Invalid API key · Fix external API key", ErrorKind.AUTH),
        ("Not logged in · Please run /login", ErrorKind.AUTH),
        ("unexpected status 401 Unauthorized: Incorrect API key", ErrorKind.AUTH),
        ("Can't reach the API server (EAI_AGAIN)", ErrorKind.NETWORK),
        ("Cannot connect to API: Unable to connect.", ErrorKind.NETWORK),
        ("Reconnecting... waiting for network", ErrorKind.NETWORK),
        ("Tool Bash failed: exit code 2", ErrorKind.AGENT),
        ("port 4010 is busy", ErrorKind.AGENT),
    ],
)
def test_classify_error_messages(message: str, expected: ErrorKind) -> None:
    assert classify_error(message) is expected


def test_claude_argv_reads_stdin() -> None:
    assert ClaudeRuntime().argv() == [
        "claude",
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
    ]


def test_claude_argv_resume_and_model() -> None:
    argv = ClaudeRuntime(model="sonnet", skip_permissions=False).argv("sess-1")
    assert argv[-4:] == ["--model", "sonnet", "--resume", "sess-1"]
    assert "--dangerously-skip-permissions" not in argv


def test_codex_argv_new_and_resume() -> None:
    assert CodexRuntime().argv() == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        "-",
    ]
    assert CodexRuntime(bypass_sandbox=False).argv("t-1")[-3:] == ["resume", "t-1", "-"]


def test_opencode_argv_new_and_resume() -> None:
    assert OpenCodeRuntime().argv() == ["opencode", "run", "--format", "json", "--auto"]
    runtime = OpenCodeRuntime(model="anthropic/claude-sonnet-4-5", auto_approve=False)
    argv = runtime.argv("ses_1")
    assert argv[4:] == ["--model", "anthropic/claude-sonnet-4-5", "--session", "ses_1"]


def test_runtimes_registry_names() -> None:
    assert {name: cls.name for name, cls in RUNTIMES.items()} == {
        "claude": "claude",
        "codex": "codex",
        "opencode": "opencode",
        "command": "command",
    }


HOSTILE_PROMPT = "$(touch pwned) `touch pwned2`; rm -rf / \"'\n--help\n"


def run_command(
    command: runtimes.AgentCommand, cwd: Path
) -> subprocess.CompletedProcess:
    return subprocess.run(
        command.shell_argv(), cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_shell_argv_feeds_prompt_file_as_data(tmp_path: Path) -> None:
    prompt_file = tmp_path / "-prompt file.txt"
    prompt_file.write_text(HOSTILE_PROMPT)
    runtime = CommandRuntime(command_argv=("cat",))
    completed = run_command(runtime.command(str(prompt_file)), tmp_path)
    assert completed.returncode == 0
    assert completed.stdout == HOSTILE_PROMPT
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


def test_prompt_never_in_argv(tmp_path: Path) -> None:
    for runtime in (ClaudeRuntime(), CodexRuntime(), OpenCodeRuntime()):
        command = runtime.command("/run/prompt.txt", "sess-1")
        assert command.prompt_file == "/run/prompt.txt"
        assert "/run/prompt.txt" not in command.argv
        assert command.shell_argv()[3:5] == ["sh", "/run/prompt.txt"]


def test_command_runtime_result_is_whole_stdout(tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("hello\n\nworld\n")
    runtime = CommandRuntime(command_argv=("tr", "a-z", "A-Z"))
    completed = run_command(runtime.command(str(prompt_file)), tmp_path)
    parser = runtime.parser()
    events = parser.feed(completed.stdout)
    events += parser.finish(completed.returncode, completed.stderr)
    assert events == [AgentEvent.result("HELLO\n\nWORLD")]


def test_command_runtime_failure_quotes_stderr(tmp_path: Path) -> None:
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("x")
    runtime = CommandRuntime(
        command_argv=("sh", "-c", "echo out; echo bad >&2; exit 3")
    )
    completed = run_command(runtime.command(str(prompt_file)), tmp_path)
    parser = runtime.parser()
    events = parser.feed(completed.stdout) + parser.finish(
        completed.returncode, completed.stderr
    )
    assert events == [
        AgentEvent.error("command exited with code 3 without a result: bad")
    ]


def test_command_runtime_empty_stdout_is_null_result() -> None:
    parser = CommandRuntime(command_argv=("true",)).parser()
    assert parser.finish(0) == [AgentEvent.result(None)]


def test_command_runtime_output_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "MAX_COMMAND_OUTPUT_CHARS", 10)
    parser = CommandRuntime(command_argv=("cat",)).parser()
    parser.feed("0123456789abc")
    events = parser.finish(0)
    assert kinds(events) == [EventKind.ERROR]
    assert "over the limit of 10" in (events[0].text or "")


def test_command_runtime_ignores_session() -> None:
    runtime = CommandRuntime(command_argv=("cat",))
    assert runtime.argv("sess-1") == ["cat"]
    assert runtime.supports_sessions is False


@pytest.mark.parametrize("argv", [(), ("cat", 5)])
def test_command_runtime_needs_string_argv(argv: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match="non-empty argv"):
        CommandRuntime(command_argv=argv)  # type: ignore[arg-type]


def test_to_container_output_maps_events() -> None:
    success = to_container_output(AgentEvent.result("hi"), "s-1")
    assert success.to_wire() == {
        "status": "success",
        "result": "hi",
        "newSessionId": "s-1",
    }
    failure = to_container_output(AgentEvent.error("boom", ErrorKind.AUTH), None)
    assert failure.to_wire() == {"status": "error", "result": None, "error": "boom"}
    with pytest.raises(ValueError, match="RESULT or ERROR"):
        to_container_output(AgentEvent.session("s-1"), "s-1")
