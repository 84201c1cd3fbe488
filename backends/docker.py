"""The Docker backend: one container per execution, driven through the docker CLI.

The CLI honours DOCKER_HOST and the user's Docker context. The container's main
process only keeps it alive; the agent runs through `docker exec -d` under the
guest runner, so its output and exit status survive the engine process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from backends import guest
from backends.base import (
    EXECUTION_LABEL,
    INSTALL_LABEL,
    AgentState,
    AgentStatus,
    Machine,
    MachineSpec,
    OutputSink,
    Resource,
)
from backends.process import ProcessResult, kill_process_group, run_process
from engine.bundle import Bundle, extract_safely, write_bundle
from engine.exceptions import (
    AgentLostError,
    BackendError,
    BackendUnavailableError,
    ImageNotFoundError,
    MachineDeleteError,
    UploadError,
)

logger = logging.getLogger(__name__)

GUEST_ROOT = "/engine"
SHARES_ROOT = "/engine/shares"
# Keeps the container running between steps; `docker rm -f` ends it.
KEEPALIVE = ["-c", "while :; do sleep 3600; done"]
READY_POLL_SECONDS = 0.02
# Container states (`.State.Status`) that a repeated cloning step reuses: the
# booting step's `docker start` works on each. Other states, such as `dead` or
# `paused`, make cloning delete the container and create it again.
REUSABLE_STATES = frozenset({"created", "running", "exited"})

# Changes the owner of the bundle root and of everything in it except the shares
# folder; -h changes links themselves, never their targets.
_CHOWN_BUNDLE_SCRIPT = (
    'cd "$1" && chown -h "$2" . && '
    'find . -mindepth 1 -maxdepth 1 ! -name shares -exec chown -R -h "$2" {} +'
)


class DockerBackend:
    name: ClassVar[str] = "docker"

    def __init__(self, *, image: str, network: str = "none", docker: str = "docker"):
        self.image = image
        self.network = network
        self.docker = docker

    def check_available(self) -> None:
        if shutil.which(self.docker) is None:
            raise BackendUnavailableError(
                f"{self.docker!r} not found on PATH: install Docker "
                "(on Debian: apt-get install docker.io)",
                backend=self.name,
            )

    # -- steps ------------------------------------------------------------

    async def create(self, spec: MachineSpec) -> Machine:
        """Create the container, or reuse the one an earlier attempt created."""
        existing = await self._inspect(spec.name)
        if existing is not None:
            labels = existing.get("Config", {}).get("Labels") or {}
            if labels.get(EXECUTION_LABEL) != spec.execution_id:
                raise BackendError(
                    f"container name {spec.name!r} is taken by a container that "
                    "does not belong to this execution; remove it with "
                    f"`docker rm -f {spec.name}`",
                    backend=self.name,
                    execution_id=spec.execution_id,
                    resource=spec.name,
                )
            status = existing.get("State", {}).get("Status")
            if status in REUSABLE_STATES:
                details = {"container_id": existing.get("Id"), "reused": True}
                return Machine(spec.name, spec, details=details)
            logger.warning(
                "container of an earlier attempt is %s; creating it again",
                status,
                extra={"action": "recreate", "resource": spec.name},
            )
            await self.delete_by_name(spec.name, spec.execution_id)
        result = await self._docker(*self._create_args(spec), check=False)
        if result.returncode != 0:
            raise self._create_error(spec, result)
        return Machine(spec.name, spec, details={"container_id": result.stdout_text})

    def _create_args(self, spec: MachineSpec) -> list[str]:
        args = ["create", "--name", spec.name, "--pull", "never"]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        args += ["--network", spec.network or self.network]
        if spec.cpus is not None:
            args += ["--cpus", str(spec.cpus)]
        if spec.memory is not None:
            args += ["--memory", spec.memory]
        for share in spec.shares:
            mount = (
                f"type=bind,source={share.host_path},target={SHARES_ROOT}/{share.name}"
            )
            args += ["--mount", mount + (",readonly" if share.read_only else "")]
        args += ["--entrypoint", "/bin/sh", spec.image or self.image, *KEEPALIVE]
        return args

    def _create_error(self, spec: MachineSpec, result: ProcessResult) -> BackendError:
        image = spec.image or self.image
        if "No such image" in result.stderr_text or "not found" in result.stderr_text:
            return ImageNotFoundError(
                f"docker image {image!r} not found: build it with "
                "scripts/build-base-image.sh or set ENGINE_DOCKER_IMAGE / --image",
                **self._error_fields(spec.execution_id, spec.name, result),
            )
        return BackendError(
            f"docker create failed for image {image!r}: {result.stderr_text}",
            **self._error_fields(spec.execution_id, spec.name, result),
        )

    async def start(self, machine: Machine) -> Machine:
        await self._docker("start", machine.name, machine=machine)
        return machine

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine:
        deadline = time.monotonic() + timeout
        while True:
            result = await self._docker("exec", machine.name, "true", check=False)
            if result.returncode == 0:
                ready_at = time.time()
                break
            if time.monotonic() > deadline:
                raise BackendError(
                    f"container {machine.name} did not answer `docker exec` "
                    f"within {timeout:.0f} s: {result.stderr_text}",
                    **self._error_fields(
                        machine.spec.execution_id, machine.name, result
                    ),
                )
            await asyncio.sleep(READY_POLL_SECONDS)
        address = await self._address(machine)
        return dataclasses.replace(
            machine.with_details(ready_at=ready_at), address=address
        )

    async def _address(self, machine: Machine) -> str | None:
        result = await self._docker(
            "container",
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            machine.name,
            machine=machine,
        )
        addresses = result.stdout_text.split()
        return addresses[0] if addresses else None

    async def upload(self, machine: Machine, bundle: Bundle) -> None:
        with tempfile.TemporaryFile() as archive:
            write_bundle(bundle, archive, prefix=GUEST_ROOT.lstrip("/"))
            archive.seek(0)
            result = await self._docker(
                "cp", "-", f"{machine.name}:/", stdin_file=archive, check=False
            )
        if result.returncode != 0:
            raise UploadError(
                f"docker cp into {machine.name} failed: {result.stderr_text}",
                **self._error_fields(machine.spec.execution_id, machine.name, result),
            )
        await self._give_bundle_to_image_user(machine)

    async def _give_bundle_to_image_user(self, machine: Machine) -> None:
        """Make the bundle the image user's: `docker cp` leaves it owned by root.

        Without this, an image that runs as another user (USER agent) could not
        write its results. Shares are left alone: they are host folders.
        """
        ids = await self._docker(
            "exec", machine.name, "/bin/sh", "-c", "id -u; id -g", machine=machine
        )
        uid, gid = [*ids.stdout_text.split(), "0", "0"][:2]
        if uid == "0":
            return
        result = await self._docker(
            "exec",
            "--user",
            "0",
            machine.name,
            "/bin/sh",
            "-c",
            _CHOWN_BUNDLE_SCRIPT,
            "chown-bundle",
            GUEST_ROOT,
            f"{uid}:{gid}",
            check=False,
        )
        if result.returncode != 0:
            raise UploadError(
                f"giving {GUEST_ROOT} to user {uid} in {machine.name} failed: "
                f"{result.stderr_text}",
                **self._error_fields(machine.spec.execution_id, machine.name, result),
            )

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        argv = guest.run_argv(GUEST_ROOT, command)
        await self._docker("exec", "-d", machine.name, *argv, machine=machine)
        return machine.with_details(agent_started_at=time.time())

    async def agent_status(self, machine: Machine) -> AgentStatus:
        argv = guest.status_argv(GUEST_ROOT)
        result = await self._docker("exec", machine.name, *argv, check=False)
        if result.returncode != 0:
            # The container is gone or stopped, so the agent is too.
            return AgentStatus(AgentState.MISSING, start_error=result.stderr_text)
        return guest.parse_agent_status(result.stdout_text)

    async def wait_agent(
        self, machine: Machine, output: OutputSink, offsets: tuple[int, int] = (0, 0)
    ) -> AgentStatus:
        received = list(offsets)
        while True:
            argv = guest.follow_argv(GUEST_ROOT, (received[0], received[1]))
            await self._follow(machine, argv, output, received)
            status = await self.agent_status(machine)
            if status.state is AgentState.EXITED:
                return status
            if status.state is AgentState.MISSING:
                raise AgentLostError(
                    f"agent in {machine.name} is gone and left no exit status",
                    backend=self.name,
                    execution_id=machine.spec.execution_id,
                    resource=machine.name,
                )
            logger.warning(
                "agent output stream ended early; following again",
                extra={"action": "refollow", "resource": machine.name},
            )

    async def _follow(
        self,
        machine: Machine,
        argv: list[str],
        output: OutputSink,
        received: list[int],
    ) -> None:
        process = await asyncio.create_subprocess_exec(
            self.docker,
            "exec",
            machine.name,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            await asyncio.gather(
                _pump(process.stdout, "stdout", 0, output, received),
                _pump(process.stderr, "stderr", 1, output, received),
            )
            await process.wait()
        finally:
            await kill_process_group(process)

    async def collect(
        self, machine: Machine, paths: tuple[str, ...], destination: Path
    ) -> None:
        for path in paths:
            await self._collect_one(machine, path, destination)

    async def _collect_one(
        self, machine: Machine, path: str, destination: Path
    ) -> None:
        relative = PurePosixPath(path)
        target = destination.joinpath(*relative.parts[:-1])
        with tempfile.TemporaryFile() as archive:
            process = await asyncio.create_subprocess_exec(
                self.docker,
                "cp",
                f"{machine.name}:{GUEST_ROOT}/{relative}",
                "-",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=archive,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            try:
                _, stderr = await process.communicate()
            finally:
                await kill_process_group(process)
            if process.returncode != 0:
                if b"Could not find the file" in stderr or b"No such" in stderr:
                    logger.debug("nothing to collect at %s", path)
                    return
                raise BackendError(
                    f"docker cp of {path} from {machine.name} failed: "
                    f"{stderr.decode(errors='replace').strip()}",
                    backend=self.name,
                    execution_id=machine.spec.execution_id,
                    resource=machine.name,
                )
            archive.seek(0)
            extract_safely(archive, target)

    async def delete(self, machine: Machine) -> None:
        await self.delete_by_name(machine.name, machine.spec.execution_id)

    async def delete_by_name(self, name: str, execution_id: str | None = None) -> None:
        result = await self._docker("rm", "-f", name, check=False)
        if result.returncode == 0 or "No such container" in result.stderr_text:
            return
        raise MachineDeleteError(
            f"docker rm -f {name} failed: {result.stderr_text}",
            **self._error_fields(execution_id, name, result),
        )

    async def list_resources(self, install_id: str) -> list[Resource]:
        result = await self._docker(
            "ps",
            "--all",
            "--no-trunc",
            "--filter",
            f"label={INSTALL_LABEL}={install_id}",
            "--format",
            "{{json .}}",
        )
        return [_resource(line) for line in result.stdout_text.splitlines() if line]

    # -- docker CLI -------------------------------------------------------

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        """Return `docker container inspect` of `name`, or None if it does not exist."""
        result = await self._docker(
            "container", "inspect", "--format", "{{json .}}", name, check=False
        )
        if result.returncode != 0:
            if "No such" in result.stderr_text:
                return None
            raise self._unavailable_or_error(result, None, name)
        return json.loads(result.stdout_text or "null") or {}

    async def _docker(
        self,
        *args: str,
        check: bool = True,
        machine: Machine | None = None,
        stdin_file: object | None = None,
    ) -> ProcessResult:
        argv = [self.docker, *args]
        try:
            if stdin_file is not None:
                result = await _run_with_stdin_file(argv, stdin_file)
            else:
                result = await run_process(argv)
        except FileNotFoundError as exc:
            raise BackendUnavailableError(
                f"{self.docker!r} not found on PATH: install Docker "
                "(on Debian: apt-get install docker.io)",
                backend=self.name,
            ) from exc
        if "Cannot connect to the Docker daemon" in result.stderr_text:
            raise self._unavailable_or_error(result, machine, None)
        if check and result.returncode != 0:
            raise self._unavailable_or_error(result, machine, None)
        return result

    def _unavailable_or_error(
        self, result: ProcessResult, machine: Machine | None, name: str | None
    ) -> BackendError:
        execution_id = machine.spec.execution_id if machine else None
        resource = machine.name if machine else name
        fields = self._error_fields(execution_id, resource, result)
        if "Cannot connect to the Docker daemon" in result.stderr_text:
            return BackendUnavailableError(
                "the Docker daemon does not answer: start dockerd, or point "
                f"DOCKER_HOST at a running one ({result.stderr_text})",
                **fields,
            )
        return BackendError(
            f"`{' '.join(result.argv[:3])}` failed with exit code "
            f"{result.returncode}: {result.stderr_text}",
            **fields,
        )

    def _error_fields(
        self, execution_id: str | None, resource: str | None, result: ProcessResult
    ) -> dict[str, object]:
        return {
            "backend": self.name,
            "execution_id": execution_id,
            "resource": resource,
            "command": list(result.argv),
            "exit_code": result.returncode,
            "stderr": result.stderr_text,
        }


async def _pump(
    stream: asyncio.StreamReader,
    name: str,
    index: int,
    output: OutputSink,
    received: list[int],
) -> None:
    while chunk := await stream.read(65536):
        received[index] += len(chunk)
        outcome = output(name, chunk)
        if asyncio.iscoroutine(outcome):
            await outcome


async def _run_with_stdin_file(argv: list[str], stdin_file: object) -> ProcessResult:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin_file,  # type: ignore[arg-type]
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = await process.communicate()
    finally:
        await kill_process_group(process)
    return ProcessResult(tuple(argv), process.returncode or 0, stdout, stderr)


def _resource(line: str) -> Resource:
    data = json.loads(line)
    labels = dict(
        item.split("=", 1) for item in data.get("Labels", "").split(",") if "=" in item
    )
    created = data.get("CreatedAt", "")
    return Resource(
        backend=DockerBackend.name,
        name=data.get("Names", ""),
        install_id=labels.get(INSTALL_LABEL),
        execution_id=labels.get(EXECUTION_LABEL),
        created_at=_parse_docker_time(created),
        running=data.get("State") == "running",
    )


def _parse_docker_time(text: str) -> datetime | None:
    # docker ps prints e.g. "2026-12-04 16:20:01 +0000 UTC".
    try:
        return datetime.strptime(" ".join(text.split()[:3]), "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None
