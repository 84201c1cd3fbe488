"""Errors raised by the NanoClaw compatibility layer.

    NanoClawError
    ├── InvalidContainerInputError  the JSON on stdin is not a valid ContainerInput
    ├── GroupConfigError            groups/<folder>/config.json cannot be used
    │   └── InvalidGroupFolderError the folder name is unsafe or reserved
    ├── MountAllowlistError         the mount allowlist file is unreadable or invalid
    └── MountRejectedError          an additional mount fails the allowlist check

The engine maps these to its own exception tree at the point where it calls this
package. No message contains a secret value.
"""

from __future__ import annotations


class NanoClawError(Exception):
    """A NanoClaw input, configuration or mount check failed."""


class InvalidContainerInputError(NanoClawError, ValueError):
    """The container input is not valid.

    `problems` lists one line per invalid field, without the field's value.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class GroupConfigError(NanoClawError, ValueError):
    """A group's config.json is missing a required value or has an invalid one."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class InvalidGroupFolderError(GroupConfigError):
    """A group folder name could escape the groups directory or is reserved."""


class MountAllowlistError(NanoClawError):
    """The mount allowlist file cannot be read or is not valid."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class MountRejectedError(NanoClawError):
    """An additional mount is not allowed; `reason` names the check that failed."""

    def __init__(self, host_path: str, reason: str) -> None:
        super().__init__(f"additional mount {host_path!r} rejected: {reason}")
        self.host_path = host_path
        self.reason = reason
