"""A small HTTP/1.1 client for the Docker Engine API, on asyncio streams.

It reaches the daemon the way the docker CLI would: through DOCKER_HOST, else
the current Docker context, else /var/run/docker.sock. Unix sockets and plain
`tcp://` are spoken to directly. Every other endpoint (`ssh://`, TLS) goes
through `docker system dial-stdio`, which makes the CLI open the connection and
pass bytes through its stdin and stdout, so the CLI's own settings still apply.

Each request opens one connection and closes it after the response, because a
connection to a local socket costs far less than the request itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import quote, urlencode, urlsplit

from backends.process import kill_process_group

# Docker Engine 20.10 speaks API 1.41; newer engines still accept it.
API_VERSION = "1.41"
DEFAULT_SOCKET = "/var/run/docker.sock"
CHUNK_SIZE = 1 << 16
# Upper bound for a response held in memory; archives go to files instead.
MAX_BODY = 64 << 20


class DockerConnectionError(Exception):
    """The daemon could not be reached at the endpoint."""


class DockerAPIError(Exception):
    """The daemon returned an HTTP error status."""

    def __init__(self, method: str, path: str, status: int, message: str):
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    """The daemon's address: a unix socket, a TCP address, or the docker CLI."""

    kind: Literal["unix", "tcp", "cli"]
    # Socket path, host name, or the docker CLI program.
    address: str
    port: int = 0
    # DOCKER_HOST as the user would write it, for messages.
    url: str = ""

    def __str__(self) -> str:
        if self.kind == "cli":
            return f"{self.url or 'the current context'} (through `docker`)"
        return self.url


