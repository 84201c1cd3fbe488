"""The simulator's containers: Docker containers tagged with the simulator home.

Every simulated container is a Docker container named like the `container` id,
created with `--network none`, and labelled with the simulator home so two homes
(two tests) never see each other's containers. Values that Docker cannot report
the way `container` does (the image name as given, the requested network) travel
in labels under META_PREFIX, which `list` leaves out.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

META_PREFIX = "org.engine.container-sim."
HOME_LABEL = META_PREFIX + "home"
SWIFT_REFERENCE_DATE = datetime(2001, 1, 1, tzinfo=UTC)
DEFAULT_CPUS = 4
DEFAULT_MEMORY = 1 << 30


def sim_home() -> Path:
    """Return $CONTAINER_SIM_HOME, or a folder under the user's state directory."""
    configured = os.environ.get("CONTAINER_SIM_HOME")
    if configured:
        return Path(configured).resolve()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "container-sim"


def system_marker() -> Path:
    return sim_home() / "apiserver-running"


def docker(
    *args: str, check: bool = False, capture: bool = True
) -> subprocess.CompletedProcess[str]:
    program = os.environ.get("CONTAINER_SIM_DOCKER", "docker")
    return subprocess.run(
        [program, *args],
        capture_output=capture,
        text=True,
        check=check,
    )


def docker_program() -> str:
    return os.environ.get("CONTAINER_SIM_DOCKER", "docker")


def home_filter() -> str:
    return f"label={HOME_LABEL}={sim_home()}"


def container_names() -> list[str]:
    result = docker("ps", "--all", "--filter", home_filter(), "--format", "{{.Names}}")
    if result.returncode != 0:
        raise RuntimeError(f"docker ps failed: {result.stderr.strip()}")
    return result.stdout.split()


def inspect_all(names: list[str]) -> list[dict[str, Any]]:
    if not names:
        return []
    result = docker("container", "inspect", *names)
    if result.returncode != 0:
        # A container vanished between ps and inspect: read them one by one.
        found = []
        for name in names:
            single = docker("container", "inspect", name)
            if single.returncode == 0:
                found += json.loads(single.stdout)
        return found
    return json.loads(result.stdout)


def find(name: str) -> dict[str, Any] | None:
    """Return Docker's inspect data of simulated container `name`, or None."""
    result = docker("container", "inspect", name)
    if result.returncode != 0:
        return None
    info = json.loads(result.stdout)[0]
    labels = info["Config"].get("Labels") or {}
    if labels.get(HOME_LABEL) != str(sim_home()):
        return None
    return info


def is_running(info: dict[str, Any]) -> bool:
    return bool(info["State"].get("Running"))


def normalize_reference(reference: str) -> str:
    """Add the default registry, `library/` and `:latest` the way `container` does."""
    first, _, rest = reference.partition("/")
    has_domain = bool(rest) and ("." in first or ":" in first or first == "localhost")
    if not has_domain:
        path = reference if "/" in reference else f"library/{reference}"
        reference = f"docker.io/{path}"
    last = reference.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        reference += ":latest"
    return reference


def render(info: dict[str, Any], shape: str) -> dict[str, Any]:
    """Return one container as `container list --format json` prints it.

    Shape "2026" is the ManagedContainer form, with `status` an object and ISO
    8601 dates. Shape "2025" is the older PrintableContainer form, with `status`
    a string, `networks` at the top and dates in seconds since 2001-01-01.
    """
    configuration = _configuration(info)
    state = "running" if is_running(info) else "stopped"
    started = (
        _docker_time(info["State"].get("StartedAt")) if state == "running" else None
    )
    if shape == "2025":
        configuration.pop("creationDate", None)
        snapshot: dict[str, Any] = {
            "configuration": configuration,
            "status": state,
            "networks": [],
        }
        if started is not None:
            snapshot["startedDate"] = (started - SWIFT_REFERENCE_DATE).total_seconds()
        return snapshot
    status: dict[str, Any] = {"state": state, "networks": []}
    if started is not None:
        status["startedDate"] = _iso(started)
    return {"configuration": configuration, "id": configuration["id"], "status": status}


def _configuration(info: dict[str, Any]) -> dict[str, Any]:
    labels = info["Config"].get("Labels") or {}
    meta = {
        k[len(META_PREFIX) :]: v for k, v in labels.items() if k.startswith(META_PREFIX)
    }
    given_keys = set(json.loads(meta.get("labels", "[]")))
    name = info["Name"].lstrip("/")
    network = meta.get("network", "default")
    networks = (
        []
        if network == "none"
        else [{"network": network, "options": {"hostname": name}}]
    )
    entrypoint = info["Config"].get("Entrypoint") or []
    command = [*entrypoint, *(info["Config"].get("Cmd") or [])]
    created = _docker_time(info.get("Created"))
    return {
        "creationDate": _iso(created) if created else None,
        "dns": None
        if network == "none"
        else {"nameservers": [], "searchDomains": [], "options": []},
        "id": name,
        "image": {
            "reference": normalize_reference(meta.get("image", info["Config"]["Image"]))
        },
        "initProcess": {
            "executable": command[0] if command else "",
            "arguments": command[1:],
            "environment": info["Config"].get("Env") or [],
            "workingDirectory": info["Config"].get("WorkingDir") or "/",
            "terminal": bool(info["Config"].get("Tty")),
        },
        "labels": {k: v for k, v in labels.items() if k in given_keys},
        "mounts": [_mount(mount) for mount in info.get("Mounts") or []],
        "networks": networks,
        "platform": {"os": "linux", "architecture": _architecture()},
        "publishedPorts": [],
        "publishedSockets": [],
        "resources": {
            "cpus": int(meta.get("cpus", DEFAULT_CPUS)),
            "memoryInBytes": int(meta.get("memory", DEFAULT_MEMORY)),
        },
        "rosetta": False,
        "runtimeHandler": "container-runtime-linux",
        "ssh": False,
        "readOnly": False,
        "sysctls": {},
        "virtualization": False,
    }


def _mount(mount: dict[str, Any]) -> dict[str, Any]:
    options = [] if mount.get("RW", True) else ["ro"]
    return {
        "type": {"virtiofs": {}},
        "source": mount.get("Source", ""),
        "destination": mount.get("Destination", ""),
        "options": options,
    }


def _architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _docker_time(text: str | None) -> datetime | None:
    # Docker writes RFC 3339 with nanoseconds, e.g. 2026-05-01T10:00:00.123456789Z.
    if not text or text.startswith("0001-"):
        return None
    whole = text.rstrip("Z").split(".")[0]
    try:
        return datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
