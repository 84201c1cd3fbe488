"""What an agent CLI reported, and the line-by-line parser base for its stdout.

A parser turns the CLI's stdout into `AgentEvent`s: a result text, a new session
id, or an error. The first ERROR event decides the run: it failed, and if the agent
process still runs the caller stops it. An error event's `error_kind` tells whether
the session id to resume was unknown (retry once without it), whether authentication
failed, or whether the API could not be reached.
"""

from __future__ import annotations

import json
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 16 * 1024 * 1024
"""Maximum length of one stdout line; a longer line becomes an error event."""

# Runs the CLI with stdin read from the prompt file. The script text is fixed: the
# prompt file and the CLI's argv arrive as positional parameters, never as shell code.
_STDIN_FROM_FILE_SCRIPT = 'prompt_file=$1; shift; exec "$@" <"$prompt_file"'


class EventKind(StrEnum):
    RESULT = "result"
    SESSION = "session"
    ERROR = "error"


class ErrorKind(StrEnum):
    AGENT = "agent"
    """The agent reported an error, or exited without a result."""
    AUTH = "auth"
    """The API rejected the credentials, or none were given."""
    NETWORK = "network"
    """The API could not be reached."""
    STALE_SESSION = "stale_session"
    """The session id to resume does not exist; retry once with a new session."""


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One thing the agent reported: a result, a session id, or an error."""

    kind: EventKind
    text: str | None = None
    """Result text (RESULT; None when the agent ended its turn without text) or
    error message (ERROR)."""
    session_id: str | None = None
    error_kind: ErrorKind | None = None

    @classmethod
    def result(cls, text: str | None) -> AgentEvent:
        return cls(EventKind.RESULT, text=text)

    @classmethod
    def session(cls, session_id: str) -> AgentEvent:
        return cls(EventKind.SESSION, session_id=session_id)

    @classmethod
    def error(cls, message: str, error_kind: ErrorKind = ErrorKind.AGENT) -> AgentEvent:
        return cls(EventKind.ERROR, text=message, error_kind=error_kind)


# Phrases in the CLIs' error messages. Matched case-insensitively.
_AUTH_PATTERNS = re.compile(
    r"invalid api key|invalid x-api-key|authentication_error|authentication failed"
    r"|unauthorized|\b401\b|not logged in|please run /login|missing api key"
    r"|api key not (?:found|set)|no api key|incorrect api key|invalid_api_key"
    r"|providerautherror|credit balance is too low",
    re.IGNORECASE,
)
_NETWORK_PATTERNS = re.compile(
    r"unable to connect|connection ?refused|connection error|econnrefused|enotfound"
    r"|eai_again|getaddrinfo|dns error|failed to lookup address|network is unreachable"
    r"|error sending request|stream disconnected|fetch failed|timed out"
    r"|can't reach the api|cannot connect to api|connection failed|waiting for network",
    re.IGNORECASE,
)


def classify_error(message: str) -> ErrorKind:
    """Guess what kind of failure an agent's error message describes."""
    if _AUTH_PATTERNS.search(message):
        return ErrorKind.AUTH
    if _NETWORK_PATTERNS.search(message):
        return ErrorKind.NETWORK
    return ErrorKind.AGENT


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """How to start an agent in the machine: its argv and the file for its stdin."""

    argv: tuple[str, ...]
    prompt_file: str

    def shell_argv(self, shell: str = "/bin/sh") -> list[str]:
        """Return one argv that runs `argv` with stdin redirected from the file.

        For backends that start a process without their own stdin redirection.
        """
        return [
            shell,
            "-c",
            _STDIN_FROM_FILE_SCRIPT,
            "sh",
            self.prompt_file,
            *self.argv,
        ]


class OutputParser(ABC):
    """Turns an agent's stdout into events, one line at a time.

    Feed complete lines with `feed_line` or raw chunks with `feed`; call `finish`
    once the process has exited. Every call returns the events that became
    complete, in order. Only the first ERROR event is returned; later ones are
    kept in `errors`.
    """

    name: ClassVar[str] = "agent"

    def __init__(self) -> None:
        self._pending = ""
        self.session_id: str | None = None
        """The latest session id reported by the agent."""
        self.results = 0
        self.errors: list[AgentEvent] = []

    @property
    def stale_session(self) -> bool:
        """True if the agent reported that the session to resume does not exist."""
        return any(e.error_kind is ErrorKind.STALE_SESSION for e in self.errors)

    def feed(self, chunk: str) -> list[AgentEvent]:
        """Take a chunk of stdout, which may end in the middle of a line."""
        self._pending += chunk
        events: list[AgentEvent] = []
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            events += self.feed_line(line)
        if len(self._pending) > MAX_LINE_CHARS:
            self._pending = ""
            events += self._track(
                [
                    AgentEvent.error(
                        f"agent wrote a line longer than {MAX_LINE_CHARS} characters"
                    )
                ]
            )
        return events

    def feed_line(self, line: str) -> list[AgentEvent]:
        """Take one line of stdout, without or with its line ending."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        return self._track(self._parse_line(line))

    def finish(self, exit_code: int, stderr: str = "") -> list[AgentEvent]:
        """Take the exit status and the end of stderr; return the closing events.

        When the agent produced neither a result nor an error, this returns one
        error that quotes the end of stderr.
        """
        events: list[AgentEvent] = []
        if self._pending:
            events += self.feed_line(self._pending)
            self._pending = ""
        events += self._track(self._finish(exit_code, stderr))
        if not self.results and not self.errors:
            events += self._track([exit_error(self.name, exit_code, stderr)])
        return events

    @abstractmethod
    def _parse_line(self, line: str) -> list[AgentEvent]: ...

    def _finish(self, exit_code: int, stderr: str) -> list[AgentEvent]:
        return []

    def _track(self, events: list[AgentEvent]) -> list[AgentEvent]:
        emitted = []
        for event in events:
            if event.kind is EventKind.SESSION:
                if event.session_id == self.session_id:
                    continue
                self.session_id = event.session_id
            elif event.kind is EventKind.RESULT:
                self.results += 1
            else:
                self.errors.append(event)
                if len(self.errors) > 1:
                    logger.debug(
                        "agent reported a further error",
                        extra={"action": "agent_error", "parser": self.name},
                    )
                    continue
            emitted.append(event)
        return emitted


def exit_error(name: str, exit_code: int, stderr: str) -> AgentEvent:
    """Return the error for an agent that exited without a result."""
    stderr_tail = tail(stderr)
    message = f"{name} exited with code {exit_code} without a result"
    if stderr_tail:
        message += f": {stderr_tail}"
    return AgentEvent.error(message, classify_error(stderr_tail))


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail(text: str, limit: int = 2000) -> str:
    """Return the last `limit` characters of `text`, without colour codes."""
    text = _ANSI_ESCAPE.sub("", text).strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def load_json_object(line: str) -> dict[str, Any] | None:
    """Return the line's JSON object, or None if it is not one."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
