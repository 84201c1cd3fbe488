"""Backends: the adapters that create, drive and delete machines."""

from backends.base import Backend, Machine, MachineSpec, Resource, machine_name
from backends.registry import available_backends, create_backend, detect_backend

__all__ = [
    "Backend",
    "Machine",
    "MachineSpec",
    "Resource",
    "available_backends",
    "create_backend",
    "detect_backend",
    "machine_name",
]
