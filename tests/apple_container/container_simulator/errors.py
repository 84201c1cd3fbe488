"""Errors printed and mapped to exit codes the way the `container` CLI does.

The CLI (apple/container Sources/ContainerCommands/Application.swift) prints every
error through swift-argument-parser as `Error: DESCRIPTION` on stderr and exits 1,
or 64 for usage errors. A ContainerizationError describes itself as
`CODE: "MESSAGE"`, plus ` (cause: "CAUSE")` when it wraps another error
(apple/containerization Sources/ContainerizationError/ContainerizationError.swift).
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 64


class SimulatorError(Exception):
    """A failure printed as `Error: MESSAGE`, with the CLI's exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def render(self) -> str:
        return f"Error: {self.message}"


def described(code: str, message: str, cause: str | None = None) -> str:
    """Return a ContainerizationError's description."""
    text = f'{code}: "{message}"'
    return f'{text} (cause: "{cause}")' if cause else text


def coded(code: str, message: str, cause: str | None = None) -> SimulatorError:
    return SimulatorError(described(code, message, cause))


def usage(message: str, command: str) -> SimulatorError:
    return SimulatorError(
        f"{message}\nUsage: container {command} [<options>] ...\n"
        f"  See 'container {command} --help' for more information.",
        EXIT_USAGE,
    )


def container_not_found(name: str) -> str:
    return described("notFound", f"container with ID {name} not found")


def system_stopped() -> SimulatorError:
    # The form `Application.main` prints when the API server's XPC service is gone.
    inner = described("interrupted", "XPC connection error: Connection invalid")
    return coded(
        "interrupted",
        f"{inner}\nEnsure container system service has been started with "
        "`container system start`.",
    )
