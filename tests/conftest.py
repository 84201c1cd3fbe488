"""Session fixtures for the real services: a Docker daemon and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.dockerd import ensure_base_image, ensure_docker_daemon
from tests.support.postgres import PostgresNotFoundError, start_postgres


@pytest.fixture(scope="session")
def docker_host() -> Iterator[str]:
    """DOCKER_HOST of a daemon that has the base image, set in os.environ."""
    daemon = ensure_docker_daemon()
    previous = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = daemon.docker_host
    try:
        ensure_base_image(daemon.docker_host)
        yield daemon.docker_host
    finally:
        if previous is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = previous
        daemon.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a private PostgreSQL server for this session."""
    try:
        server = start_postgres()
    except PostgresNotFoundError as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    try:
        yield server.url
    finally:
        server.stop()
