"""The Docker backend's Engine API client: endpoints, transports and errors."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from backends.base import MachineSpec, machine_name
from backends.docker import DockerBackend, memory_bytes
from backends.docker_http import (
    DEFAULT_SOCKET,
    DockerAPIError,
    DockerHTTP,
    Endpoint,
    resolve_endpoint,
)
from engine.engine import Engine
from engine.exceptions import BackendError
from engine.observers import RunObserver
from engine.states import State
from tests.helpers import containers_of, request, settings_for

# -- endpoints ----------------------------------------------------------------


def test_docker_host_unix_socket():
    endpoint = resolve_endpoint({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"})
    assert endpoint.kind == "unix"
    assert endpoint.address == "/run/user/1000/docker.sock"


def test_docker_host_tcp_address():
    endpoint = resolve_endpoint({"DOCKER_HOST": "tcp://127.0.0.1:2400"})
    assert endpoint.kind == "tcp"
    assert (endpoint.address, endpoint.port) == ("127.0.0.1", 2400)


def test_tcp_default_port():
    assert resolve_endpoint({"DOCKER_HOST": "tcp://localhost"}).port == 2375


@pytest.mark.parametrize(
    "environ",
    [
        {"DOCKER_HOST": "ssh://admin@build-host"},
        {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"},
        {"DOCKER_HOST": "npipe:////./pipe/docker_engine"},
    ],
)
def test_other_endpoints_go_through_cli(environ):
    endpoint = resolve_endpoint(environ, docker="/usr/bin/docker")
    assert endpoint.kind == "cli"
    assert endpoint.address == "/usr/bin/docker"
    assert environ["DOCKER_HOST"] in str(endpoint)


def _write_context(config: Path, name: str, host: str, tls: bool = False) -> None:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    endpoints = {"docker": {"Host": host, "SkipTLSVerify": False}}
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": endpoints}))
    if tls:
        (config / "contexts" / "tls" / digest / "docker").mkdir(parents=True)


def test_current_context_is_followed(tmp_path):
    _write_context(tmp_path, "colima", "unix:///home/me/.colima/docker.sock")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "colima"}))
    endpoint = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.kind == "unix"
    assert endpoint.address == "/home/me/.colima/docker.sock"


def test_docker_context_variable_wins(tmp_path):
    _write_context(tmp_path, "remote", "tcp://127.0.0.1:2600")
    (tmp_path / "config.json").write_text(json.dumps({"currentContext": "other"}))
    environ = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote"}
    assert resolve_endpoint(environ).port == 2600


def test_context_with_tls_goes_through_cli(tmp_path):
    _write_context(tmp_path, "secure", "tcp://127.0.0.1:2376", tls=True)
    environ = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "secure"}
    assert resolve_endpoint(environ).kind == "cli"


def test_unknown_context_goes_through_cli(tmp_path):
    environ = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "missing"}
    assert resolve_endpoint(environ).kind == "cli"


def test_default_socket_without_settings(tmp_path):
    endpoint = resolve_endpoint({"DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.kind == "unix"
    assert endpoint.address == DEFAULT_SOCKET


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512m", 512 << 20), ("1g", 1 << 30), ("64K", 64 << 10), ("1000", 1000)],
)
def test_memory_limit_in_bytes(text, expected):
    assert memory_bytes(text) == expected


# -- the HTTP client against a local server ---------------------------------


@contextlib.asynccontextmanager
async def _server(path: Path, response: bytes):
    """Serve `response` once per connection on a unix socket at `path`."""

    async def handle(reader, writer):
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, str(path))
    try:
        yield Endpoint("unix", str(path), url=f"unix://{path}")
    finally:
        server.close()
        await server.wait_closed()


async def test_chunked_body_is_joined(tmp_path):
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    )
    async with _server(tmp_path / "s", reply) as endpoint:
        response = await DockerHTTP(endpoint).request("GET", "/info")
    assert response.status == 200
    assert response.body == b"hello, world"


async def test_body_until_close(tmp_path):
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    async with _server(tmp_path / "s", reply) as endpoint:
        response = await DockerHTTP(endpoint).request("GET", "/info")
    assert response.body == b"all of it"


async def test_error_status_carries_message(tmp_path):
    body = b'{"message":"No such container: eng-x"}'
    reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    async with _server(tmp_path / "s", reply) as endpoint:
        with pytest.raises(DockerAPIError) as caught:
            await DockerHTTP(endpoint).request("GET", "/containers/eng-x/json")
    assert caught.value.status == 404
    assert caught.value.message == "No such container: eng-x"
    assert caught.value.path == "/containers/eng-x/json"


# -- the backend on a real daemon ---------------------------------------------


def docker_engine(tmp_path, **overrides) -> Engine:
    return Engine(settings_for(tmp_path, container_runtime="docker", **overrides))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tcp_proxy(socket_path: str):
    """Forward 127.0.0.1:PORT to the daemon's unix socket; yield the port."""

    async def handle(client_reader, client_writer):
        upstream_reader, upstream_writer = await asyncio.open_unix_connection(
            socket_path
        )
        await asyncio.gather(
            _pipe(client_reader, upstream_writer),
            _pipe(upstream_reader, client_writer),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.docker
async def test_tcp_docker_host_runs(tmp_path, docker_host, monkeypatch):
    async with tcp_proxy(urlsplit(docker_host).path) as port:
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
        async with docker_engine(tmp_path) as engine:
            record = await engine.run(request("sh", "-c", "echo over tcp"))
            backend = engine.backend("docker")
        # The docker CLI goes through the proxy too, so ask while it runs.
        leftover = await asyncio.to_thread(containers_of, record.id)
    run_dir = tmp_path / "data" / "runs" / record.id
    assert isinstance(backend, DockerBackend)
    assert backend.endpoint.kind == "tcp"
    assert record.state is State.DONE, record.error_message
    assert (run_dir / "result" / "stdout").read_text() == "over tcp\n"
    assert leftover == []


@pytest.mark.docker
async def test_cli_transport_runs(tmp_path, docker_host):
    endpoint = Endpoint("cli", "docker", url=docker_host)
    backend = DockerBackend(image="engine-base:latest", endpoint=endpoint)
    settings = settings_for(tmp_path, container_runtime="docker")
    async with Engine(settings, backends={"docker": backend}) as engine:
        record = await engine.run(request("sh", "-c", "echo through the cli; exit 4"))
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 4
    assert (run_dir / "result" / "stdout").read_text() == "through the cli\n"
    assert containers_of(record.id) == []


@pytest.mark.docker
async def test_refused_tcp_fails_in_cloning(tmp_path, docker_host, monkeypatch):
    # Port 1 on loopback: nothing listens there, so the connection is refused.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("true"))
    assert record.state is State.FAILED
    assert record.failed_state == "cloning"
    assert record.error_type == "backend_unavailable"
    assert "127.0.0.1:1" in record.error_message


def _spec(execution_id: str) -> MachineSpec:
    install_id = "benchtest1"
    return MachineSpec(
        name=machine_name(install_id, execution_id),
        execution_id=execution_id,
        install_id=install_id,
    )


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=60
    )


