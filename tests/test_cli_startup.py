"""`engine run` start-up: which libraries it imports, and its plain summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import run_cli

# Libraries that only some commands or settings need.
OPTIONAL = ("alembic", "rich", "opentelemetry")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path) -> dict[str, str]:
    return {
        "ENGINE_DATA_DIR": str(tmp_path / "data"),
        "ENGINE_DATABASE_URL": f"sqlite:///{tmp_path / 'engine.db'}",
        "ENGINE_TRACE_EXPORTER": "none",
    }


def _loaded_after(argv: list[str], env: dict[str, str]) -> list[str]:
    program = (
        "import sys\n"
        "from engine.cli.main import main\n"
        f"code = main({argv!r})\n"
        f"print(sorted(m for m in {OPTIONAL!r} if m in sys.modules), code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1].split(" ")


def test_run_imports_no_optional_library(tmp_path):
    env = _env(tmp_path)
    # The first run creates the database, which needs Alembic.
    run_cli("run", "--backend", "instant", "--", "true", env=env)
    loaded = _loaded_after(
        ["run", "--backend", "instant", "--", "true"], {**os.environ, **env}
    )
    assert loaded == ["[]", "0"]


def test_summary_is_plain_without_terminal(tmp_path):
    result = run_cli("run", "--backend", "instant", "--", "true", env=_env(tmp_path))
    stderr = result.stderr.decode()
    summary = stderr.splitlines()[-1]
    assert result.returncode == 0
    assert "\x1b[" not in stderr
    assert re.fullmatch(r"done in [0-9.]+ s: exit code 0, execution \w{16}", summary)


def test_every_command_has_its_module():
    from engine.cli.main import COMMAND_MODULES, build_parser

    parser = build_parser(["--help"])
    commands = next(
        action for action in parser._actions if action.dest == "command_name"
    )
    assert set(commands.choices) == set(COMMAND_MODULES)