def resolve_endpoint(
    environ: Mapping[str, str] | None = None, docker: str = "docker"
) -> Endpoint:
    """Return the endpoint that the docker CLI would use in this environment."""
    env = os.environ if environ is None else environ
    # The CLI turns TLS on with DOCKER_TLS_VERIFY or DOCKER_TLS set to anything.
    tls = bool(env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_TLS"))
    host = env.get("DOCKER_HOST")
    if host:
        return _endpoint_for(host, tls, docker)
    context = env.get("DOCKER_CONTEXT") or _current_context(env)
    if context in (None, "", "default"):
        return _endpoint_for(f"unix://{DEFAULT_SOCKET}", tls, docker)
    found = _context_host(env, context)
    if found is None:
        return Endpoint("cli", docker, url=f"context {context!r}")
    host, context_tls = found
    return _endpoint_for(host, tls or context_tls, docker)


def _endpoint_for(url: str, tls: bool, docker: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path:
        return Endpoint("unix", parts.path, url=url)
    if parts.scheme == "tcp" and parts.hostname and not tls:
        return Endpoint("tcp", parts.hostname, parts.port or 2375, url=url)
    return Endpoint("cli", docker, url=url)


def _config_dir(env: Mapping[str, str]) -> Path:
    configured = env.get("DOCKER_CONFIG")
    return Path(configured) if configured else Path.home() / ".docker"


def _current_context(env: Mapping[str, str]) -> str | None:
    try:
        config = json.loads((_config_dir(env) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    context = config.get("currentContext") if isinstance(config, dict) else None
    return context if isinstance(context, str) else None


def _context_host(env: Mapping[str, str], context: str) -> tuple[str, bool] | None:
    """Return the Docker host of a named context and whether it uses TLS."""
    # The CLI stores each context under the SHA-256 of its name.
    digest = hashlib.sha256(context.encode()).hexdigest()
    contexts = _config_dir(env) / "contexts"
    try:
        meta = json.loads((contexts / "meta" / digest / "meta.json").read_text())
        host = meta["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(host, str):
        return None
    return host, (contexts / "tls" / digest / "docker").is_dir()


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class _Connection:
    """One connection to the daemon, closed by `close`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        process: asyncio.subprocess.Process | None = None,
    ):
        self.reader = reader
        self.writer = writer
        self.process = process

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        if self.process is not None:
            await kill_process_group(self.process)

    async def failure_detail(self) -> str:
        """Return what `docker system dial-stdio` printed on stderr, if anything."""
        if self.process is None or self.process.stderr is None:
            return ""
        with contextlib.suppress(Exception):
            data = await asyncio.wait_for(self.process.stderr.read(), 5)
            return data.decode(errors="replace").strip()
        return ""


class DockerHTTP:
    """A client for the Engine API of one endpoint."""

    def __init__(self, endpoint: Endpoint, api_version: str = API_VERSION):
        self.endpoint = endpoint
        self.prefix = f"/v{api_version}"

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        json_body: object = None,
        upload: IO[bytes] | None = None,
        download: IO[bytes] | None = None,
    ) -> Response:
        """Send one request and read the whole response.

        `upload` is sent as an application/x-tar body. With `download`, a
        successful response body is written there instead of kept in memory.
        Raises DockerAPIError for a status of 400 or more.
        """
        connection = await self._connect()
        try:
            await self._send(connection, method, path, query, json_body, upload)
            status, headers = await self._read_head(connection, method, path)
            target = download if download is not None and status < 400 else None
            body = await _read_body(connection.reader, method, status, headers, target)
        finally:
            await connection.close()
        if status >= 400:
            raise DockerAPIError(method, path, status, _error_message(body))
        return Response(status, headers, body)

    async def stream(
        self,
        method: str,
        path: str,
        json_body: object,
        on_frame: Callable[[int, bytes], Awaitable[None]],
    ) -> None:
        """Pass each (stream, data) frame of an attached exec to `on_frame`.

        Stream 1 is stdout and 2 is stderr. The daemon takes the connection
        over after the response head and closes it when the process exits.
        """
        connection = await self._connect()
        try:
            extra = {"Connection": "Upgrade", "Upgrade": "tcp"}
            await self._send(connection, method, path, None, json_body, None, extra)
            status, headers = await self._read_head(connection, method, path)
            if status >= 400:
                body = await _read_body(connection.reader, method, status, headers)
                raise DockerAPIError(method, path, status, _error_message(body))
            async for stream, data in _frames(connection.reader):
                await on_frame(stream, data)
        finally:
            await connection.close()

    async def _connect(self) -> _Connection:
        endpoint = self.endpoint
        try:
            if endpoint.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(endpoint.address)
                return _Connection(reader, writer)
            if endpoint.kind == "tcp":
                reader, writer = await asyncio.open_connection(
                    endpoint.address, endpoint.port
                )
                return _Connection(reader, writer)
            process = await asyncio.create_subprocess_exec(
                endpoint.address,
                "system",
                "dial-stdio",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise DockerConnectionError(f"{endpoint}: {exc}") from exc
        assert process.stdin is not None and process.stdout is not None
        return _Connection(process.stdout, process.stdin, process)

    async def _send(
        self,
        connection: _Connection,
        method: str,
        path: str,
        query: Mapping[str, str] | None,
        json_body: object,
        upload: IO[bytes] | None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        target = self.prefix + quote(path)
        if query:
            target += "?" + urlencode(query)
        headers = {"Host": "docker", "User-Agent": "engine"}
        headers["Connection"] = "close"
        headers.update(extra or {})
        body = b""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        elif upload is not None:
            headers["Content-Type"] = "application/x-tar"
            headers["Content-Length"] = str(os.fstat(upload.fileno()).st_size)
        elif method in ("POST", "PUT"):
            headers["Content-Length"] = "0"
        head = f"{method} {target} HTTP/1.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer = connection.writer
        try:
            writer.write((head + "\r\n").encode() + body)
            if upload is not None:
                while chunk := upload.read(CHUNK_SIZE):
                    writer.write(chunk)
                    await writer.drain()
            await writer.drain()
        except OSError as exc:
            detail = await connection.failure_detail()
            raise DockerConnectionError(f"{self.endpoint}: {detail or exc}") from exc

    async def _read_head(
        self, connection: _Connection, method: str, path: str
    ) -> tuple[int, dict[str, str]]:
        reader = connection.reader
        try:
            line = await reader.readline()
            while line.startswith(b"HTTP/1.1 100"):
                await _read_headers(reader)
                line = await reader.readline()
        except OSError as exc:
            raise DockerConnectionError(f"{self.endpoint}: {exc}") from exc
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            detail = await connection.failure_detail()
            raise DockerConnectionError(
                f"{self.endpoint}: no HTTP response to {method} {path}"
                + (f": {detail}" if detail else "")
            )
        return int(parts[1]), await _read_headers(reader)


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()


async def _read_body(
    reader: asyncio.StreamReader,
    method: str,
    status: int,
    headers: Mapping[str, str],
    target: IO[bytes] | None = None,
) -> bytes:
    """Read a response body by chunked encoding, Content-Length, or to the end."""
    if method == "HEAD" or status in (101, 204, 304):
        return b""
    sink = _Sink(target)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while size := int((await reader.readline()).split(b";")[0].strip(), 16):
            await _copy(reader, size, sink)
            await reader.readexactly(2)
        await _read_headers(reader)
    elif "content-length" in headers:
        await _copy(reader, int(headers["content-length"]), sink)
    else:
        while chunk := await reader.read(CHUNK_SIZE):
            sink.write(chunk)
    return sink.value()


async def _copy(reader: asyncio.StreamReader, size: int, sink: _Sink) -> None:
    while size > 0:
        chunk = await reader.read(min(size, CHUNK_SIZE))
        if not chunk:
            raise DockerConnectionError("the daemon closed the connection mid-body")
        sink.write(chunk)
        size -= len(chunk)


class _Sink:
    """A response body, kept in memory or written to a file."""

    def __init__(self, target: IO[bytes] | None):
        self.target = target
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self.target is not None:
            self.target.write(chunk)
            return
        self.size += len(chunk)
        if self.size > MAX_BODY:
            raise DockerConnectionError(f"response body larger than {MAX_BODY} bytes")
        self.parts.append(chunk)

    def value(self) -> bytes:
        return b"".join(self.parts)


async def _frames(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, bytes]]:
    """Split Docker's multiplexed stream: an 8-byte header, then the payload."""
    while True:
        try:
            header = await reader.readexactly(8)
        except asyncio.IncompleteReadError:
            return
        stream, size = header[0], struct.unpack(">I", header[4:])[0]
        try:
            yield stream, await reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            yield stream, exc.partial
            return


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return body.decode(errors="replace").strip()
