"""The Apple container backend: one lightweight Linux VM per execution.

Drives Apple's `container` CLI (github.com/apple/container, macOS on Apple silicon),
which runs every container in its own virtual machine. The container's main process
only keeps it alive. The agent runs under the guest runner through `exec -d`, so
its output and exit status survive the engine process.

    cloning      container image inspect IMAGE (the engine never pulls), then
                 container create --name NAME --label ... --network none
                 --entrypoint /bin/sh IMAGE -c KEEPALIVE
    booting      container start NAME
    ip-ready     container exec NAME true, until it succeeds
    uploading    container exec -i NAME tar -x -f - -C / (the bundle on stdin)
    executing    container exec -d NAME /bin/sh /engine/run.sh CMD...; follow.sh
                 streams the output and status.sh reports the exit status
    collecting   container exec NAME tar -c -f - -C /engine PATH, extracted safely
    deleting     container delete --force NAME; "not found" counts as done
    listing      container list --all --format json, filtered by install label

Files travel as tar streams through `exec`, so the image needs `tar`: `container cp`
exists only in 2026 releases and copies plain files, not tar streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import ClassVar

from backends import guest
from backends.apple_container.cli import INSTALL_HINT, ContainerCLI, error_fields
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
from backends.guest import GUEST_ROOT, KEEPALIVE, SHARES_ROOT
from backends.process import ProcessResult, kill_process_group
from engine.bundle import Bundle, extract_safely, write_bundle
from engine.exceptions import (
    BackendError,
    BackendUnavailableError,
    ImageNotFoundError,
    MachineDeleteError,
    UploadError,
)

logger = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.05
DELETE_ATTEMPTS = 3
DELETE_RETRY_SECONDS = 0.5


class AppleContainerBackend:
    name: ClassVar[str] = "apple-container"

    def __init__(self, *, image: str, program: str = "container"):
        self.image = image
        self.program = program
        self.cli = ContainerCLI(program)

    def check_available(self) -> None:
        if shutil.which(self.program) is None:
            raise BackendUnavailableError(
                f"{self.program!r} not found on PATH: {INSTALL_HINT}",
                backend=self.name,
            )

    # -- cloning and booting ------------------------------------------------

    async def create(self, spec: MachineSpec) -> Machine:
        existing = await self.cli.find(spec.name)
        if existing is not None:
            if existing.labels.get(EXECUTION_LABEL) != spec.execution_id:
                raise BackendError(
                    f"container name {spec.name!r} is taken by a container that "
                    "does not belong to this execution; remove it with "
                    f"`{self.program} delete --force {spec.name}`",
                    backend=self.name,
                    execution_id=spec.execution_id,
                    resource=spec.name,
                )
            return Machine(spec.name, spec, details={"reused": True})
        image = spec.image or self.image
        await self._require_image(spec, image)
        await self.cli.run(
            *self._create_args(spec, image),
            execution_id=spec.execution_id,
            resource=spec.name,
        )
        return Machine(spec.name, spec, details={"image": image})

    def _create_args(self, spec: MachineSpec, image: str) -> list[str]:
        args = ["create", "--name", spec.name]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        # `none` gives the VM no network attachment at all.
        args += ["--network", spec.network or "none"]
        if spec.cpus is not None:
            # The CLI takes whole CPUs only.
            args += ["--cpus", str(math.ceil(spec.cpus))]
        if spec.memory is not None:
            args += ["--memory", f"{memory_mebibytes(spec.memory)}M"]
        for share in spec.shares:
            if "," in str(share.host_path):
                raise BackendError(
                    f"share folder {str(share.host_path)!r} contains a comma, which "
                    "`--mount` cannot carry; rename the folder or share a symlink "
                    "to it that has no comma",
                    backend=self.name,
                    execution_id=spec.execution_id,
                    resource=spec.name,
                )
            target = f"{SHARES_ROOT}/{share.name}"
            mount = f"type=bind,source={share.host_path},target={target}"
            args += ["--mount", mount + (",readonly" if share.read_only else "")]
        args += ["--entrypoint", "/bin/sh", image, *KEEPALIVE]
        return args

    async def _require_image(self, spec: MachineSpec, image: str) -> None:
        """Raise ImageNotFoundError unless `image` is in the local image store.

        `container create` pulls a missing image from a registry, so the image is
        looked up first: a missing image fails at once and without network.
        """
        result = await self.cli.run(
            "image",
            "inspect",
            image,
            check=False,
            execution_id=spec.execution_id,
            resource=spec.name,
        )
        if result.returncode == 0:
            return
        raise ImageNotFoundError(
            f"image {image!r} not found in the local image store of Apple's "
            "container tool: pull or build it (see docs/backends/apple-container.md) "
            f"or set ENGINE_APPLE_IMAGE / --image ({result.stderr_text})",
            **error_fields(spec.execution_id, spec.name, result),
        )

    async def start(self, machine: Machine) -> Machine:
        await self.cli.run("start", machine.name, **_ids(machine))
        return machine

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.cli.run(
                "exec", machine.name, "true", check=False, **_ids(machine)
            )
            if result.returncode == 0:
                ready_at = time.time()
                break
            if "not found" in result.stderr_text or time.monotonic() > deadline:
                raise self.cli.error(
                    result,
                    f"container {machine.name} did not answer `exec` "
                    f"within {timeout:.0f} s",
                    **_ids(machine),
                )
            await asyncio.sleep(READY_POLL_SECONDS)
        entry = await self.cli.find(machine.name)
        address = entry.address if entry else None
        return dataclasses.replace(
            machine.with_details(ready_at=ready_at), address=address
        )

    # -- uploading and executing --------------------------------------------

    async def upload(self, machine: Machine, bundle: Bundle) -> None:
        with tempfile.TemporaryFile() as archive:
            write_bundle(bundle, archive, prefix=GUEST_ROOT.lstrip("/"))
            archive.seek(0)
            result = await self.cli.run(
                *("exec", "-i", machine.name, "tar", "-x", "-f", "-", "-C", "/"),
                check=False,
                stdin_file=archive,
                **_ids(machine),
            )
        if result.returncode != 0:
            raise self.cli.error(
                result,
                f"uploading the run bundle into {machine.name} failed",
                **_ids(machine),
                error_class=UploadError,
            )

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        argv = guest.run_argv(GUEST_ROOT, command)
        await self.cli.run("exec", "-d", machine.name, *argv, **_ids(machine))
        return machine.with_details(agent_started_at=time.time())

    async def agent_status(self, machine: Machine) -> AgentStatus:
        argv = guest.status_argv(GUEST_ROOT)
        result = await self.cli.run(
            "exec", machine.name, *argv, check=False, **_ids(machine)
        )
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
                raise guest.agent_lost(self.name, machine)
            logger.warning(
                "agent output stream ended early; following again",
                extra={"action": "refollow", "resource": machine.name},
            )

    async def _follow(
        self, machine: Machine, argv: list[str], output: OutputSink, received: list[int]
    ) -> None:
        process = await self.cli.spawn(
            ["exec", machine.name, *argv], stdout=asyncio.subprocess.PIPE
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

    # -- collecting -----------------------------------------------------------

    async def collect(
        self, machine: Machine, paths: tuple[str, ...], destination: Path
    ) -> None:
        for path in paths:
            await self._collect_one(machine, path, destination)

    async def _collect_one(
        self, machine: Machine, path: str, destination: Path
    ) -> None:
        relative = PurePosixPath(path)
        if relative.is_absolute() or ".." in relative.parts:
            raise BackendError(
                f"collect path {path!r} must be relative to {GUEST_ROOT} "
                "and must not contain `..`",
                **_ids(machine),
                backend=self.name,
            )
        args = ["exec", machine.name, "tar", "-c", "-f", "-", "-C", GUEST_ROOT, path]
        with tempfile.TemporaryFile() as archive:
            result = await self.cli.run_to_file(args, archive)
            if result.returncode != 0:
                if "No such file" in result.stderr_text:
                    logger.debug("nothing to collect at %s", path)
                    return
                raise self.cli.error(
                    result,
                    f"collecting {path} from {machine.name} failed",
                    **_ids(machine),
                )
            archive.seek(0)
            extract_safely(archive, destination)

    # -- deleting and listing -------------------------------------------------

    async def delete(self, machine: Machine) -> None:
        entry = await self.cli.find(machine.name)
        if entry is None:
            return
        owner = entry.labels.get(EXECUTION_LABEL)
        if owner != machine.spec.execution_id:
            # Cloning failed because another container has this name: keep it.
            logger.warning(
                "not deleting container %s: it belongs to execution %s",
                machine.name,
                owner,
                extra={"action": "delete_skipped", "resource": machine.name},
            )
            return
        await self.delete_by_name(machine.name, machine.spec.execution_id)

    async def delete_by_name(self, name: str, execution_id: str | None = None) -> None:
        """Delete container `name`; one that does not exist counts as deleted.

        A failed delete is retried: users report `delete --force` failing with
        "deleteProcess: exec ... does not exist" after `exec` and then succeeding
        (wcgomes/apple-devcontainers pull request 50).
        """
        result: ProcessResult | None = None
        for attempt in range(DELETE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(DELETE_RETRY_SECONDS)
            result = await self.cli.run(
                "delete",
                "--force",
                name,
                check=False,
                execution_id=execution_id,
                resource=name,
            )
            if result.returncode == 0 or "not found" in result.stderr_text:
                return
            if await self.cli.find(name) is None:
                return
            logger.warning(
                "container delete failed; retrying: %s",
                result.stderr_text,
                extra={"action": "delete_retry", "resource": name},
            )
        assert result is not None
        raise self.cli.error(
            result,
            f"deleting container {name} failed after {DELETE_ATTEMPTS} attempts",
            execution_id,
            name,
            error_class=MachineDeleteError,
        )

    async def list_resources(self, install_id: str) -> list[Resource]:
        return [
            Resource(
                backend=self.name,
                name=entry.name,
                install_id=install_id,
                execution_id=entry.labels.get(EXECUTION_LABEL),
                created_at=entry.created_at,
                running=entry.state == "running",
            )
            for entry in await self.cli.list()
            if entry.labels.get(INSTALL_LABEL) == install_id
        ]


def memory_mebibytes(text: str) -> int:
    """Convert a Docker-style size such as `512m`, `2g` or a byte count to MiB."""
    units = {"b": 1 / (1 << 20), "k": 1 / 1024, "m": 1, "g": 1024}
    suffix = text[-1].lower()
    if suffix in units:
        return max(1, int(float(text[:-1]) * units[suffix]))
    return max(1, int(text) >> 20)


def _ids(machine: Machine) -> dict[str, str]:
    return {"execution_id": machine.spec.execution_id, "resource": machine.name}


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
