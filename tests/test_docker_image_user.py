"""Docker images that run as a user other than root, as the agent CLI image does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.records import ShareRequest
from engine.states import State
from tests.helpers import containers_of, request, settings_for

pytestmark = pytest.mark.docker

NOBODY_IMAGE = "engine-base-nobody:test"


@pytest.fixture(scope="module")
def nobody_image(docker_host: str) -> str:
    """engine-base with `USER 65534`, made with docker commit."""
    container = subprocess.run(
        ["docker", "create", "engine-base:latest"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        subprocess.run(
            ["docker", "commit", "--change", "USER 65534", container, NOBODY_IMAGE],
            capture_output=True,
            check=True,
        )
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True, check=True)
    return NOBODY_IMAGE


async def test_bundle_belongs_to_image_user(tmp_path: Path, nobody_image: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "host-file").write_text("host\n")
    owner = (shared / "host-file").stat().st_uid
    script = "id -u; echo written > output/answer.txt; ls -ln /engine/shares/s"
    settings = settings_for(tmp_path, container_runtime="docker")
    async with Engine(settings) as engine:
        record = await engine.run(
            request(
                "sh",
                "-c",
                script,
                image=nobody_image,
                shares=(ShareRequest(name="s", host_path=shared),),
                timeout=60,
            )
        )
    run_dir = tmp_path / "data" / "runs" / record.id
    assert record.state is State.DONE, record.error_message
    assert record.exit_code == 0
    stdout = (run_dir / "result" / "stdout").read_text().splitlines()
    assert stdout[0] == "65534"
    assert (run_dir / "work" / "output" / "answer.txt").read_text() == "written\n"
    # The share is a host folder, so its owner stays as it was.
    assert (shared / "host-file").stat().st_uid == owner
    assert containers_of(record.id) == []
