"""The container subcommands besides `create`, run on the simulator's Docker daemon.

Messages follow apple/container's sources where they were readable; the few
marked "not from a source" are the simulator's own wording.
"""

from __future__ import annotations

import json
import os
import sys
import uuid

from . import docker_state as state
from .arguments import Parsed, Spec, parse, require_int, require_positionals
from .create import process_options
from .errors import SimulatorError, coded, container_not_found, described

EXEC = Spec(
    "exec",
    options={
        "-e": "env",
        "--env": "env",
        "-w": "cwd",
        "--workdir": "cwd",
        "--cwd": "cwd",
        "-u": "user",
        "--user": "user",
    },
    flags={
        "-d": "detach",
        "--detach": "detach",
        "-i": "interactive",
        "--interactive": "interactive",
        "-t": "tty",
        "--tty": "tty",
        "--debug": "debug",
    },
    passthrough_after=1,
)
START = Spec(
    "start",
    flags={
        "-a": "attach",
        "--attach": "attach",
        "-i": "interactive",
        "--interactive": "interactive",
        "--debug": "debug",
    },
)
STOP = Spec(
    "stop",
    options={"-s": "signal", "--signal": "signal", "-t": "time", "--time": "time"},
    flags={"-a": "all", "--all": "all", "--debug": "debug"},
)
DELETE = Spec(
    "delete",
    flags={
        "-a": "all",
        "--all": "all",
        "-f": "force",
        "--force": "force",
        "-v": "volumes",
        "--volumes": "volumes",
        "--debug": "debug",
    },
)
LIST = Spec(
    "list",
    options={"--format": "format"},
    flags={
        "-a": "all",
        "--all": "all",
        "-q": "quiet",
        "--quiet": "quiet",
        "--debug": "debug",
    },
)
IMAGE_INSPECT = Spec("image inspect", flags={"--debug": "debug"})


def start(args: list[str]) -> int:
    parsed = parse(args, START)
    require_positionals(parsed, 1, "container-id", "start")
    name = parsed.positionals[0]
    info = state.find(name)
    if info is None:
        raise SimulatorError(container_not_found(name))
    if not state.is_running(info):
        result = state.docker("start", name)
        if result.returncode != 0:
            raise coded(
                "internalError",
                f"failed to start container {name}",
                result.stderr.strip(),
            )
    print(name)
    return 0


def stop(args: list[str]) -> int:
    parsed = parse(args, STOP)
    names = _targets(parsed, "stop", running_only=True)
    seconds = require_int(parsed.last("time") or "5", "-t <time>", "stop")
    errors = []
    for name in names:
        if state.find(name) is None:
            errors.append(
                described(
                    "internalError",
                    "failed to stop container",
                    container_not_found(name),
                )
            )
            continue
        docker_args = ["stop", "--time", str(seconds)]
        if parsed.last("signal"):
            docker_args += ["--signal", parsed.last("signal") or "SIGTERM"]
        state.docker(*docker_args, name)
        print(name)
    return _report(errors)


def delete(args: list[str]) -> int:
    parsed = parse(args, DELETE)
    force = "force" in parsed.flags
    names = _targets(parsed, "delete", running_only=False)
    errors = []
    for name in names:
        info = state.find(name)
        if info is None:
            errors.append(
                described(
                    "internalError",
                    "failed to delete container",
                    container_not_found(name),
                )
            )
        elif state.is_running(info) and not force:
            if "all" in parsed.flags:
                continue
            # Not from a source: the wording of this refusal.
            errors.append(
                described(
                    "internalError",
                    "failed to delete container",
                    described("invalidState", f"container {name} is running"),
                )
            )
        elif _injected_delete_failure(name):
            errors.append(
                described(
                    "internalError",
                    "failed to delete container",
                    described(
                        "internalError",
                        f"deleteProcess: exec {uuid.uuid4()} does not exist in "
                        f"container {name}",
                    ),
                )
            )
        else:
            state.docker("rm", "--force", name)
            print(name)
    return _report(errors)


def _targets(parsed: Parsed, command: str, running_only: bool) -> list[str]:
    if parsed.positionals and "all" in parsed.flags:
        raise coded(
            "invalidArgument",
            "explicitly supplied container ID(s) conflict with the --all flag",
        )
    if "all" in parsed.flags:
        infos = state.inspect_all(state.container_names())
        return [
            info["Name"].lstrip("/")
            for info in infos
            if state.is_running(info) or not running_only
        ]
    if not parsed.positionals and command == "delete":
        raise coded("invalidArgument", "no containers specified and --all not supplied")
    return list(dict.fromkeys(parsed.positionals))


