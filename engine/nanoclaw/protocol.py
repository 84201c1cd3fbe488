"""NanoClaw's container protocol: the input on stdin and the framed outputs on stdout.

NanoClaw (v1, `src/container-runner.ts`) writes one `ContainerInput` JSON object to
the agent's stdin and closes it. The agent replies with zero or more
`ContainerOutput` objects, each printed as three lines::

    ---NANOCLAW_OUTPUT_START---
    {"status":"success","result":"...","newSessionId":"..."}
    ---NANOCLAW_OUTPUT_END---

NanoClaw finds a frame with a substring search for the two markers, anywhere in its
stdout buffer, and JSON-parses the text between them. So the engine prints only
frames that it built itself from parsed agent results (`frame_output`), and the
encoded JSON never contains either marker, even as part of a longer line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from engine.nanoclaw.errors import InvalidContainerInputError
from engine.nanoclaw.groups import validate_group_folder

OUTPUT_START_MARKER = "---NANOCLAW_OUTPUT_START---"
OUTPUT_END_MARKER = "---NANOCLAW_OUTPUT_END---"

# The common part of both markers. Escaping its underscore in the encoded JSON keeps
# either marker from appearing in a frame's payload.
_MARKER_CORE = "NANOCLAW_OUTPUT"
_ESCAPED_MARKER_CORE = "NANOCLAW\\u005fOUTPUT"

MAX_INPUT_BYTES = 8 * 1024 * 1024
"""Default limit for the whole JSON document on stdin, in bytes."""

MAX_PROMPT_BYTES = 4 * 1024 * 1024
"""Default limit for the prompt, in bytes of UTF-8."""

MAX_SECRETS = 64
MAX_SECRET_VALUE_BYTES = 64 * 1024

# Session ids go into the agent's argv, so one must never look like an option.
# Claude Code and Codex use UUIDs, OpenCode uses ids like "ses_3f2a...".
SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,255}$")
# Secrets become environment variables inside the machine.
SECRET_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ContainerInput(BaseModel):
    """The JSON object that NanoClaw writes to the agent's stdin.

    Field names follow NanoClaw's camelCase on the wire (`sessionId`, `groupFolder`)
    and snake_case in Python. Types are checked strictly: `"isMain": "true"` is
    rejected. Unknown fields that NanoClaw forks add are ignored. Secret values are
    `SecretStr`, so `repr`, `model_dump` and `model_dump_json` never show them; call
    `secret_values()` to get them.
    """

    model_config = ConfigDict(
        strict=True, frozen=True, populate_by_name=True, extra="ignore"
    )

    prompt: str
    session_id: str | None = Field(default=None, alias="sessionId")
    group_folder: str = Field(alias="groupFolder")
    chat_jid: str = Field(alias="chatJid", min_length=1, max_length=1024)
    is_main: bool = Field(alias="isMain")
    is_scheduled_task: bool = Field(default=False, alias="isScheduledTask")
    assistant_name: str | None = Field(
        default=None, alias="assistantName", max_length=256
    )
    secrets: dict[str, SecretStr] | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = MAX_PROMPT_BYTES
        if isinstance(info.context, dict):
            limit = info.context.get("max_prompt_bytes", limit)
        size = len(value.encode("utf-8", errors="surrogatepass"))
        if size > limit:
            raise ValueError(
                f"prompt is {size} bytes, over the limit of {limit} bytes; "
                "send a shorter prompt or raise max_prompt_bytes"
            )
        return value

    @field_validator("session_id")
    @classmethod
    def _check_session_id(cls, value: str | None) -> str | None:
        if value is None or value == "":
            # NanoClaw sends no sessionId for a new conversation; treat "" the same.
            return None
        if not SESSION_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "sessionId must be 1-256 characters of letters, digits and ._:- "
                "and start with a letter or digit"
            )
        return value

    @field_validator("group_folder")
    @classmethod
    def _check_group_folder(cls, value: str) -> str:
        return validate_group_folder(value)

    @field_validator("secrets")
    @classmethod
    def _check_secrets(
        cls, value: dict[str, SecretStr] | None
    ) -> dict[str, SecretStr] | None:
        if value is None:
            return None
        if len(value) > MAX_SECRETS:
            raise ValueError(f"{len(value)} secrets given; the limit is {MAX_SECRETS}")
        for name, secret in value.items():
            if not SECRET_NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"secret name {name[:64]!r} is not a valid environment variable "
                    "name (letters, digits, underscore; not starting with a digit)"
                )
            if len(secret.get_secret_value().encode()) > MAX_SECRET_VALUE_BYTES:
                raise ValueError(
                    f"secret {name} is longer than {MAX_SECRET_VALUE_BYTES} bytes"
                )
        return value

    def secret_values(self) -> dict[str, str]:
        """Return the secrets as plain strings, to pass into the machine's env."""
        if not self.secrets:
            return {}
        return {name: s.get_secret_value() for name, s in self.secrets.items()}

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON form with secret values masked."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # The prompt can be megabytes long; a repr shows its size. Secrets show
        # their names only.
        for name, value in super().__repr_args__():
            if name == "prompt":
                yield name, f"<{len(self.prompt)} chars>"
            elif name == "secrets" and value is not None:
                yield name, sorted(value)
            else:
                yield name, value


