"""One NanoClaw agent invocation: from the container input to an engine request.

The agent runs in the machine with this layout, relative to the bundle root
(`/engine` on Docker, `~/engine-run` on Tart):

    work/group/    the group folder, uploaded, and the agent's working directory;
                   its changes are copied back after the run
    work/global/   groups/global, uploaded when it exists; never copied back
    home/          HOME: the group's session state (ENGINE_DATA_DIR/sessions/
                   <folder>), where Claude Code keeps `.claude`; copied back

A fixed launcher script sets HOME, changes to the group folder and runs the agent
CLI. The prompt is the run's stdin, so it never appears in an argv, and secrets
travel in the bundle's env file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from engine.exceptions import InvalidRequestError
from engine.nanoclaw.errors import NanoClawError
from engine.nanoclaw.groups import (
    EXTRA_MOUNT_ROOT,
    ContainerConfig,
    load_group_config,
    load_mount_allowlist,
    resolve_group_dir,
    validate_additional_mounts,
)
from engine.nanoclaw.protocol import ContainerInput
from engine.nanoclaw.runtimes import RUNTIMES, AgentRuntime, CommandRuntime
from engine.nanoclaw.workspace import FileSnapshot, snapshot
from engine.records import ExecutionRequest, ShareRequest
from engine.settings import Settings

logger = logging.getLogger(__name__)

GROUP_GUEST_PATH = "work/group"
GLOBAL_GUEST_PATH = "work/global"
HOME_GUEST_PATH = "home"
GLOBAL_FOLDER = "global"

# Sets HOME to the uploaded session folder, enters the group folder and runs the
# agent. The text is fixed: both folders and the agent's argv arrive as positional
# parameters, so nothing in them is evaluated by the shell. run.sh starts it in
# work/, so the folders are relative to work/.
LAUNCHER_SCRIPT = (
    'HOME=$(cd "$1" && pwd) || exit 126; export HOME; '
    'cd "$2" || exit 126; shift 2; exec "$@"'
)

# Each runtime's API key variables, passed from the environment or .env.
RUNTIME_API_KEYS: dict[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"),
    "codex": ("OPENAI_API_KEY", "CODEX_API_KEY"),
    "opencode": ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "OPENROUTER_API_KEY"),
    "command": (),
}

# Put before the prompt of a scheduled task, so that the agent can tell that no
# person wrote it.
SCHEDULED_TASK_PREFIX = (
    "[Scheduled task: this message was sent automatically on a schedule, "
    "not by a member of the group.]\n\n"
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class InvocationOptions:
    """Options from the command line; None leaves a value to config.json or settings."""

    group: str | None = None
    runtime: str | None = None
    command: tuple[str, ...] = ()
    backend: str | None = None
    image: str | None = None
    timeout: float | None = None
    cpus: float | None = None
    memory: str | None = None
    network: str | None = None
    shares: tuple[ShareRequest, ...] = ()
    upload_dir: Path | None = None
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass(frozen=True)
class Invocation:
    """A validated invocation: the request of each attempt and what to copy back."""

    container_input: ContainerInput
    runtime: AgentRuntime
    # Replaces the CLI's name at the start of its argv, e.g. ("/opt/bin/claude",)
    # or ("npx", "-y", "@anthropic-ai/claude-code"); empty keeps the name.
    program: tuple[str, ...]
    config: ContainerConfig
    group_dir: Path | None
    session_dir: Path
    timeout: float
    idle_timeout: float
    secrets: Mapping[str, str] = dataclasses.field(repr=False)
    context: Mapping[str, str] = dataclasses.field(repr=False)
    # The remaining ExecutionRequest fields, the same for every attempt.
    request_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def snapshots(self) -> dict[str, FileSnapshot]:
        """Return the files of each folder to copy back, by guest path, as now."""
        folders = {HOME_GUEST_PATH: self.session_dir}
        if self.group_dir is not None:
            folders[GROUP_GUEST_PATH] = self.group_dir
        return {guest: snapshot(host) for guest, host in folders.items()}

    def host_folder(self, guest_path: str) -> Path:
        if guest_path == GROUP_GUEST_PATH and self.group_dir is not None:
            return self.group_dir
        return self.session_dir

    def request(self, session_id: str | None) -> ExecutionRequest:
        """Return the engine request that runs the agent, resuming `session_id`."""
        agent_argv = self.runtime.argv(session_id)
        if self.program:
            agent_argv = [*self.program, *agent_argv[1:]]
        work_folder = "group" if self.group_dir is not None else "."
        command = [
            "/bin/sh",
            "-c",
            LAUNCHER_SCRIPT,
            "nanoclaw-launcher",
            "../home",
            work_folder,
            *agent_argv,
        ]
        prompt = self.container_input.prompt
        if self.container_input.is_scheduled_task:
            prompt = SCHEDULED_TASK_PREFIX + prompt
        try:
            return ExecutionRequest(
                command=command,
                stdin=prompt.encode("utf-8", errors="surrogatepass"),
                secrets={**self.context, **self.secrets},
                timeout=self.timeout,
                **self.request_fields,
            )
        except ValueError as exc:
            raise InvalidRequestError(f"invalid run settings: {exc}") from exc


def build_invocation(
    container_input: ContainerInput, options: InvocationOptions, settings: Settings
) -> Invocation:
    """Resolve the group, runtime, limits, uploads and secrets of one invocation.

    Raises InvalidRequestError (or NanoClawError for the group's config.json)
    naming the bad value; nothing is created on failure, except the group's
    session folder.
    """
    folder = container_input.group_folder
    if options.group is not None and options.group != folder:
        raise InvalidRequestError(
            f"--group {options.group!r} does not match the input's groupFolder "
            f"{folder!r}; pass the same folder or leave out --group"
        )
    groups_root = settings.nanoclaw_groups_dir.expanduser()
    config = load_group_config(groups_root, folder).container_config
    group_dir: Path | None = resolve_group_dir(groups_root, folder)
    if not group_dir.exists() and not group_dir.is_symlink():
        # NanoClaw makes a group's folder when the group is registered; make it
        # here too, so the agent's files in it are kept.
        group_dir.mkdir(parents=True)
        logger.warning(
            "group folder %s did not exist and was created",
            group_dir,
            extra={"action": "group_created", "group": folder},
        )
    if not group_dir.is_dir() or group_dir.is_symlink():
        logger.warning(
            "group path %s is not a folder; the agent runs without one",
            group_dir,
            extra={"action": "group_missing", "group": folder},
        )
        group_dir = None
    runtime = _runtime(options, config, settings)
    session_dir = _session_dir(settings, folder)
    uploads = {HOME_GUEST_PATH: session_dir}
    if group_dir is not None:
        uploads[GROUP_GUEST_PATH] = group_dir
    global_dir = groups_root / GLOBAL_FOLDER
    if global_dir.is_dir() and not global_dir.is_symlink():
        uploads[GLOBAL_GUEST_PATH] = global_dir
    request_fields: dict[str, Any] = {
        "backend": options.backend or config.runtime,
        "image": options.image,
        "upload_dir": options.upload_dir,
        "uploads": uploads,
        "group": folder,
        "cpus": options.cpus or config.cpu,
        "memory": options.memory or _memory(config),
        "network": options.network or config.network,
        "shares": (*_mount_shares(config, container_input, settings), *options.shares),
        "collect_paths": tuple(path for path in uploads if path != GLOBAL_GUEST_PATH),
        "labels": {"nanoclaw.group": folder, "nanoclaw.runtime": runtime.name},
    }
    timeout = options.timeout or config.timeout_seconds or settings.nanoclaw_timeout
    invocation = Invocation(
        container_input=container_input,
        runtime=runtime,
        program=() if runtime.name == CommandRuntime.name else options.command,
        config=config,
        group_dir=group_dir,
        session_dir=session_dir,
        timeout=timeout,
        idle_timeout=settings.nanoclaw_idle_timeout,
        secrets=_secrets(container_input, options, settings, runtime.name),
        context=_context(container_input),
        request_fields=request_fields,
    )
    # Check the request now, so that invalid settings fail before any run.
    invocation.request(container_input.session_id)
    return invocation


def _runtime(
    options: InvocationOptions, config: ContainerConfig, settings: Settings
) -> AgentRuntime:
    name = (options.runtime or config.agent_runtime or settings.agent_runtime).lower()
    if name not in RUNTIMES:
        raise InvalidRequestError(
            f"unknown agent runtime {name!r}: use one of {', '.join(sorted(RUNTIMES))} "
            "(set by --runtime, containerConfig.agentRuntime or AGENT_RUNTIME)"
        )
    if name == CommandRuntime.name:
        if not options.command:
            raise InvalidRequestError(
                "the command runtime needs the agent's command after `--`, "
                "e.g. `engine run --protocol nanoclaw --runtime command -- cat`"
            )
        return CommandRuntime(command_argv=options.command)
    return RUNTIMES[name]()


def _session_dir(settings: Settings, folder: str) -> Path:
    path = settings.engine_data_dir / "sessions" / folder
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _memory(config: ContainerConfig) -> str | None:
    size = config.memory_bytes
    return None if size is None else f"{size // 1024**2}m"


def _mount_shares(
    config: ContainerConfig, container_input: ContainerInput, settings: Settings
) -> list[ShareRequest]:
    """Turn the group's allowed additional mounts into shares named extra-*."""
    if not config.additional_mounts:
        return []
    try:
        allowlist = load_mount_allowlist(settings.nanoclaw_mount_allowlist)
    except NanoClawError as exc:
        # As in NanoClaw, an unreadable allowlist blocks every additional mount.
        logger.error(
            "mount allowlist unusable; blocking all additional mounts: %s",
            exc,
            extra={"action": "allowlist_invalid"},
        )
        allowlist = None
    mounts = validate_additional_mounts(
        config.additional_mounts, allowlist, is_main=container_input.is_main
    )
    shares: dict[str, ShareRequest] = {}
    for mount in mounts:
        # NanoClaw's path /workspace/extra/<containerPath> names the share.
        relative = mount.container_path.removeprefix(EXTRA_MOUNT_ROOT + "/")
        name = "extra-" + relative.replace("/", "_")
        if name in shares:
            logger.warning(
                "additional mount skipped: its share name is taken",
                extra={"action": "mount_rejected", "share": name},
            )
            continue
        shares[name] = ShareRequest(
            name=name, host_path=mount.host_path, read_only=mount.readonly
        )
    return list(shares.values())


def _secrets(
    container_input: ContainerInput,
    options: InvocationOptions,
    settings: Settings,
    runtime_name: str,
) -> dict[str, str]:
    """Merge the secrets; later sources win: .env, environment, --secret, input."""
    names = list(RUNTIME_API_KEYS.get(runtime_name, ()))
    extra_names = (part.strip() for part in settings.nanoclaw_env_secrets.split(","))
    for name in filter(None, extra_names):
        if not _ENV_NAME.fullmatch(name):
            raise InvalidRequestError(
                f"NANOCLAW_ENV_SECRETS names {name!r}, which is not a valid "
                "environment variable name"
            )
        names.append(name)
    dotenv = dotenv_values(".env") if Path(".env").is_file() else {}
    secrets: dict[str, str] = {}
    for name in names:
        value = os.environ.get(name) or dotenv.get(name)
        if value:
            secrets[name] = value
    secrets.update(options.secrets)
    secrets.update(container_input.secret_values())
    return secrets


def _context(container_input: ContainerInput) -> dict[str, str]:
    """Return the input's routing fields as environment variables for the agent.

    They travel with the secrets, so a chat id (often a phone number) is never
    stored or shown in an argv.
    """
    context = {
        "NANOCLAW_GROUP_FOLDER": container_input.group_folder,
        "NANOCLAW_CHAT_JID": container_input.chat_jid,
        "NANOCLAW_IS_MAIN": "1" if container_input.is_main else "0",
        "NANOCLAW_IS_SCHEDULED_TASK": "1" if container_input.is_scheduled_task else "0",
    }
    if container_input.assistant_name:
        context["NANOCLAW_ASSISTANT_NAME"] = container_input.assistant_name
    return context
