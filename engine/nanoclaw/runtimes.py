"""Agent runtimes: the command line of each agent CLI and a parser for its output.

Each runtime builds the argv that runs its CLI inside the machine with the prompt on
stdin, read from a prompt file and never from the command line. Its parser turns the
CLI's stdout into `AgentEvent`s (see `agent_output`). The output formats below were
checked against Claude Code 2.1.332, codex-cli 0.171.0 and OpenCode 1.18.33 as
installed by scripts/build-agent-image.sh; tests/data/nanoclaw has the recordings.

- Claude Code `claude -p --output-format stream-json --verbose`: one JSON object
  per line. `{"type":"system","subtype":"init","session_id":...}` comes first and
  `{"type":"result","is_error":...,"result":...,"session_id":...}` last.
- Codex `codex exec --json -`: JSONL events `thread.started` (`thread_id`),
  `item.completed` (item `type` "agent_message" with `text`), `turn.completed`,
  `turn.failed` (`error.message`) and `error` (`message`).
- OpenCode `opencode run --format json`: JSONL events with `type` "step_start",
  "text" (`part.text`), "tool_use", "step_finish" (`part.reason`) and "error", each
  with the `sessionID`.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.nanoclaw.agent_output import (
    AgentCommand,
    AgentEvent,
    ErrorKind,
    EventKind,
    OutputParser,
    classify_error,
    exit_error,
    load_json_object,
    tail,
)
from engine.nanoclaw.protocol import ContainerOutput

__all__ = [
    "RUNTIMES",
    "AgentCommand",
    "AgentEvent",
    "AgentRuntime",
    "ClaudeRuntime",
    "CodexRuntime",
    "CommandRuntime",
    "ErrorKind",
    "EventKind",
    "OpenCodeRuntime",
    "OutputParser",
    "classify_error",
    "to_container_output",
]

logger = logging.getLogger(__name__)

MAX_COMMAND_OUTPUT_CHARS = 10 * 1024 * 1024
"""Largest stdout of the `command` runtime (NanoClaw's own output limit, 10 MiB)."""


def to_container_output(event: AgentEvent, session_id: str | None) -> ContainerOutput:
    """Turn a RESULT or ERROR event into the output that NanoClaw reads.

    `session_id` is the latest session id the parser reported, if any.
    """
    if event.kind is EventKind.RESULT:
        return ContainerOutput(
            status="success", result=event.text, new_session_id=session_id
        )
    if event.kind is EventKind.ERROR:
        return ContainerOutput(
            status="error", result=None, new_session_id=session_id, error=event.text
        )
    raise ValueError(
        f"a {event.kind} event has no NanoClaw output; pass RESULT or ERROR"
    )


class AgentRuntime(ABC):
    """An agent CLI: how to start it and how to read its output."""

    name: ClassVar[str]
    supports_sessions: ClassVar[bool] = True

    @abstractmethod
    def argv(self, session_id: str | None = None) -> list[str]:
        """Return the CLI's argv; it reads the prompt from stdin."""

    @abstractmethod
    def parser(self) -> OutputParser:
        """Return a new parser for one run's stdout."""

    def command(self, prompt_file: str, session_id: str | None = None) -> AgentCommand:
        """Return the command that runs the agent with stdin from `prompt_file`."""
        return AgentCommand(tuple(self.argv(session_id)), prompt_file)


# --- Claude Code -----------------------------------------------------------------

_CLAUDE_STALE = re.compile(r"no conversation found with session id", re.IGNORECASE)


class ClaudeParser(OutputParser):
    name = "claude"

    def __init__(self) -> None:
        super().__init__()
        self._api_error: str | None = None

    def _parse_line(self, line: str) -> list[AgentEvent]:
        event = load_json_object(line)
        if event is None:
            return self._plain_line(line)
        events: list[AgentEvent] = []
        session_id = event.get("session_id")
        # The session id counts from the init message, or from a result without
        # an error. A failed resume echoes the unknown id in its result, and
        # that id must not be handed back to NanoClaw.
        starts = event.get("type") == "system" and event.get("subtype") == "init"
        succeeds = event.get("type") == "result" and not event.get("is_error")
        if isinstance(session_id, str) and session_id and (starts or succeeds):
            events.append(AgentEvent.session(session_id))
        if event.get("type") == "system" and event.get("subtype") == "api_retry":
            retry_error = self._retry_error(event)
            if retry_error is not None:
                events.append(retry_error)
        elif event.get("type") == "assistant" and event.get("is_api_error_message"):
            # A synthetic message that carries the failure class, e.g.
            # "authentication_failed" while its text is "Not logged in".
            self._api_error = str(event.get("error") or "")
        elif event.get("type") == "result":
            events.append(self._result(event))
        return events

    def _retry_error(self, event: dict[str, Any]) -> AgentEvent | None:
        # Claude Code 2.1.332 retries a rejected key 10 times, about three minutes.
        # A retry cannot fix a bad key, so the first retry is reported.
        status = event.get("error_status")
        if self.errors:
            return None
        if status in (401, 403) or event.get("error") == "authentication_failed":
            return AgentEvent.error(
                f"the API rejected the credentials (HTTP {status}); "
                "check the API key or token passed to claude",
                ErrorKind.AUTH,
            )
        return None

    def _result(self, event: dict[str, Any]) -> AgentEvent:
        result = event.get("result")
        text = result if isinstance(result, str) else None
        # Claude Code 2.1 reports API failures as subtype "success" with
        # is_error true, so both fields are checked.
        if not event.get("is_error") and event.get("subtype", "success") == "success":
            return AgentEvent.result(text)
        errors = event.get("errors")
        details = [str(e) for e in errors] if isinstance(errors, list) else []
        message = "; ".join(filter(None, [text, *details])) or (
            f"claude reported {event.get('subtype') or 'an error'}"
        )
        api_error = str(event.get("api_error") or self._api_error or "")
        return AgentEvent.error(message, _claude_error_kind(message, api_error))

    def _plain_line(self, line: str) -> list[AgentEvent]:
        # Some failures are printed as plain text, e.g. a resume of a session that
        # does not exist in `--output-format json` mode.
        if _CLAUDE_STALE.search(line):
            return [AgentEvent.error(line.strip(), ErrorKind.STALE_SESSION)]
        logger.debug("claude printed a non-JSON line", extra={"action": "agent_line"})
        return []

    def _finish(self, exit_code: int, stderr: str) -> list[AgentEvent]:
        if self.results or self.errors:
            return []
        if _CLAUDE_STALE.search(stderr):
            return [AgentEvent.error(tail(stderr), ErrorKind.STALE_SESSION)]
        return []


def _claude_error_kind(message: str, api_error: str = "") -> ErrorKind:
    if _CLAUDE_STALE.search(message):
        return ErrorKind.STALE_SESSION
    if api_error == "authentication_failed":
        return ErrorKind.AUTH
    if api_error == "connection_failed":
        return ErrorKind.NETWORK
    return classify_error(message)


@dataclass(frozen=True)
class ClaudeRuntime(AgentRuntime):
    """Claude Code in print mode with streamed JSON output."""

    name: ClassVar[str] = "claude"
    model: str | None = None
    skip_permissions: bool = True
    """Let the agent use every tool without asking, as NanoClaw does, because the
    machine is the sandbox. Claude Code 2.1.332 exits with code 1 when this flag is
    used as root."""
    extra_args: Sequence[str] = field(default_factory=tuple)

    def argv(self, session_id: str | None = None) -> list[str]:
        argv = ["claude", "-p", "--output-format", "stream-json", "--verbose"]
        if self.skip_permissions:
            argv.append("--dangerously-skip-permissions")
        if self.model:
            argv += ["--model", self.model]
        if session_id:
            argv += ["--resume", session_id]
        return [*argv, *self.extra_args]

    def parser(self) -> OutputParser:
        return ClaudeParser()


# --- Codex -----------------------------------------------------------------------

_CODEX_STALE = re.compile(
    r"no (?:rollout|session|thread|conversation) found|thread not found"
    r"|session not found",
    re.IGNORECASE,
)
_CODEX_NETWORK_WAIT = re.compile(r"waiting for network", re.IGNORECASE)


class CodexParser(OutputParser):
    name = "codex"

    def __init__(self) -> None:
        super().__init__()
        self._last_message: str | None = None
        self._last_error: str | None = None

    def _parse_line(self, line: str) -> list[AgentEvent]:
        event = load_json_object(line)
        if event is None:
            return self._plain_line(line)
        kind = event.get("type")
        if kind == "thread.started" and isinstance(event.get("thread_id"), str):
            return [AgentEvent.session(event["thread_id"])]
        if kind == "item.completed":
            item = event.get("item")
            if (
                isinstance(item, dict)
                and item.get("type") == "agent_message"
                and isinstance(item.get("text"), str)
            ):
                self._last_message = item["text"]
            return []
        if kind == "turn.completed":
            text, self._last_message = self._last_message, None
            return [AgentEvent.result(text)]
        if kind == "turn.failed":
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            message = str(message or self._last_error or "turn failed")
            return [AgentEvent.error(message, _codex_error_kind(message))]
        if kind == "error":
            return self._error(str(event.get("message") or ""))
        return []

    def _error(self, message: str) -> list[AgentEvent]:
        # Codex reports its retries this way ("Reconnecting... 2/5 (...)"), and
        # turn.failed or the exit status ends the run. But after "waiting for
        # network" codex-cli 0.171 waits without limit, so that message is
        # reported at once and the caller stops the agent.
        self._last_error = message
        if _CODEX_NETWORK_WAIT.search(message) and not self.errors:
            return [AgentEvent.error(message, ErrorKind.NETWORK)]
        return []

    def _plain_line(self, line: str) -> list[AgentEvent]:
        if _CODEX_STALE.search(line):
            return [AgentEvent.error(line.strip(), ErrorKind.STALE_SESSION)]
        return []

    def _finish(self, exit_code: int, stderr: str) -> list[AgentEvent]:
        if self.results or self.errors:
            return []
        if _CODEX_STALE.search(stderr):
            return [AgentEvent.error(tail(stderr), ErrorKind.STALE_SESSION)]
        if self._last_error:
            return [
                AgentEvent.error(self._last_error, _codex_error_kind(self._last_error))
            ]
        return []


def _codex_error_kind(message: str) -> ErrorKind:
    if _CODEX_STALE.search(message):
        return ErrorKind.STALE_SESSION
    return classify_error(message)


@dataclass(frozen=True)
class CodexRuntime(AgentRuntime):
    """Codex CLI `exec` mode with JSONL events; the prompt is read from stdin (`-`)."""

    name: ClassVar[str] = "codex"
    model: str | None = None
    bypass_sandbox: bool = True
    """Skip Codex's own sandbox and approvals; the machine is the sandbox."""
    extra_args: Sequence[str] = field(default_factory=tuple)

    def argv(self, session_id: str | None = None) -> list[str]:
        argv = ["codex", "exec", "--json", "--skip-git-repo-check"]
        if self.bypass_sandbox:
            argv.append("--dangerously-bypass-approvals-and-sandbox")
        if self.model:
            argv += ["--model", self.model]
        argv += self.extra_args
        if session_id:
            argv += ["resume", session_id]
        return [*argv, "-"]

    def parser(self) -> OutputParser:
        return CodexParser()


# --- OpenCode --------------------------------------------------------------------

_OPENCODE_STALE = re.compile(r"session not found", re.IGNORECASE)
# step_finish reasons that mean the model will go on after tool calls.
_OPENCODE_CONTINUE_REASONS = frozenset({"tool-calls", "tool_calls", "tool_use"})


class OpenCodeParser(OutputParser):
    name = "opencode"

    def __init__(self) -> None:
        super().__init__()
        self._texts: list[str] = []

    def _parse_line(self, line: str) -> list[AgentEvent]:
        event = load_json_object(line)
        if event is None:
            return self._plain_line(line)
        events: list[AgentEvent] = []
        session_id = event.get("sessionID")
        if isinstance(session_id, str) and session_id:
            events.append(AgentEvent.session(session_id))
        part = event.get("part") if isinstance(event.get("part"), dict) else {}
        kind = event.get("type")
        if kind == "step_start":
            self._texts = []
        elif kind == "text" and isinstance(part.get("text"), str):
            self._texts.append(part["text"])
        elif kind == "step_finish":
            if part.get("reason") not in _OPENCODE_CONTINUE_REASONS:
                events.append(self._take_result())
        elif kind == "error":
            events.append(_opencode_error(event.get("error")))
        return events

    def _take_result(self) -> AgentEvent:
        text = "\n\n".join(t for t in self._texts if t.strip()) or None
        self._texts = []
        return AgentEvent.result(text)

    def _plain_line(self, line: str) -> list[AgentEvent]:
        if _OPENCODE_STALE.search(line):
            return [AgentEvent.error(line.strip(), ErrorKind.STALE_SESSION)]
        return []

    def _finish(self, exit_code: int, stderr: str) -> list[AgentEvent]:
        if self._texts:
            return [self._take_result()]
        if self.results or self.errors:
            return []
        if _OPENCODE_STALE.search(stderr):
            return [AgentEvent.error(tail(stderr), ErrorKind.STALE_SESSION)]
        return []


def _opencode_error(error: Any) -> AgentEvent:
    if not isinstance(error, dict):
        return AgentEvent.error("opencode reported an error")
    name = str(error.get("name") or "Error")
    data = error.get("data") if isinstance(error.get("data"), dict) else {}
    message = str(data.get("message") or name)
    if name == "ProviderAuthError" or data.get("statusCode") in (401, 403):
        return AgentEvent.error(message, ErrorKind.AUTH)
    return AgentEvent.error(message, classify_error(f"{name}: {message}"))


@dataclass(frozen=True)
class OpenCodeRuntime(AgentRuntime):
    """OpenCode `run` with raw JSON events; the prompt is read from stdin."""

    name: ClassVar[str] = "opencode"
    model: str | None = None
    """Model as provider/model, e.g. "anthropic/claude-sonnet-4-5"."""
    auto_approve: bool = True
    """Approve tool permissions without asking (`--auto`), because the machine is
    the sandbox. Without it `opencode run` rejects every permission request."""
    extra_args: Sequence[str] = field(default_factory=tuple)

    def argv(self, session_id: str | None = None) -> list[str]:
        argv = ["opencode", "run", "--format", "json"]
        if self.auto_approve:
            argv.append("--auto")
        if self.model:
            argv += ["--model", self.model]
        if session_id:
            argv += ["--session", session_id]
        return [*argv, *self.extra_args]

    def parser(self) -> OutputParser:
        return OpenCodeParser()


# --- Any command -----------------------------------------------------------------


class CommandParser(OutputParser):
    """Collects the whole stdout; it becomes one result if the command exits 0."""

    name = "command"

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[str] = []
        self._size = 0
        self._overflow = False

    def feed(self, chunk: str) -> list[AgentEvent]:
        self._append(chunk)
        return []

    def feed_line(self, line: str) -> list[AgentEvent]:
        self._append(line if line.endswith("\n") else line + "\n")
        return []

    def _append(self, text: str) -> None:
        self._size += len(text)
        if self._size > MAX_COMMAND_OUTPUT_CHARS:
            self._overflow = True
        else:
            self._chunks.append(text)

    def _parse_line(self, line: str) -> list[AgentEvent]:
        return []

    def _finish(self, exit_code: int, stderr: str) -> list[AgentEvent]:
        if exit_code != 0:
            return [exit_error("command", exit_code, stderr)]
        if self._overflow:
            return [
                AgentEvent.error(
                    f"command wrote {self._size} characters to stdout, over the limit "
                    f"of {MAX_COMMAND_OUTPUT_CHARS}"
                )
            ]
        text = "".join(self._chunks).rstrip("\n")
        return [AgentEvent.result(text or None)]


@dataclass(frozen=True)
class CommandRuntime(AgentRuntime):
    """Any program: the prompt on stdin, its whole stdout is the result."""

    name: ClassVar[str] = "command"
    supports_sessions: ClassVar[bool] = False
    command_argv: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.command_argv or not all(
            isinstance(arg, str) for arg in self.command_argv
        ):
            raise ValueError(
                "CommandRuntime needs a non-empty argv of strings, e.g. ['cat']"
            )

    def argv(self, session_id: str | None = None) -> list[str]:
        if session_id:
            logger.debug(
                "command runtime ignores the session id",
                extra={"action": "session_ignored"},
            )
        return list(self.command_argv)

    def parser(self) -> OutputParser:
        return CommandParser()


RUNTIMES: dict[str, type[AgentRuntime]] = {
    "claude": ClaudeRuntime,
    "codex": CodexRuntime,
    "opencode": OpenCodeRuntime,
    "command": CommandRuntime,
}
