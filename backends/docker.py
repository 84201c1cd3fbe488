"""The Docker backend: one container per execution, over the Docker Engine API.

Requests go to the daemon that the docker CLI would use (DOCKER_HOST, else the
current context), straight over its unix socket or TCP port, as set out in
`backends.docker_http`. Each `docker` process that this replaces took about
20 ms, and a run makes about ten calls.

The container's main process only keeps it alive. The agent runs in a detached
exec under the guest runner, so its output and exit status survive the engine
process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shutil
import tempfile
import time
from datetime import UTC, datetime
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
from backends.docker_api import EngineAPI, error_fields
from backends.docker_http import DockerAPIError, Endpoint
from backends.guest import GUEST_ROOT, KEEPALIVE, SHARES_ROOT
from engine.bundle import Bundle, extract_safely, write_bundle
from engine.exceptions import (
    BackendError,
    BackendUnavailableError,
    ImageNotFoundError,
    MachineDeleteError,
    UploadError,
)

logger = logging.getLogger(__name__)

READY_POLL_SECONDS = 0.02
# Container states (`.State.Status`) that a repeated cloning step reuses: the
# booting step's start works on each. Other states, such as `dead` or
# `paused`, make cloning delete the container and create it again.
REUSABLE_STATES = frozenset({"created", "running", "exited"})

# Changes the owner of the bundle root and of everything in it except the shares
# folder; -h changes links themselves, never their targets.
_CHOWN_BUNDLE_SCRIPT = (
    'cd "$1" && chown -h "$2" . && '
    'find . -mindepth 1 -maxdepth 1 ! -name shares -exec chown -R -h "$2" {} +'
)
# How long wait_agent polls the agent's exec before it follows the output.
FOLLOW_AFTER_SECONDS = 0.05
FINISHED_POLL_SECONDS = 0.005
# run.sh exits through `finish`, which writes result/exit-status first, with
# every code below this one. Higher codes may also mean that run.sh itself was
# killed, or that the command was not found, so status.sh confirms them.
TRUSTED_EXIT_CODES = 126
MEMORY_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class DockerBackend:
    name: ClassVar[str] = "docker"

    def __init__(
        self,
        *,
        image: str,
        network: str = "none",
        docker: str = "docker",
        endpoint: Endpoint | None = None,
    ):
        self.image = image
        self.network = network
        self.docker = docker
        self.api = EngineAPI(endpoint, docker)

    @property
    def endpoint(self) -> Endpoint:
        return self.api.endpoint

    def check_available(self) -> None:
        """Raise if the docker CLI is needed to reach the daemon and is missing.

        A daemon that does not respond fails the run in `cloning` instead, as a
        failed run the user can look at.
        """
        endpoint = self.endpoint
        if endpoint.kind == "cli" and shutil.which(self.docker) is None:
            raise BackendUnavailableError(
                f"{self.docker!r} not found on PATH, and it is needed to reach "
                f"{endpoint}: install Docker (on Debian: apt-get install "
                "docker.io)",
                backend=self.name,
            )

    # -- steps ------------------------------------------------------------

    async def create(self, spec: MachineSpec) -> Machine:
        """Create the container, or reuse the one an earlier attempt created.

        Creating comes first and the existing container is looked at only on a
        name conflict, which saves a request on every first attempt.
        """
        try:
            return await self._create(spec)
        except DockerAPIError as exc:
            if exc.status != 409:
                raise self._create_error(spec, exc) from exc
        reused = await self._reuse(spec)
        if reused is not None:
            return reused
        try:
            return await self._create(spec)
        except DockerAPIError as exc:
            raise self._create_error(spec, exc) from exc

    async def _create(self, spec: MachineSpec) -> Machine:
        response = await self.api.call(
            "POST",
            "/containers/create",
            spec,
            raw=True,
            query={"name": spec.name},
            json_body=self._body(spec),
        )
        return Machine(spec.name, spec, details={"container_id": response.json()["Id"]})

    async def _reuse(self, spec: MachineSpec) -> Machine | None:
        """Return the container of this name if this execution can reuse it.

        Deletes it and returns None when it is in a state that `start` cannot
        use, and raises if it belongs to another execution.
        """
        existing = await self.api.inspect(spec.name, spec)
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
        return None

    def _body(self, spec: MachineSpec) -> dict[str, Any]:
        host: dict[str, Any] = {"NetworkMode": spec.network or self.network}
        if spec.cpus is not None:
            host["NanoCpus"] = int(spec.cpus * 1e9)
        if spec.memory is not None:
            host["Memory"] = memory_bytes(spec.memory)
        if spec.shares:
            host["Mounts"] = [
                {
                    "Type": "bind",
                    "Source": str(share.host_path),
                    "Target": f"{SHARES_ROOT}/{share.name}",
                    "ReadOnly": share.read_only,
                }
                for share in spec.shares
            ]
        return {
            "Image": spec.image or self.image,
            "Entrypoint": ["/bin/sh"],
            "Cmd": KEEPALIVE,
            "Labels": spec.labels,
            "HostConfig": host,
        }

    def _create_error(self, spec: MachineSpec, exc: DockerAPIError) -> BackendError:
        image = spec.image or self.image
        fields = error_fields(exc, spec.execution_id, spec.name)
        if exc.status == 404 and "image" in exc.message.lower():
            return ImageNotFoundError(
                f"docker image {image!r} not found: build it with "
                "scripts/build-base-image.sh or set ENGINE_DOCKER_IMAGE / --image",
                **fields,
            )
        return BackendError(
            f"docker create failed for image {image!r}: {exc.message}", **fields
        )

    async def start(self, machine: Machine) -> Machine:
        # 304 means the container already runs, as after a resumed start.
        await self.api.call("POST", f"/containers/{machine.name}/start", machine.spec)
        return machine

    async def wait_ready(self, machine: Machine, timeout: float) -> Machine:
        """Wait until the container runs; then `docker exec` works in it.

        The probe is the container's state, which the daemon returns without
        starting a process in the container, as `docker exec true` did.
        """
        deadline = time.monotonic() + timeout
        while True:
            info = await self.api.inspect(machine.name, machine.spec)
            state = info.get("State") or {}
            if state.get("Running") and not state.get("Paused"):
                ready_at = time.time()
                break
            if state.get("Status") in ("exited", "dead"):
                raise BackendError(
                    f"container {machine.name} stopped with exit code "
                    f"{state.get('ExitCode')} before it was ready: "
                    f"{state.get('Error') or 'no error recorded'}",
                    backend=self.name,
                    execution_id=machine.spec.execution_id,
                    resource=machine.name,
                )
            if time.monotonic() > deadline:
                raise BackendError(
                    f"container {machine.name} was not running within "
                    f"{timeout:.0f} s: its state is {state.get('Status', 'unknown')}",
                    backend=self.name,
                    execution_id=machine.spec.execution_id,
                    resource=machine.name,
                )
            await asyncio.sleep(READY_POLL_SECONDS)
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        addresses = [
            n.get("IPAddress") for n in networks.values() if n.get("IPAddress")
        ]
        return dataclasses.replace(
            machine.with_details(ready_at=ready_at),
            address=addresses[0] if addresses else None,
        )

    async def upload(self, machine: Machine, bundle: Bundle) -> None:
        path = f"/containers/{machine.name}/archive"
        with tempfile.TemporaryFile() as archive:
            write_bundle(bundle, archive, prefix=GUEST_ROOT.lstrip("/"))
            archive.seek(0)
            try:
                await self.api.call(
                    "PUT",
                    path,
                    machine.spec,
                    raw=True,
                    query={"path": "/"},
                    upload=archive,
                )
            except DockerAPIError as exc:
                raise UploadError(
                    f"copying the bundle into {machine.name} failed: {exc.message}",
                    **error_fields(exc, machine.spec.execution_id, machine.name),
                ) from exc
        try:
            await self._give_bundle_to_image_user(machine)
        except DockerAPIError as exc:
            raise UploadError(
                f"giving {GUEST_ROOT} to the image's user in {machine.name} failed: "
                f"{exc.message}",
                **error_fields(exc, machine.spec.execution_id, machine.name),
            ) from exc

    async def _give_bundle_to_image_user(self, machine: Machine) -> None:
        """Make the bundle the image user's: the upload leaves it owned by root.

        Without this, an image that runs as another user (USER agent) could not
        write its results. Shares are left alone: they are host folders. The
        container's configured user shows a root image, the common case,
        without starting a process in it.
        """
        info = await self.api.inspect(machine.name, machine.spec)
        user = (info.get("Config") or {}).get("User") or ""
        if user.split(":")[0] in ("", "0", "root"):
            return
        _, ids, _ = await self.api.run(machine.spec, ["/bin/sh", "-c", "id -u; id -g"])
        uid, gid = [*ids.decode(errors="replace").split(), "0", "0"][:2]
        if uid == "0":
            return
        argv = ["/bin/sh", "-c", _CHOWN_BUNDLE_SCRIPT, "chown-bundle", GUEST_ROOT]
        code, _, stderr = await self.api.run(
            machine.spec, [*argv, f"{uid}:{gid}"], user="0"
        )
        if code != 0:
            raise UploadError(
                f"giving {GUEST_ROOT} to user {uid} in {machine.name} failed: "
                f"{stderr.decode(errors='replace').strip()}",
                backend=self.name,
                execution_id=machine.spec.execution_id,
                resource=machine.name,
            )

    async def start_agent(self, machine: Machine, command: list[str]) -> Machine:
        argv = guest.run_argv(GUEST_ROOT, command)
        exec_id = await self.api.create_exec(machine.spec, argv, attach=False)
        await self.api.start_detached(exec_id, machine.spec)
        return machine.with_details(agent_started_at=time.time(), agent_exec=exec_id)

    async def agent_status(self, machine: Machine) -> AgentStatus:
        argv = guest.status_argv(GUEST_ROOT)
        try:
            exit_code, stdout, stderr = await self.api.run(machine.spec, argv)
        except DockerAPIError as exc:
            # The container is gone or stopped, so the agent is too.
            return AgentStatus(AgentState.MISSING, start_error=exc.message)
        if exit_code != 0:
            return AgentStatus(AgentState.MISSING, start_error=stderr.decode().strip())
        return guest.parse_agent_status(stdout.decode(errors="replace"))

    async def wait_agent(
        self, machine: Machine, output: OutputSink, offsets: tuple[int, int] = (0, 0)
    ) -> AgentStatus:
        # An agent that exits within FOLLOW_AFTER_SECONDS needs no output
        # stream, which costs a process in the container: the runner passes on
        # its output from the collected files.
        status = await self._finished_agent(machine)
        waited = 0.0 if machine.details.get("agent_exec") else FOLLOW_AFTER_SECONDS
        while status is None and waited < FOLLOW_AFTER_SECONDS:
            await asyncio.sleep(FINISHED_POLL_SECONDS)
            waited += FINISHED_POLL_SECONDS
            status = await self._finished_agent(machine)
        received = list(offsets)
        while status is None:
            argv = guest.follow_argv(GUEST_ROOT, (received[0], received[1]))
            await self._follow(machine, argv, output, received)
            status = await self._finished_agent(machine) or await self.agent_status(
                machine
            )
            if status.state is AgentState.MISSING:
                raise guest.agent_lost(self.name, machine)
            if status.state is AgentState.RUNNING:
                logger.warning(
                    "agent output stream ended early; following again",
                    extra={"action": "refollow", "resource": machine.name},
                )
                status = None
        return status

    async def _finished_agent(self, machine: Machine) -> AgentStatus | None:
        """Return the agent's status from its exec if that shows it exited.

        Returns None while it runs, and when the exec is unknown (a resumed
        run) or its exit code needs status.sh to be read.
        """
        exec_id = machine.details.get("agent_exec")
        if not exec_id:
            return None
        try:
            info = await self.api.exec_state(exec_id, machine.spec, raw=True)
        except DockerAPIError:
            # Gone, as after a daemon restart: status.sh decides.
            return None
        code = info.get("ExitCode")
        if info.get("Running") or not isinstance(code, int):
            return None
        if code >= TRUSTED_EXIT_CODES or code < 0:
            status = await self.agent_status(machine)
            return status if status.state is AgentState.EXITED else None
        return AgentStatus(AgentState.EXITED, exit_code=code)

    async def _follow(
        self,
        machine: Machine,
        argv: list[str],
        output: OutputSink,
        received: list[int],
    ) -> None:
        async def deliver(stream: int, data: bytes) -> None:
            index = 0 if stream == 1 else 1
            received[index] += len(data)
            outcome = output("stdout" if index == 0 else "stderr", data)
            if asyncio.iscoroutine(outcome):
                await outcome

        try:
            await self.api.stream_exec(machine.spec, argv, deliver)
        except DockerAPIError as exc:
            # The container is gone, which the status check that follows reports.
            logger.debug("following the agent output failed: %s", exc)

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
        query = {"path": f"{GUEST_ROOT}/{relative}"}
        with tempfile.TemporaryFile() as archive:
            try:
                await self.api.call(
                    "GET",
                    f"/containers/{machine.name}/archive",
                    machine.spec,
                    raw=True,
                    query=query,
                    download=archive,
                )
            except DockerAPIError as exc:
                if exc.status == 404 and "No such container" not in exc.message:
                    logger.debug("nothing to collect at %s", path)
                    return
                raise BackendError(
                    f"copying {path} from {machine.name} failed: {exc.message}",
                    **error_fields(exc, machine.spec.execution_id, machine.name),
                ) from exc
            archive.seek(0)
            extract_safely(archive, target)

    async def delete(self, machine: Machine) -> None:
        await self.delete_by_name(machine.name, machine.spec.execution_id)

    async def delete_by_name(self, name: str, execution_id: str | None = None) -> None:
        path = f"/containers/{name}"
        try:
            await self.api.call("DELETE", path, None, raw=True, query={"force": "1"})
        except DockerAPIError as exc:
            if exc.status == 404:
                return
            raise MachineDeleteError(
                f"removing container {name} failed: {exc.message}",
                **error_fields(exc, execution_id, name),
            ) from exc

    async def list_resources(self, install_id: str) -> list[Resource]:
        filters = json.dumps({"label": [f"{INSTALL_LABEL}={install_id}"]})
        query = {"all": "1", "filters": filters}
        response = await self.api.call("GET", "/containers/json", None, query=query)
        return [_resource(item) for item in response.json() or []]


def memory_bytes(text: str) -> int:
    """Return a memory limit such as `512m` in bytes (binary units, as docker)."""
    unit = text[-1].lower()
    if unit in MEMORY_UNITS:
        return int(text[:-1]) * MEMORY_UNITS[unit]
    return int(text)


def _resource(item: dict[str, Any]) -> Resource:
    labels = item.get("Labels") or {}
    names = item.get("Names") or [""]
    created = item.get("Created")
    return Resource(
        backend=DockerBackend.name,
        name=names[0].lstrip("/"),
        install_id=labels.get(INSTALL_LABEL),
        execution_id=labels.get(EXECUTION_LABEL),
        created_at=datetime.fromtimestamp(created, UTC)
        if isinstance(created, int)
        else None,
        running=item.get("State") == "running",
    )
