"""Simulator switches, read from TART_SIM_* variables and $TART_HOME/sim.json.

A variable wins over the same key in sim.json, and sim.json wins over the default.
Keys in sim.json are the variable names without the TART_SIM_ prefix, in lower case
(for example {"boot_delay": 5, "vm_limit": 1}).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TartError

SETTINGS_FILE = "sim.json"
DEFAULTS: dict[str, str] = {
    "boot_delay": "0",
    "ssh_delay": "0",
    "boot_timeout": "30",
    "vm_limit": "2",
    "ip_range": "100-199",
    "ssh_port": "22",
    "clone_existing": "replace",
    "stale_leases": "1",
    "state_dir": "/tmp/tart-sim",
}


@dataclass(frozen=True)
class Settings:
    """Quirks and limits of the simulated host, fixed for one command."""

    boot_delay: float
    ssh_delay: float
    boot_timeout: float
    vm_limit: int
    ip_first: int
    ip_last: int
    ssh_port: int
    clone_existing: str
    stale_leases: bool
    state_dir: Path


def _raw_values(home: Path) -> dict[str, str]:
    values = dict(DEFAULTS)
    settings_path = home / SETTINGS_FILE
    if settings_path.exists():
        try:
            loaded: Any = json.loads(settings_path.read_text())
        except (OSError, ValueError) as exc:
            raise TartError(
                f"invalid simulator settings in {settings_path}: {exc}"
            ) from exc
        if not isinstance(loaded, dict):
            raise TartError(f"{settings_path} must contain a JSON object")
        for key, value in loaded.items():
            if key not in DEFAULTS:
                raise TartError(
                    f"unknown key {key!r} in {settings_path}; "
                    f"known keys: {', '.join(sorted(DEFAULTS))}"
                )
            values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    for key in DEFAULTS:
        env_value = os.environ.get(f"TART_SIM_{key.upper()}")
        if env_value is not None and env_value != "":
            values[key] = env_value
    return values


def _number(values: dict[str, str], key: str, kind: type) -> Any:
    try:
        number = kind(values[key])
    except ValueError:
        raise TartError(
            f"invalid TART_SIM_{key.upper()} value {values[key]!r}: expected a "
            f"non-negative {kind.__name__}"
        ) from None
    if number < 0:
        raise TartError(f"TART_SIM_{key.upper()} must not be negative, got {number}")
    return number


def _ip_range(text: str) -> tuple[int, int]:
    first_text, _, last_text = text.partition("-")
    try:
        first, last = int(first_text), int(last_text or first_text)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last <= 254:
        raise TartError(
            f"invalid TART_SIM_IP_RANGE {text!r}: expected FIRST-LAST with "
            "1 <= FIRST <= LAST <= 254, the last byte of 127.0.0.x (e.g. 100-199)"
        )
    return first, last


def _choice(values: dict[str, str], key: str, allowed: tuple[str, ...]) -> str:
    value = values[key].lower()
    if value not in allowed:
        raise TartError(
            f"invalid TART_SIM_{key.upper()} {values[key]!r}: "
            f"expected one of {', '.join(allowed)}"
        )
    return value


def load_settings(home: Path) -> Settings:
    values = _raw_values(home)
    ip_first, ip_last = _ip_range(values["ip_range"])
    stale = _choice(values, "stale_leases", ("1", "0", "true", "false"))
    return Settings(
        boot_delay=_number(values, "boot_delay", float),
        ssh_delay=_number(values, "ssh_delay", float),
        boot_timeout=_number(values, "boot_timeout", float),
        vm_limit=_number(values, "vm_limit", int),
        ip_first=ip_first,
        ip_last=ip_last,
        ssh_port=_number(values, "ssh_port", int),
        clone_existing=_choice(values, "clone_existing", ("replace", "reject")),
        stale_leases=stale in ("1", "true"),
        state_dir=Path(values["state_dir"]),
    )
