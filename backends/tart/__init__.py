"""The Tart backend: macOS VMs through the tart CLI and SSH."""

from backends.tart.backend import TartBackend, TartOptions

__all__ = ["TartBackend", "TartOptions"]
