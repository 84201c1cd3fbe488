"""Start an Arize Phoenix trace viewer on loopback and read spans back from it.

Tests export an engine run to Phoenix over OTLP/HTTP and then read the spans back
through Phoenix's REST API, so the check runs against a real viewer. Phoenix lives in
its own venv, made by ``scripts/install-phoenix.sh``. This module uses the standard
library only, so it does not need Phoenix's dependencies in the engine's venv.

Facts below were checked against arize-phoenix 20.26.1:

- ``POST /v1/traces`` accepts OTLP protobuf and stores spans in a background task, so
  spans show up in the REST API shortly after the export returns, not at once.
- The project is the ``x-project-name`` request header, else the
  ``openinference.project.name`` resource attribute, else ``default``. Phoenix
  keeps no other resource attribute (``service.name`` is lost) and drops span links.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_PROJECT = "default"
VENV_ENV_VAR = "PHOENIX_VENV"
DEFAULT_VENV = Path.home() / ".cache" / "engine-tests" / "phoenix-venv"

# Settings that keep Phoenix from contacting anything but the test. Read from
# phoenix/config.py in arize-phoenix 20.26.1.
_OFFLINE_ENV = {
    # No FullStory or Scarf.sh pixels in the UI.
    "PHOENIX_TELEMETRY_ENABLED": "false",
    # No Google Fonts in the UI, and no download of the WASM sandbox at startup.
    "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
    "PHOENIX_ALLOWED_SANDBOX_PROVIDERS": "NONE",
    # No assistant, so no hosted docs MCP server and no LLM provider calls.
    "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
    "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
    "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
    "PHOENIX_AGENTS_DISABLE_BASH": "true",
    "PHOENIX_ENABLE_MCP_SERVER": "false",
    "PHOENIX_ENABLE_PROMETHEUS": "false",
}


class PhoenixError(RuntimeError):
    """Phoenix could not be started, stopped or queried."""


class PhoenixHTTPError(PhoenixError):
    """A Phoenix REST call returned an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PhoenixServer:
    """A running ``phoenix serve`` process.

    HTTP (UI, REST API, OTLP/HTTP) listens on 127.0.0.1 only.
    """

    # NOTE: the OTLP/gRPC listener binds to all interfaces ("[::]:grpc_port"), because
    # arize-phoenix 20.26.1 hard-codes that address in phoenix/server/grpc_server.py
    # and has no setting for it. Export over otlp_http_endpoint instead.

    pid: int
    base_url: str
    otlp_http_endpoint: str
    grpc_port: int
    working_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def log_text(self) -> str:
        """Return the server's combined stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")


def phoenix_venv() -> Path:
    """Return the venv that ``scripts/install-phoenix.sh`` fills."""
    return Path(os.environ.get(VENV_ENV_VAR) or DEFAULT_VENV)


def phoenix_executable(venv: Path | None = None) -> Path:
    """Return the ``phoenix`` command in the venv, or raise if it is missing."""
    executable = (venv or phoenix_venv()) / "bin" / "phoenix"
    if not executable.is_file():
        raise PhoenixError(
            f"Phoenix not found at {executable}; run scripts/install-phoenix.sh "
            f"or set {VENV_ENV_VAR} to the venv that contains it"
        )
    return executable


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _server_env(port: int, grpc_port: int, working_dir: Path) -> dict[str, str]:
    # Inherited PHOENIX_* and OTEL_* variables could point Phoenix at another
    # database or make it export its own traces elsewhere, so none are passed on.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PHOENIX_", "OTEL_"))
    }
    env.update(_OFFLINE_ENV)
    env.update(
        {
            "PHOENIX_HOST": LOOPBACK,
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": str(working_dir),
            "PHOENIX_SQL_DATABASE_URL": f"sqlite:///{working_dir}/phoenix.db",
        }
    )
    return env


def start_phoenix(
    working_dir: Path | None = None,
    *,
    venv: Path | None = None,
    startup_timeout: float = 120.0,
) -> PhoenixServer:
    """Start ``phoenix serve`` on free loopback ports and wait until it is ready.

    ``working_dir`` contains the SQLite database and the server log. When it is None,
    a new temporary directory is made. It is not deleted, so the log stays readable
    after a failure, and the caller removes it.

    Raise ``PhoenixError`` when the server exits or does not answer within
    ``startup_timeout`` seconds.
    """
    executable = phoenix_executable(venv)
    if working_dir is None:
        working_dir = Path(tempfile.mkdtemp(prefix="phoenix-"))
    working_dir.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    grpc_port = free_loopback_port()
    log_path = working_dir / "phoenix.log"
    with log_path.open("wb") as log_file:
        # A new session makes the server a process group leader, so stop_phoenix
        # can end it and any child it forks through its own PID.
        process = subprocess.Popen(
            [str(executable), "serve"],
            env=_server_env(port, grpc_port, working_dir),
            cwd=working_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://{LOOPBACK}:{port}"
    server = PhoenixServer(
        pid=process.pid,
        base_url=base_url,
        otlp_http_endpoint=f"{base_url}/v1/traces",
        grpc_port=grpc_port,
        working_dir=working_dir,
        log_path=log_path,
        process=process,
    )
    logger.info("phoenix starting", extra={"pid": process.pid, "url": base_url})
    try:
        _wait_until_ready(server, startup_timeout)
    except BaseException:
        stop_phoenix(server)
        raise
    return server


def _wait_until_ready(server: PhoenixServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PhoenixError(
                f"phoenix serve exited with code {server.process.returncode} "
                f"before it was ready; see {server.log_path}"
            )
        try:
            with urllib.request.urlopen(f"{server.base_url}/readyz", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise PhoenixError(
        f"phoenix serve at {server.base_url} was not ready after {timeout:.0f} s; "
        f"see {server.log_path}"
    )


def stop_phoenix(server: PhoenixServer, timeout: float = 15.0) -> None:
    """Stop the server by its PID: SIGTERM, then SIGKILL after ``timeout`` seconds.

    The signal goes to the process group whose leader is ``server.pid``, which
    ``start_phoenix`` created, so only processes this module started are signalled.
    """
    if server.process.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning(
            "phoenix ignored SIGTERM, sending SIGKILL", extra={"pid": server.pid}
        )
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(timeout=timeout)
    logger.info("phoenix stopped", extra={"pid": server.pid})


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        message = f"GET {url} failed with HTTP {exc.code}: {detail}"
        raise PhoenixHTTPError(message, exc.code) from exc
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise PhoenixError(f"GET {url} returned a JSON {kind}, expected an object")
    return body


def list_spans(
    base_url: str,
    project: str = DEFAULT_PROJECT,
    *,
    trace_id: str | None = None,
    page_size: int = 100,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Return all spans of ``project`` in the order Phoenix stored them.

    Follows ``next_cursor`` until the last page.

    Uses ``GET /v1/projects/{project}/spans``. Each dict has ``name``,
    ``context.trace_id``, ``context.span_id``, ``parent_id``, ``start_time``,
    ``end_time`` (ISO 8601), ``status_code``, ``attributes`` (flat dotted keys) and
    ``events``. ``trace_id`` is lowercase hex; when given, only that trace is
    returned. A project that does not exist yet raises ``PhoenixHTTPError`` with
    status 404.
    """
    if not 1 <= page_size <= 1000:
        raise ValueError(f"page_size must be between 1 and 1000, got {page_size}")
    path = urllib.parse.quote(project, safe="")
    query: dict[str, str] = {"limit": str(page_size), "sort": "id", "order": "asc"}
    if trace_id is not None:
        query["trace_id"] = trace_id
    spans: list[dict[str, Any]] = []
    while True:
        url = f"{base_url}/v1/projects/{path}/spans?{urllib.parse.urlencode(query)}"
        body = _get_json(url, timeout)
        spans.extend(body["data"])
        cursor = body.get("next_cursor")
        if not cursor:
            return spans
        query["cursor"] = cursor


def trace_ui_url(base_url: str, trace_id: str) -> str:
    """Return the Phoenix UI address that opens the trace with this hex id.

    The UI looks up the trace's project and redirects to
    ``/projects/{project id}/traces/{trace_id}``.
    """
    return f"{base_url}/redirects/traces/{trace_id}"


def wait_for_spans(
    base_url: str,
    project: str,
    trace_id: str,
    count: int,
    *,
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll until ``trace_id`` has at least ``count`` spans, then return them all.

    Phoenix stores exported spans in the background, so a read right after the
    export can miss some. Raise ``PhoenixError`` with the last count on time-out.
    """
    deadline = time.monotonic() + timeout
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            spans = list_spans(base_url, project, trace_id=trace_id)
        except PhoenixHTTPError as exc:
            # The project is made when its first span is stored.
            if exc.status != 404:
                raise
        if len(spans) >= count:
            return spans
        time.sleep(0.25)
    raise PhoenixError(
        f"trace {trace_id} in project {project!r} has {len(spans)} spans after "
        f"{timeout:.0f} s, expected at least {count}"
    )
