"""From a NanoClaw container input to an engine request: precedence and checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.exceptions import InvalidRequestError
from engine.nanoclaw.errors import GroupConfigError
from engine.nanoclaw.invocation import (
    GLOBAL_GUEST_PATH,
    GROUP_GUEST_PATH,
    HOME_GUEST_PATH,
    LAUNCHER_SCRIPT,
    SCHEDULED_TASK_PREFIX,
    InvocationOptions,
    build_invocation,
)
from engine.nanoclaw.protocol import ContainerInput
from tests.helpers import settings_for

PROMPT = "hello $(touch /tmp/x); `id` 'quoted'"


def container_input(**fields: object) -> ContainerInput:
    data = {
        "prompt": PROMPT,
        "groupFolder": "family",
        "chatJid": "120363@g.us",
        "isMain": False,
    }
    data.update(fields)
    return ContainerInput.model_validate(data)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with groups/family/, as NanoClaw's project root has."""
    monkeypatch.chdir(tmp_path)
    for name in (
        "ANTHROPIC_API_KEY",
        "CLAUDE_CODE_OAUTH_TOKEN",
        "ANTHROPIC_AUTH_TOKEN",
        "OPENAI_API_KEY",
        "CODEX_API_KEY",
        "OPENROUTER_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "groups" / "family").mkdir(parents=True)
    return tmp_path


def write_config(workdir: Path, container_config: dict[str, object]) -> None:
    path = workdir / "groups" / "family" / "config.json"
    path.write_text(json.dumps({"containerConfig": container_config}))


def build(workdir: Path, options: InvocationOptions | None = None, **settings):
    return build_invocation(
        container_input(),
        options or InvocationOptions(runtime="command", command=("cat",)),
        settings_for(workdir, **settings),
    )


def test_request_runs_launcher_with_prompt_on_stdin(workdir: Path) -> None:
    request = build(workdir).request(None)
    assert request.command == [
        "/bin/sh",
        "-c",
        LAUNCHER_SCRIPT,
        "nanoclaw-launcher",
        "../home",
        "group",
        "cat",
    ]
    assert request.stdin == PROMPT.encode()
    assert all(PROMPT not in arg for arg in request.command)
    assert "hello" not in json.dumps(request.stored_form())


def test_request_uploads_group_and_session_folders(workdir: Path) -> None:
    invocation = build(workdir)
    request = invocation.request(None)
    session_dir = workdir / "data" / "sessions" / "family"
    assert request.uploads == {
        HOME_GUEST_PATH: session_dir.resolve(),
        GROUP_GUEST_PATH: (workdir / "groups" / "family").resolve(),
    }
    assert set(request.collect_paths) == {HOME_GUEST_PATH, GROUP_GUEST_PATH}
    assert session_dir.stat().st_mode & 0o777 == 0o700
    assert request.group == "family"
    assert request.labels == {"nanoclaw.group": "family", "nanoclaw.runtime": "command"}


def test_global_folder_uploaded_not_collected(workdir: Path) -> None:
    (workdir / "groups" / "global").mkdir()
    request = build(workdir).request(None)
    assert request.uploads[GLOBAL_GUEST_PATH] == (workdir / "groups/global").resolve()
    assert GLOBAL_GUEST_PATH not in request.collect_paths


def test_missing_group_folder_is_created(workdir: Path) -> None:
    (workdir / "groups" / "family").rmdir()
    invocation = build(workdir)
    request = invocation.request(None)
    assert invocation.group_dir == (workdir / "groups" / "family").resolve()
    assert (workdir / "groups" / "family").is_dir()
    assert request.command[5] == "group"
    assert GROUP_GUEST_PATH in request.uploads


def test_group_path_that_is_a_file_is_rejected(workdir: Path) -> None:
    (workdir / "groups" / "family").rmdir()
    (workdir / "groups" / "family").write_text("not a folder")
    with pytest.raises(GroupConfigError) as caught:
        build(workdir)
    assert "family" in str(caught.value)


def test_claude_argv_resumes_session(workdir: Path) -> None:
    options = InvocationOptions(runtime="claude")
    request = build(workdir, options).request("0f8e2a4c-1b7d")
    agent_argv = request.command[6:]
    assert agent_argv[:2] == ["claude", "-p"]
    assert agent_argv[-2:] == ["--resume", "0f8e2a4c-1b7d"]


def test_program_after_dashes_replaces_cli_name(workdir: Path) -> None:
    options = InvocationOptions(runtime="claude", command=("/opt/fake", "--flag"))
    agent_argv = build(workdir, options).request(None).command[6:]
    assert agent_argv[:3] == ["/opt/fake", "--flag", "-p"]
    assert "claude" not in agent_argv


def test_scheduled_task_prompt_gets_prefix(workdir: Path) -> None:
    invocation = build_invocation(
        container_input(isScheduledTask=True),
        InvocationOptions(runtime="command", command=("cat",)),
        settings_for(workdir),
    )
    stdin = invocation.request(None).stdin or b""
    assert stdin.decode() == SCHEDULED_TASK_PREFIX + PROMPT


@pytest.mark.parametrize(
    ("flag", "group", "setting", "expected"),
    [
        ("codex", "opencode", "claude", "codex"),
        (None, "opencode", "claude", "opencode"),
        (None, None, "codex", "codex"),
    ],
)
def test_runtime_precedence(workdir, flag, group, setting, expected) -> None:
    if group is not None:
        write_config(workdir, {"agentRuntime": group})
    invocation = build(workdir, InvocationOptions(runtime=flag), agent_runtime=setting)
    assert invocation.runtime.name == expected


def test_default_runtime_is_claude(workdir: Path) -> None:
    assert build(workdir, InvocationOptions()).runtime.name == "claude"


def test_unknown_runtime_names_choices(workdir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="claude, codex, command, opencode"):
        build(workdir, InvocationOptions(runtime="gemini"))


def test_command_runtime_needs_command(workdir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="after `--`"):
        build(workdir, InvocationOptions(runtime="command"))


def test_group_option_must_match_input(workdir: Path) -> None:
    options = InvocationOptions(group="other", runtime="command", command=("cat",))
    with pytest.raises(InvalidRequestError, match=r"'other'.*'family'"):
        build(workdir, options)


def test_group_config_sets_machine(workdir: Path) -> None:
    write_config(
        workdir,
        {
            "runtime": "instant",
            "timeout": 90000,
            "cpu": 1.5,
            "memory": 512,
            "network": "none",
        },
    )
    invocation = build(workdir)
    request = invocation.request(None)
    assert request.backend == "instant"
    assert request.timeout == 90.0
    assert request.cpus == 1.5
    assert request.memory == "512m"
    assert request.network == "none"


def test_command_line_overrides_group_config(workdir: Path) -> None:
    write_config(workdir, {"runtime": "docker", "timeout": 90000, "memory": "2g"})
    options = InvocationOptions(
        runtime="command",
        command=("cat",),
        backend="instant",
        timeout=5,
        memory="64m",
    )
    request = build(workdir, options).request(None)
    assert request.backend == "instant"
    assert request.timeout == 5
    assert request.memory == "64m"


def test_timeout_defaults_to_setting(workdir: Path) -> None:
    invocation = build(workdir, nanoclaw_timeout=42.0, nanoclaw_idle_timeout=7.0)
    assert invocation.timeout == 42.0
    assert invocation.idle_timeout == 7.0


def test_invalid_group_config_names_field(workdir: Path) -> None:
    write_config(workdir, {"timeout": "soon"})
    with pytest.raises(GroupConfigError, match="timeout"):
        build(workdir)


def test_host_network_in_group_config_rejected(workdir: Path) -> None:
    write_config(workdir, {"network": "host"})
    with pytest.raises(GroupConfigError, match="defeats isolation"):
        build(workdir)


def test_secrets_precedence(workdir, monkeypatch) -> None:
    (workdir / ".env").write_text(
        "ANTHROPIC_API_KEY=from-dotenv\nCLAUDE_CODE_OAUTH_TOKEN=token-dotenv\n"
        "EXTRA_TOKEN=extra-dotenv\nOPENAI_API_KEY=not-for-claude\n"
    )
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-environment")
    invocation = build_invocation(
        container_input(secrets={"CLAUDE_CODE_OAUTH_TOKEN": "token-input"}),
        InvocationOptions(runtime="claude"),
        settings_for(workdir, nanoclaw_env_secrets="EXTRA_TOKEN"),
    )
    assert dict(invocation.secrets) == {
        "ANTHROPIC_API_KEY": "from-environment",
        "CLAUDE_CODE_OAUTH_TOKEN": "token-input",
        "EXTRA_TOKEN": "extra-dotenv",
    }


def test_secrets_and_context_only_in_env(workdir: Path) -> None:
    invocation = build_invocation(
        container_input(secrets={"TEST_SECRET": "s3cr3t-value"}, assistantName="Andy"),
        InvocationOptions(runtime="command", command=("cat",)),
        settings_for(workdir),
    )
    request = invocation.request(None)
    values = {name: v.get_secret_value() for name, v in request.secrets.items()}
    assert values["TEST_SECRET"] == "s3cr3t-value"
    assert values["NANOCLAW_CHAT_JID"] == "120363@g.us"
    assert values["NANOCLAW_GROUP_FOLDER"] == "family"
    assert values["NANOCLAW_IS_MAIN"] == "0"
    assert values["NANOCLAW_ASSISTANT_NAME"] == "Andy"
    stored = json.dumps(request.stored_form())
    assert "s3cr3t-value" not in stored
    assert "120363@g.us" not in stored
    assert "s3cr3t-value" not in repr(invocation)


def test_invalid_env_secret_name_rejected(workdir: Path) -> None:
    with pytest.raises(InvalidRequestError, match="NANOCLAW_ENV_SECRETS"):
        build(workdir, nanoclaw_env_secrets="GOOD,bad-name")


def test_allowed_mount_becomes_share(workdir: Path) -> None:
    projects = workdir / "projects"
    (projects / "app").mkdir(parents=True)
    (projects / ".ssh").mkdir()
    allowlist = workdir / "allowlist.json"
    allowlist.write_text(
        json.dumps(
            {
                "allowedRoots": [{"path": str(projects), "allowReadWrite": True}],
                "blockedPatterns": [],
                "nonMainReadOnly": True,
            }
        )
    )
    write_config(
        workdir,
        {
            "additionalMounts": [
                {"hostPath": str(projects / "app"), "readonly": False},
                {"hostPath": str(projects / ".ssh")},
            ]
        },
    )
    request = build(workdir, nanoclaw_mount_allowlist=allowlist).request(None)
    assert len(request.shares) == 1
    share = request.shares[0]
    assert share.name == "extra-app"
    assert share.host_path == (projects / "app").resolve()
    # Not the main group, and the allowlist keeps other groups read-only.
    assert share.read_only is True


def test_mounts_blocked_without_allowlist(workdir: Path) -> None:
    (workdir / "app").mkdir()
    write_config(workdir, {"additionalMounts": [{"hostPath": str(workdir / "app")}]})
    missing = workdir / "no-allowlist.json"
    request = build(workdir, nanoclaw_mount_allowlist=missing).request(None)
    assert request.shares == ()