def _injected_delete_failure(name: str) -> bool:
    """Fail the first CONTAINER_SIM_DELETE_FAILURES deletes of each container."""
    failures = int(os.environ.get("CONTAINER_SIM_DELETE_FAILURES", "0") or 0)
    if failures <= 0:
        return False
    counter = state.sim_home() / "delete-failures" / name
    counter.parent.mkdir(parents=True, exist_ok=True)
    done = int(counter.read_text()) if counter.exists() else 0
    if done >= failures:
        return False
    counter.write_text(str(done + 1))
    return True


def _report(errors: list[str]) -> int:
    if errors:
        raise SimulatorError("\n".join(errors))
    return 0


def list_containers(args: list[str]) -> int:
    parsed = parse(args, LIST)
    output_format = parsed.last("format") or "table"
    if output_format not in ("json", "table"):
        raise SimulatorError(
            f"The value '{output_format}' is invalid for '--format <format>'", 64
        )
    infos = state.inspect_all(state.container_names())
    if output_format == "json":
        # The JSON form lists every container, with or without --all.
        shape = os.environ.get("CONTAINER_SIM_JSON_SHAPE", "2026")
        print(
            json.dumps(
                [state.render(info, shape) for info in infos],
                sort_keys=True,
                separators=(",", ":"),
            )
        )
        return 0
    visible = [
        info for info in infos if "all" in parsed.flags or state.is_running(info)
    ]
    if "quiet" in parsed.flags:
        for info in visible:
            print(info["Name"].lstrip("/"))
        return 0
    _print_table(visible)
    return 0


def _print_table(infos: list[dict]) -> None:
    rows = [["ID", "IMAGE", "OS", "ARCH", "STATE", "IP", "CPUS", "MEMORY", "STARTED"]]
    for info in infos:
        entry = state.render(info, "2026")
        configuration = entry["configuration"]
        resources = configuration["resources"]
        rows.append(
            [
                configuration["id"],
                configuration["image"]["reference"],
                "linux",
                configuration["platform"]["architecture"],
                entry["status"]["state"],
                "",
                str(resources["cpus"]),
                f"{resources['memoryInBytes'] >> 20} MB",
                entry["status"].get("startedDate", ""),
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def exec_process(args: list[str]) -> int:
    parsed = parse(args, EXEC)
    require_positionals(parsed, 2, "arguments", "exec")
    name, *command = parsed.positionals
    info = state.find(name)
    if info is None:
        raise SimulatorError(container_not_found(name))
    if not state.is_running(info):
        raise coded("invalidState", f"container {name} is not running")
    docker_args = ["exec"]
    for flag in ("interactive", "tty", "detach"):
        if flag in parsed.flags:
            docker_args.append(f"--{flag}")
    docker_args += process_options(Parsed(options=parsed.options))
    docker_args += [name, *command]
    if "detach" in parsed.flags:
        result = state.docker(*docker_args)
        if result.returncode != 0:
            raise coded(
                "internalError",
                f"failed to exec process in {name}",
                result.stderr.strip(),
            )
        print(name)
        return 0
    # Standard input, output and error pass straight through, like the real exec.
    sys.stdout.flush()
    program = state.docker_program()
    os.execvp(program, [program, *docker_args])
    return 127  # not reached


def image_inspect(args: list[str]) -> int:
    parsed = parse(args, IMAGE_INSPECT)
    require_positionals(parsed, 1, "images", "image inspect")
    found, missing = [], []
    for name in parsed.positionals:
        result = state.docker("image", "inspect", name)
        if result.returncode != 0:
            missing.append(name)
            continue
        data = json.loads(result.stdout)[0]
        found.append(
            {
                "name": state.normalize_reference(name),
                "index": {
                    "digest": data.get("Id", ""),
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                },
            }
        )
    if found:
        print(json.dumps(found, sort_keys=True, separators=(",", ":")))
    if missing:
        for name in missing:
            print(
                f"error: image inspect failed name={name} "
                f"error={described('notFound', f'image with reference {name}')}",
                file=sys.stderr,
            )
        raise coded("notFound", f"image(s) not found: {', '.join(missing)}")
    return 0
