"""Errors printed and mapped to exit codes the way tart does.

tart (Sources/tart/Root.swift) prints an error that has an exit code of its own as the
bare message on stderr. Its `RuntimeError` cases exit 2 for "does not exist", "not
running" and "already running", and 1 otherwise (Sources/tart/VMStorageHelper.swift).
swift-argument-parser prints other errors as `Error: MESSAGE` and exits 1, and usage
errors as `Error: MESSAGE` plus the usage, with exit code 64.

    TartError            bare message, exit 1 or 2
    ├── PrefixedError    "Error: " + message, exit 1
    └── UsageError       "Error: " + message + usage, exit 64
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_VM_STATE = 2
EXIT_USAGE = 64


class TartError(Exception):
    """A failure that tart prints as the bare message on stderr."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def render(self) -> str:
        return self.message


class PrefixedError(TartError):
    """A failure without its own exit code, printed by swift-argument-parser."""

    def render(self) -> str:
        return f"Error: {self.message}"


class UsageError(TartError):
    """A parse or validation failure: exit code 64 and the command's usage."""

    def __init__(self, message: str, usage: str = "", command: str = "") -> None:
        super().__init__(message, EXIT_USAGE)
        self.usage = usage.strip()
        self.command = command

    def render(self) -> str:
        lines = [f"Error: {self.message}"]
        if self.usage:
            lines.append(self.usage)
        help_command = f"tart {self.command}".strip()
        lines.append(f"  See '{help_command} --help' for more information.")
        return "\n".join(lines)


def vm_does_not_exist(name: str) -> TartError:
    return TartError(f'the specified VM "{name}" does not exist', EXIT_VM_STATE)


def vm_not_running(name: str) -> TartError:
    return TartError(f'VM "{name}" is not running', EXIT_VM_STATE)


def vm_already_running(name: str) -> TartError:
    return TartError(f'VM "{name}" is already running!', EXIT_VM_STATE)


def vm_is_running(name: str) -> TartError:
    """tart's `VMIsRunning`: delete or replace of a running VM, exit code 1."""
    return TartError(f'VM "{name}" is running', EXIT_FAILURE)


def vm_limit_exceeded(other_running: list[str]) -> TartError:
    hint = ""
    if other_running:
        hint = f" (other running VMs: {', '.join(other_running)})"
    return TartError(f"The number of VMs exceeds the system limit{hint}")
