"""Checks that the test services start: a container runs and PostgreSQL runs a query."""

from __future__ import annotations

import subprocess

import sqlalchemy

from tests.support.dockerd import BASE_IMAGE


def test_base_image_runs_shell(docker_host: str) -> None:
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            BASE_IMAGE,
            "sh",
            "-c",
            "echo ok",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"


def test_postgres_runs_select(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            value = connection.execute(sqlalchemy.text("select 1")).scalar_one()
    finally:
        engine.dispose()

    assert value == 1
    assert engine.dialect.driver == "psycopg"