class ContainerOutput(BaseModel):
    """One result that NanoClaw reads between the output markers.

    `result` is always present on the wire, as a string or null. `newSessionId`
    and `error` are left out when they have no value, as in NanoClaw's agent-runner.
    `sessionReset` is the engine's own field, sent only when true: the requested
    session did not exist, so the agent ran in a new one. NanoClaw ignores it.
    """

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)

    status: Literal["success", "error"]
    result: str | None = None
    new_session_id: str | None = Field(default=None, alias="newSessionId")
    error: str | None = None
    session_reset: bool = Field(default=False, alias="sessionReset")

    def to_wire(self) -> dict[str, Any]:
        """Return the camelCase JSON form that NanoClaw parses."""
        wire: dict[str, Any] = {"status": self.status, "result": self.result}
        if self.new_session_id is not None:
            wire["newSessionId"] = self.new_session_id
        if self.error is not None:
            wire["error"] = self.error
        if self.session_reset:
            wire["sessionReset"] = True
        return wire


def parse_container_input(
    data: bytes | str,
    *,
    max_input_bytes: int = MAX_INPUT_BYTES,
    max_prompt_bytes: int = MAX_PROMPT_BYTES,
) -> ContainerInput:
    """Parse and validate the JSON document that NanoClaw writes to stdin.

    Raises `InvalidContainerInputError` naming each invalid field. The message never
    contains a field's value, so it is safe to log even when a secret was invalid.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > max_input_bytes:
        raise InvalidContainerInputError(
            f"container input is {len(raw)} bytes, over the limit of "
            f"{max_input_bytes} bytes; send a shorter prompt"
        )
    if not raw.strip():
        raise InvalidContainerInputError(
            "container input is empty; write one JSON object to stdin"
        )
    try:
        return ContainerInput.model_validate_json(
            raw, context={"max_prompt_bytes": max_prompt_bytes}
        )
    except ValidationError as exc:
        problems = _describe_errors(exc)
        # `from None`: pydantic's own message quotes the invalid values, and one of
        # them may be a secret.
        raise InvalidContainerInputError(
            "invalid container input: " + "; ".join(problems), problems
        ) from None


def _describe_errors(exc: ValidationError) -> list[str]:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(document)"
        message = error["msg"]
        if error["type"] == "missing":
            message = "required field is missing"
        problems.append(f"{location}: {message}")
    return problems


def encode_output(output: ContainerOutput) -> str:
    """Encode one output as a single line of ASCII JSON without either marker.

    ASCII keeps every character one byte long: NanoClaw decodes each stdout chunk on
    its own, so a multi-byte character split across two chunks would be garbled.
    """
    text = json.dumps(output.to_wire(), ensure_ascii=True, separators=(",", ":"))
    # Letters and "_" only appear literally inside JSON strings, and Python writes
    # \u escapes with lowercase hex, so this replacement removes every occurrence.
    return text.replace(_MARKER_CORE, _ESCAPED_MARKER_CORE)


def frame_output(output: ContainerOutput) -> str:
    """Return the exact text to print for one output: three lines with markers."""
    return f"{OUTPUT_START_MARKER}\n{encode_output(output)}\n{OUTPUT_END_MARKER}\n"


def iter_framed_outputs(text: str) -> Iterator[ContainerOutput]:
    """Parse every complete frame in `text` the way NanoClaw's host does.

    Text outside frames is skipped. A frame whose payload is not a valid
    `ContainerOutput` raises `ValueError`.
    """
    position = 0
    while True:
        start = text.find(OUTPUT_START_MARKER, position)
        if start == -1:
            return
        end = text.find(OUTPUT_END_MARKER, start)
        if end == -1:
            return
        payload = text[start + len(OUTPUT_START_MARKER) : end].strip()
        position = end + len(OUTPUT_END_MARKER)
        yield ContainerOutput.model_validate(json.loads(payload))