@pytest.mark.docker
async def test_foreign_container_name_is_rejected(docker_host):
    spec = _spec("foreign0000000001")
    _docker(
        "create",
        "--name",
        spec.name,
        "--network",
        "none",
        "--label",
        "engine.execution=other",
        "engine-base:latest",
    )
    backend = DockerBackend(image="engine-base:latest")
    try:
        with pytest.raises(BackendError) as caught:
            await backend.create(spec)
    finally:
        _docker("rm", "-f", spec.name)
    assert f"docker rm -f {spec.name}" in str(caught.value)


@pytest.mark.docker
async def test_own_container_is_reused(docker_host):
    spec = _spec("reused0000000001")
    backend = DockerBackend(image="engine-base:latest")
    first = await backend.create(spec)
    try:
        again = await backend.create(spec)
    finally:
        await backend.delete(first)
    assert "container_id" in first.details
    assert again.details["reused"] is True
    assert again.details["container_id"] == first.details["container_id"]


@pytest.mark.docker
async def test_high_exit_codes_are_confirmed(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        killed = await engine.run(request("sh", "-c", "exit 130"))
        own_127 = await engine.run(request("sh", "-c", "exit 127"))
    assert killed.state is State.DONE
    assert killed.exit_code == 130
    assert own_127.state is State.DONE
    assert own_127.exit_code == 127


@pytest.mark.docker
async def test_long_agent_output_is_streamed(tmp_path, docker_host):
    class Collector(RunObserver):
        def __init__(self):
            self.chunks: list[bytes] = []

        def on_output(self, run, stream, data):
            self.chunks.append(data)

    collector = Collector()
    script = "echo first; sleep 1; echo second"
    async with docker_engine(tmp_path) as engine:
        engine.observers.append(collector)
        record = await engine.run(request("sh", "-c", script))
    assert record.state is State.DONE, record.error_message
    assert b"".join(collector.chunks) == b"first\nsecond\n"


@pytest.mark.docker
async def test_missing_collect_path_is_skipped(tmp_path, docker_host):
    async with docker_engine(tmp_path) as engine:
        record = await engine.run(request("true", collect_paths=("work/absent",)))
    assert record.state is State.DONE, record.error_message
    assert not (tmp_path / "data" / "runs" / record.id / "work" / "absent").exists()
