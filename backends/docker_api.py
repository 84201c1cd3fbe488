"""Docker Engine API calls for the Docker backend, with errors translated.

A daemon that does not respond raises BackendUnavailableError, and an HTTP error
raises BackendError, or DockerAPIError where the caller passes `raw=True` to
look at the status itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from backends.base import MachineSpec
from backends.docker_http import (
    DockerAPIError,
    DockerConnectionError,
    DockerHTTP,
    Endpoint,
    Response,
    resolve_endpoint,
)
from engine.exceptions import BackendError, BackendUnavailableError

BACKEND = "docker"


class EngineAPI:
    """The Engine API requests that the Docker backend makes."""

    def __init__(self, endpoint: Endpoint | None = None, docker: str = "docker"):
        self._endpoint = endpoint
        self.docker = docker

    @property
    def endpoint(self) -> Endpoint:
        """The fixed endpoint, else the one the environment names now.

        Like the docker CLI, which reads DOCKER_HOST on every call, a changed
        environment takes effect with the next request.
        """
        return self._endpoint or resolve_endpoint(docker=self.docker)

    @property
    def http(self) -> DockerHTTP:
        return DockerHTTP(self.endpoint)

    async def call(
        self,
        method: str,
        path: str,
        spec: MachineSpec | None,
        *,
        raw: bool = False,
        **options: Any,
    ) -> Response:
        """Send one request; `spec` names the execution and machine in errors."""
        try:
            return await self.http.request(method, path, **options)
        except DockerConnectionError as exc:
            raise self.unavailable(exc, spec) from exc
        except DockerAPIError as exc:
            if raw:
                raise
            raise self.error(exc, spec) from exc

    async def inspect(self, name: str, spec: MachineSpec | None) -> dict[str, Any]:
        response = await self.call("GET", f"/containers/{name}/json", spec)
        return response.json() or {}

    async def create_exec(
        self,
        spec: MachineSpec,
        argv: list[str],
        *,
        attach: bool,
        raw: bool = False,
        user: str | None = None,
    ) -> str:
        """Create an exec of `argv` in the machine's container; return its id.

        It runs as the container's user unless `user` names another.
        """
        body: dict[str, Any] = {
            "Cmd": argv,
            "AttachStdin": False,
            "AttachStdout": attach,
            "AttachStderr": attach,
            "Tty": False,
        }
        if user is not None:
            body["User"] = user
        path = f"/containers/{spec.name}/exec"
        response = await self.call("POST", path, spec, raw=raw, json_body=body)
        return response.json()["Id"]

    async def start_detached(self, exec_id: str, spec: MachineSpec) -> None:
        """Start an exec and return once its process runs."""
        start = {"Detach": True, "Tty": False}
        await self.call("POST", f"/exec/{exec_id}/start", spec, json_body=start)

    async def stream_exec(
        self,
        spec: MachineSpec,
        argv: list[str],
        on_frame: Callable[[int, bytes], Awaitable[None]],
        user: str | None = None,
    ) -> str:
        """Run `argv` attached, passing each (stream, data) frame to `on_frame`.

        Returns the exec id. Raises DockerAPIError when the container is gone
        or not running.
        """
        exec_id = await self.create_exec(spec, argv, attach=True, raw=True, user=user)
        start = {"Detach": False, "Tty": False}
        try:
            await self.http.stream("POST", f"/exec/{exec_id}/start", start, on_frame)
        except DockerConnectionError as exc:
            raise self.unavailable(exc, spec) from exc
        return exec_id

    async def run(
        self, spec: MachineSpec, argv: list[str], user: str | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` in the container; return its exit code, stdout and stderr.

        Raises DockerAPIError when the container is gone or not running.
        """
        streams: dict[int, list[bytes]] = {1: [], 2: []}

        async def collect(stream: int, data: bytes) -> None:
            streams.setdefault(stream, []).append(data)

        exec_id = await self.stream_exec(spec, argv, collect, user)
        info = await self.exec_state(exec_id, spec, raw=True)
        code = info.get("ExitCode")
        return (
            code if isinstance(code, int) else -1,
            b"".join(streams[1]),
            b"".join(streams[2]),
        )

    async def exec_state(
        self, exec_id: str, spec: MachineSpec, *, raw: bool = False
    ) -> dict[str, Any]:
        """Return an exec's state, with `Running` and `ExitCode`."""
        response = await self.call("GET", f"/exec/{exec_id}/json", spec, raw=raw)
        return response.json() or {}

    def unavailable(
        self, exc: DockerConnectionError, spec: MachineSpec | None
    ) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"the Docker daemon does not respond at {self.endpoint}: start dockerd, "
            f"or point DOCKER_HOST at a running one ({exc})",
            backend=BACKEND,
            execution_id=spec.execution_id if spec else None,
            resource=spec.name if spec else None,
        )

    def error(self, exc: DockerAPIError, spec: MachineSpec | None) -> BackendError:
        return BackendError(
            f"Docker Engine API {exc.method} {exc.path} failed with HTTP "
            f"{exc.status}: {exc.message}",
            **error_fields(
                exc, spec.execution_id if spec else None, spec and spec.name
            ),
        )


def error_fields(
    exc: DockerAPIError, execution_id: str | None, resource: str | None
) -> dict[str, Any]:
    """Return the BackendError fields that describe a failed request."""
    return {
        "backend": BACKEND,
        "execution_id": execution_id,
        "resource": resource,
        "command": [exc.method, exc.path],
        "exit_code": exc.status,
        "stderr": exc.message,
    }
