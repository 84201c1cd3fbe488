"""Backend names, construction from settings, and auto-detection."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.exceptions import BackendUnavailableError, UnknownBackendError

if TYPE_CHECKING:
    from backends.base import Backend
    from engine.settings import Settings


def _docker(settings: Settings) -> Backend:
    from backends.docker import DockerBackend

    return DockerBackend(
        image=settings.engine_docker_image, network=settings.engine_docker_network
    )


def _tart(settings: Settings) -> Backend:
    from backends.tart import TartBackend, TartOptions

    password = settings.tart_vm_password
    return TartBackend(
        TartOptions(
            base_image=settings.tart_base_image,
            username=settings.tart_vm_username,
            password=password.get_secret_value() if password else None,
            key_path=settings.tart_ssh_key,
            ssh_timeout=settings.tart_ssh_timeout,
            max_vms=settings.tart_max_vms,
            resolver=settings.tart_ip_resolver,
        )
    )


def _apple_container(settings: Settings) -> Backend:
    from backends.apple_container import AppleContainerBackend

    return AppleContainerBackend(image=settings.engine_apple_image)


def _instant(settings: Settings) -> Backend:
    from backends.instant import InstantBackend

    return InstantBackend()


FACTORIES: dict[str, Callable[[Settings], Backend]] = {
    "docker": _docker,
    "tart": _tart,
    "apple-container": _apple_container,
    "instant": _instant,
}

# Tried in this order by `auto`; the instant test backend is never detected.
DETECTION_ORDER = ("apple-container", "tart", "docker")


def available_backends() -> list[str]:
    return sorted(FACTORIES)


def _tool_installed(name: str) -> bool:
    on_mac = sys.platform == "darwin"
    if name == "apple-container":
        return on_mac and shutil.which("container") is not None
    if name == "tart":
        return on_mac and shutil.which("tart") is not None
    if name == "docker":
        return shutil.which("docker") is not None
    return False


def detect_backend() -> str:
    """Return the first usable backend: Apple Container, then Tart, then Docker."""
    for name in DETECTION_ORDER:
        if name in FACTORIES and _tool_installed(name):
            return name
    raise BackendUnavailableError(
        "no backend found: install Docker (on Debian: apt-get install docker.io), "
        "or on macOS Apple's container tool or tart, or set CONTAINER_RUNTIME"
    )


def usable_backends(settings: Settings) -> list[str]:
    """Return every known backend whose tool is installed on this host.

    The backend that CONTAINER_RUNTIME names is included even without a tool,
    such as the in-process instant backend.
    """
    names = [name for name in DETECTION_ORDER if name in FACTORIES]
    usable = [name for name in names if _tool_installed(name)]
    chosen = (settings.container_runtime or "auto").strip().lower()
    if chosen in FACTORIES and chosen not in usable:
        usable.append(chosen)
    return usable


def resolve_backend_name(name: str | None, settings: Settings) -> str:
    """Return the backend to use for a request, resolving `auto`."""
    chosen = (name or settings.container_runtime or "auto").strip().lower()
    if chosen == "auto":
        return detect_backend()
    if chosen not in FACTORIES:
        raise UnknownBackendError(chosen, ["auto", *available_backends()])
    return chosen


def create_backend(name: str, settings: Settings) -> Backend:
    if name not in FACTORIES:
        raise UnknownBackendError(name, ["auto", *available_backends()])
    return FACTORIES[name](settings)
