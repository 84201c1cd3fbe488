"""`container create`, translated into `docker create` on the simulator's daemon.

The container always gets `--network none`, whatever network was requested: the
simulator records the request and reports it in `list`, but gives no network.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from . import docker_state as state
from .arguments import Parsed, Spec, parse, require_int, require_positionals
from .errors import SimulatorError, coded

NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
MEMORY_PATTERN = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(?:i?b)?$", re.I)
MEMORY_UNITS = {
    "": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
}
# Docker refuses smaller memory limits.
DOCKER_MIN_MEMORY = 6 << 20

CREATE = Spec(
    "create",
    options={
        "--name": "name",
        "-l": "label",
        "--label": "label",
        "-c": "cpus",
        "--cpus": "cpus",
        "-m": "memory",
        "--memory": "memory",
        "--network": "network",
        "--entrypoint": "entrypoint",
        "--mount": "mount",
        "-v": "volume",
        "--volume": "volume",
        "-e": "env",
        "--env": "env",
        "-w": "cwd",
        "--workdir": "cwd",
        "--cwd": "cwd",
        "-u": "user",
        "--user": "user",
    },
    flags={
        "-i": "interactive",
        "--interactive": "interactive",
        "-t": "tty",
        "--tty": "tty",
        "-d": "detach",
        "--detach": "detach",
        "--rm": "remove",
        "--remove": "remove",
        "--debug": "debug",
    },
    passthrough_after=1,
)


def create(args: list[str]) -> int:
    parsed = parse(args, CREATE)
    require_positionals(parsed, 1, "image", "create")
    image, *arguments = parsed.positionals
    name = parsed.last("name") or str(uuid.uuid4())
    if not NAME_PATTERN.match(name):
        raise coded(
            "invalidArgument", f"container ID {name} is not a valid container ID"
        )
    if state.find(name) is not None:
        raise coded("exists", f"container with id {name} already exists")
    docker_args = ["create", "--name", name, "--pull", "never", "--network", "none"]
    docker_args += _labels(parsed, image)
    docker_args += _resources(parsed)
    docker_args += _mounts(parsed)
    docker_args += process_options(parsed)
    if parsed.last("entrypoint"):
        docker_args += ["--entrypoint", parsed.last("entrypoint") or ""]
    if "remove" in parsed.flags:
        docker_args.append("--rm")
    if state.docker("image", "inspect", image).returncode != 0:
        # The real CLI pulls a missing image from its registry; there is none here.
        raise coded("notFound", f"image with reference {image}")
    result = state.docker(*docker_args, image, *arguments)
    if result.returncode != 0:
        raise coded(
            "internalError", f"failed to create container {name}", result.stderr.strip()
        )
    print(name)
    return 0


def _labels(parsed: Parsed, image: str) -> list[str]:
    args = ["--label", f"{state.HOME_LABEL}={state.sim_home()}"]
    args += ["--label", f"{state.META_PREFIX}image={image}"]
    keys = []
    for label in parsed.all("label"):
        if not label:
            raise coded("invalidArgument", "label cannot be an empty string")
        if len(label.split("=")) > 2:
            raise coded("invalidArgument", f"invalid label format {label}")
        args += ["--label", label]
        keys.append(label.split("=")[0])
    # Docker adds the image's labels to the container; `list` shows only these.
    args += ["--label", f"{state.META_PREFIX}labels={json.dumps(keys)}"]
    networks = parsed.all("network") or ["default"]
    if "none" in networks and len(networks) > 1:
        raise coded(
            "unsupported", "no other networks may be created along with network none"
        )
    for network in networks:
        if network not in ("none", "default"):
            # Not from a source: the simulator has no user-defined networks.
            raise coded("notFound", f"network {network} not found")
    args += ["--label", f"{state.META_PREFIX}network={networks[0]}"]
    return args


def _resources(parsed: Parsed) -> list[str]:
    args: list[str] = []
    cpus_text = parsed.last("cpus")
    if cpus_text is not None:
        cpus = require_int(cpus_text, "-c <cpus>", "create")
        args += ["--label", f"{state.META_PREFIX}cpus={cpus}"]
        args += ["--cpus", str(min(cpus, os.cpu_count() or 1))]
    memory_text = parsed.last("memory")
    if memory_text is not None:
        memory = _memory_bytes(memory_text)
        args += ["--label", f"{state.META_PREFIX}memory={memory}"]
        args += ["--memory", str(max(memory, DOCKER_MIN_MEMORY))]
    return args


def _memory_bytes(text: str) -> int:
    match = MEMORY_PATTERN.match(text.strip())
    if match is None:
        raise coded("invalidArgument", f"invalid memory size {text}")
    value = float(match.group(1)) * MEMORY_UNITS[match.group(2).lower()]
    # The CLI keeps whole MiB.
    return int(value) >> 20 << 20


def _mounts(parsed: Parsed) -> list[str]:
    args: list[str] = []
    for mount in parsed.all("mount"):
        args += ["--mount", _docker_mount(mount)]
    for volume in parsed.all("volume"):
        source, _, rest = volume.partition(":")
        if not source.startswith("/"):
            raise SimulatorError("the simulator supports only host-folder volumes", 64)
        _require_folder(source)
        args += ["--volume", f"{source}:{rest}"]
    return args


def _docker_mount(mount: str) -> str:
    """Translate `type=bind,source=S,target=T,readonly` (Parser.mount) for Docker."""
    directives: dict[str, str] = {"type": "virtiofs"}
    for part in mount.split(","):
        key, _, value = part.partition("=")
        key = {
            "src": "source",
            "dst": "target",
            "destination": "target",
            "readonly": "ro",
        }.get(key, key)
        if key not in ("type", "source", "target", "ro"):
            raise coded(
                "invalidArgument", f"unknown directive {key} when parsing mount {mount}"
            )
        directives[key] = value
    if directives["type"] not in ("bind", "virtiofs"):
        raise SimulatorError(
            f"the simulator supports only bind mounts, not {directives['type']}", 64
        )
    source = directives.get("source", "")
    _require_folder(source)
    docker_mount = f"type=bind,source={source},target={directives.get('target', '')}"
    return docker_mount + (",readonly" if "ro" in directives else "")


def _require_folder(path: str) -> None:
    if not Path(path).is_dir():
        # Not from a source: virtiofs shares folders, so the CLI rejects the rest.
        raise coded("invalidArgument", f"path '{path}' is not a directory")


def process_options(parsed: Parsed) -> list[str]:
    args: list[str] = []
    for env in parsed.all("env"):
        args += ["--env", env]
    if parsed.last("cwd"):
        args += ["--workdir", parsed.last("cwd") or ""]
    if parsed.last("user"):
        args += ["--user", parsed.last("user") or ""]
    if "interactive" in parsed.flags:
        args.append("--interactive")
    if "tty" in parsed.flags:
        args.append("--tty")
    return args
