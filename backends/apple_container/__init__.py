"""The apple-container backend: Linux VMs through Apple's `container` CLI."""

from backends.apple_container.backend import AppleContainerBackend

__all__ = ["AppleContainerBackend"]
