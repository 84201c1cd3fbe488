"""Small builders shared by the tests."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from backends.instant import InstantBackend
from engine.engine import Engine
from engine.records import ExecutionRequest
from engine.settings import Settings


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "engine_data_dir": tmp_path / "data",
        "engine_database_url": f"sqlite:///{tmp_path / 'engine.db'}",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def request(*command: str, **fields: Any) -> ExecutionRequest:
    return ExecutionRequest(command=list(command or ("true",)), **fields)


@asynccontextmanager
async def instant_engine(tmp_path: Path, backend: InstantBackend | None = None, **kw):
    settings = settings_for(tmp_path, container_runtime="instant", **kw)
    engine = Engine(settings, backends={"instant": backend or InstantBackend()})
    try:
        yield engine
    finally:
        await engine.aclose()
