"""A NanoClaw group's settings: folder names, `config.json` and extra mounts.

Each group has a folder `groups/<folder>/`. Its optional `config.json` contains a
`containerConfig` object::

    {"containerConfig": {"runtime": "docker", "agentRuntime": "claude",
                         "timeout": 600000,
                         "cpu": 2, "memory": "2g", "network": "none",
                         "additionalMounts": [{"hostPath": "~/projects/app",
                                               "containerPath": "app",
                                               "readonly": true}]}}

Additional mounts are checked against NanoClaw's mount allowlist, a JSON file kept
outside every project (`~/.config/nanoclaw/mount-allowlist.json`) so that an agent
cannot edit it::

    {"allowedRoots": [{"path": "~/projects", "allowReadWrite": true,
                       "description": "Development projects"}],
     "blockedPatterns": ["password"],
     "nonMainReadOnly": true}

The rules follow NanoClaw v1's `src/mount-security.ts`: without an allowlist file
every additional mount is rejected; the host path is resolved through symlinks and
must exist, lie under an allowed root and match no blocked pattern; the mount is
read-only unless it requests read-write, its root allows it, and the group is main
or `nonMainReadOnly` is false; it appears in the machine at
`/workspace/extra/<containerPath>`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.nanoclaw.errors import (
    GroupConfigError,
    InvalidGroupFolderError,
    MountAllowlistError,
    MountRejectedError,
)

logger = logging.getLogger(__name__)

# NanoClaw's rule (src/group-folder.ts): 1-64 characters, letters, digits, "_" and
# "-", starting with a letter or digit. "global" contains memory shared by all groups.
GROUP_FOLDER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
RESERVED_GROUP_FOLDERS = frozenset({"global"})

DEFAULT_ALLOWLIST_PATH = Path("~/.config/nanoclaw/mount-allowlist.json")

# NanoClaw's default blocked patterns. A path is blocked when its text contains a
# pattern, so ".env" also blocks ".envrc".
DEFAULT_BLOCKED_PATTERNS: tuple[str, ...] = (
    ".ssh",
    ".gnupg",
    ".gpg",
    ".aws",
    ".azure",
    ".gcloud",
    ".kube",
    ".docker",
    "credentials",
    ".env",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "id_rsa",
    "id_ed25519",
    "private_key",
    ".secret",
)

EXTRA_MOUNT_ROOT = "/workspace/extra"
MAX_CONFIG_BYTES = 1024 * 1024
_CONTAINER_PATH_PATTERN = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MEMORY_PATTERN = re.compile(r"^(\d+)([bkmg]?)$")
_MEMORY_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
MIN_MEMORY_BYTES = 6 * 1024**2  # Docker's smallest memory limit


def validate_group_folder(folder: str) -> str:
    """Return `folder` if it is a safe group folder name, else raise.

    Raises `InvalidGroupFolderError` for names with path separators, "..",
    surrounding spaces, other characters, or the reserved name "global".
    """
    if not isinstance(folder, str) or not GROUP_FOLDER_PATTERN.fullmatch(folder):
        raise InvalidGroupFolderError(
            f"invalid group folder {str(folder)[:80]!r}: use 1-64 letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    if folder.lower() in RESERVED_GROUP_FOLDERS:
        raise InvalidGroupFolderError(
            f"group folder {folder!r} is reserved; choose another name"
        )
    return folder


def resolve_group_dir(groups_root: Path, folder: str) -> Path:
    """Return the absolute path of `groups_root/folder`, checked to stay inside."""
    validate_group_folder(folder)
    root = groups_root.resolve()
    group_dir = (root / folder).resolve()
    if not group_dir.is_relative_to(root) or group_dir == root:
        raise InvalidGroupFolderError(
            f"group folder {folder!r} resolves to {group_dir}, outside {root}; "
            "remove the symlink"
        )
    return group_dir


class AdditionalMount(BaseModel):
    """A host directory that a group requests inside the machine."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)

    host_path: str = Field(alias="hostPath", min_length=1)
    container_path: str | None = Field(default=None, alias="containerPath")
    readonly: bool = True


class ContainerConfig(BaseModel):
    """The `containerConfig` object of a group's config.json.

    Unknown keys are rejected so that a misspelt setting is not silently dropped.
    """

    model_config = ConfigDict(
        strict=True, frozen=True, populate_by_name=True, extra="forbid"
    )

    runtime: str | None = None
    """Machine backend for this group, e.g. "docker" or "tart"; None means auto."""
    agent_runtime: Literal["claude", "codex", "opencode", "command"] | None = Field(
        default=None, alias="agentRuntime"
    )
    """Agent CLI for this group; None leaves the choice to AGENT_RUNTIME."""
    timeout: int | None = Field(default=None, gt=0)
    """Hard timeout of one run in milliseconds, as in NanoClaw (300000 = 5 min)."""
    additional_mounts: tuple[AdditionalMount, ...] = Field(
        default=(), alias="additionalMounts", strict=False
    )
    cpu: float | None = Field(default=None, gt=0, le=1024)
    """Number of CPUs, fractions allowed (Docker's `--cpus`)."""
    memory: int | str | None = None
    """Memory limit: an integer in MiB, or a string like "512m" or "2g" (1024-based)."""
    network: str | None = None
    """Network for the machine: "none" for no network, or a network name."""

    @field_validator("runtime", "network")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit"
            )
        return value

    @field_validator("network")
    @classmethod
    def _isolated_network(cls, value: str | None) -> str | None:
        # "host" would give the agent the host's own network.
        if value == "host":
            raise ValueError(
                "'host' shares the host's network and defeats isolation; use "
                "none, bridge or a network you created"
            )
        return value

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: int | str | None) -> int | str | None:
        if value is not None:
            _memory_to_bytes(value)
        return value

    @property
    def timeout_seconds(self) -> float | None:
        """The timeout in seconds, or None when the group sets none."""
        return None if self.timeout is None else self.timeout / 1000

    @property
    def memory_bytes(self) -> int | None:
        """The memory limit in bytes, or None when the group sets none."""
        return None if self.memory is None else _memory_to_bytes(self.memory)


def _memory_to_bytes(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError("memory must be an integer (MiB) or a string like '2g'")
    if isinstance(value, int):
        size = value * 1024**2
    else:
        match = _MEMORY_PATTERN.fullmatch(value.strip().lower())
        if not match:
            raise ValueError(
                f"memory {value!r} is not a size; use an integer in MiB or a "
                "string like '512m' or '2g'"
            )
        size = int(match.group(1)) * _MEMORY_UNITS[match.group(2) or "b"]
    if size < MIN_MEMORY_BYTES:
        raise ValueError(f"memory {value!r} is below the minimum of 6 MiB")
    return size


class GroupConfig(BaseModel):
    """A group's config.json. Keys other than `containerConfig` are ignored."""

    model_config = ConfigDict(
        strict=True, frozen=True, populate_by_name=True, extra="ignore"
    )

    container_config: ContainerConfig = Field(
        default_factory=ContainerConfig, alias="containerConfig"
    )


def load_group_config(groups_root: Path, folder: str) -> GroupConfig:
    """Load `groups_root/<folder>/config.json`; a missing file gives the defaults.

    The file must be a regular file, not a symlink, of at most 1 MiB. Raises
    `GroupConfigError` with the path and the invalid fields.
    """
    path = resolve_group_dir(groups_root, folder) / "config.json"
    text = _read_config_file(path)
    if text is None:
        return GroupConfig()
    try:
        return GroupConfig.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise GroupConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}",
            str(path),
        ) from exc
    except ValidationError as exc:
        raise GroupConfigError(
            f"{path} is invalid: {_describe(exc)}", str(path)
        ) from exc


def _read_config_file(path: Path) -> str | None:
    # Under `engine run --protocol nanoclaw` the agent cannot change this file for
    # later runs, because config.json is never copied back from the machine.
    # O_NOFOLLOW keeps a symlink here from pointing the host at another file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GroupConfigError(
            f"cannot open {path}: {exc.strerror}; it must be a regular file, "
            "not a symlink",
            str(path),
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise GroupConfigError(f"{path} is not a regular file", str(path))
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise GroupConfigError(
            f"{path} is larger than {MAX_CONFIG_BYTES} bytes", str(path)
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GroupConfigError(f"{path} is not UTF-8 text", str(path)) from exc


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "(document)"
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


class AllowedRoot(BaseModel):
    """A host directory under which additional mounts may lie."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)

    path: str = Field(min_length=1)
    allow_read_write: bool = Field(default=False, alias="allowReadWrite")
    description: str | None = None


class MountAllowlist(BaseModel):
    """NanoClaw's mount allowlist file. All three keys are required, as there."""

    model_config = ConfigDict(strict=True, frozen=True, populate_by_name=True)

    allowed_roots: tuple[AllowedRoot, ...] = Field(alias="allowedRoots", strict=False)
    blocked_patterns: tuple[str, ...] = Field(alias="blockedPatterns", strict=False)
    non_main_read_only: bool = Field(alias="nonMainReadOnly")

    @property
    def effective_blocked_patterns(self) -> tuple[str, ...]:
        """The defaults followed by the file's own patterns, without repeats."""
        merged = dict.fromkeys((*DEFAULT_BLOCKED_PATTERNS, *self.blocked_patterns))
        return tuple(pattern for pattern in merged if pattern)


def load_mount_allowlist(path: Path | None = None) -> MountAllowlist | None:
    """Load the allowlist file; None when it does not exist.

    `path` defaults to `~/.config/nanoclaw/mount-allowlist.json`. Raises
    `MountAllowlistError` when the file exists but is not a valid allowlist.
    """
    path = (path or DEFAULT_ALLOWLIST_PATH).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise MountAllowlistError(f"cannot read {path}: {exc}", str(path)) from exc
    try:
        return MountAllowlist.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise MountAllowlistError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}", str(path)
        ) from exc
    except ValidationError as exc:
        raise MountAllowlistError(
            f"{path} is invalid: {_describe(exc)}", str(path)
        ) from exc


@dataclass(frozen=True, slots=True)
class ValidatedMount:
    """A mount that passed the allowlist, ready for the machine backend."""

    host_path: Path
    """Real path on the host, symlinks resolved."""
    container_path: str
    """Absolute path inside the machine, under /workspace/extra."""
    readonly: bool


def validate_mount(
    mount: AdditionalMount,
    allowlist: MountAllowlist | None,
    *,
    is_main: bool,
    home: Path | None = None,
) -> ValidatedMount:
    """Check one additional mount against the allowlist.

    `home` is the directory that "~" stands for (default: the user's home).
    Raises `MountRejectedError` with the reason.
    """
    if allowlist is None:
        raise MountRejectedError(
            mount.host_path,
            "no mount allowlist is loaded, so every additional mount is blocked; "
            f"create {DEFAULT_ALLOWLIST_PATH} to allow some",
        )
    container_name = mount.container_path or Path(mount.host_path).name
    _check_container_path(mount.host_path, container_name)
    home = home or Path.home()
    requested = _expand_home(mount.host_path, home)
    real_path = _real_path(mount.host_path, requested)

    # Both paths are checked, so neither the link nor its target may match.
    for candidate in (requested, real_path):
        _check_blocked(mount.host_path, candidate, allowlist.effective_blocked_patterns)

    root = _find_allowed_root(real_path, allowlist.allowed_roots, home)
    if root is None:
        raise MountRejectedError(
            mount.host_path,
            f"{real_path} is not under an allowed root; allowed roots: "
            + (", ".join(r.path for r in allowlist.allowed_roots) or "none"),
        )
    readonly = mount.readonly or not root.allow_read_write
    if not is_main and allowlist.non_main_read_only:
        readonly = True
    return ValidatedMount(
        host_path=real_path,
        container_path=f"{EXTRA_MOUNT_ROOT}/{container_name}",
        readonly=readonly,
    )


def validate_additional_mounts(
    mounts: Sequence[AdditionalMount],
    allowlist: MountAllowlist | None,
    *,
    is_main: bool,
    strict: bool = False,
    home: Path | None = None,
) -> list[ValidatedMount]:
    """Return the mounts that pass the allowlist.

    Like NanoClaw, a rejected mount is logged as a warning and left out; with
    `strict=True` the first rejection raises `MountRejectedError` instead.
    """
    accepted = []
    for mount in mounts:
        try:
            accepted.append(
                validate_mount(mount, allowlist, is_main=is_main, home=home)
            )
        except MountRejectedError as exc:
            if strict:
                raise
            logger.warning(
                "additional mount rejected",
                extra={
                    "action": "mount_rejected",
                    "host_path": exc.host_path,
                    "reason": exc.reason,
                },
            )
    return accepted


def _check_blocked(host_path: str, path: Path, patterns: Sequence[str]) -> None:
    text = str(path)
    blocked = next((pattern for pattern in patterns if pattern in text), None)
    if blocked is not None:
        raise MountRejectedError(
            host_path, f"path {text} matches blocked pattern {blocked!r}"
        )


def _check_container_path(host_path: str, container_path: str) -> None:
    parts = container_path.split("/")
    if not _CONTAINER_PATH_PATTERN.fullmatch(container_path) or any(
        part in (".", "..") for part in parts
    ):
        raise MountRejectedError(
            host_path,
            f"container path {container_path!r} must be relative, use only letters, "
            "digits, '.', '_', '-' and '/', and contain no '.' or '..' part",
        )


def _expand_home(host_path: str, home: Path) -> Path:
    if host_path == "~":
        return home
    if host_path.startswith("~/"):
        return home / host_path[2:]
    return Path(host_path)


def _real_path(host_path: str, requested: Path) -> Path:
    if not requested.is_absolute():
        raise MountRejectedError(
            host_path, "host path must be absolute or start with '~/'"
        )
    try:
        return Path(os.path.realpath(requested, strict=True))
    except OSError:
        raise MountRejectedError(
            host_path, f"host path {requested} does not exist"
        ) from None


def _find_allowed_root(
    real_path: Path, roots: Sequence[AllowedRoot], home: Path
) -> AllowedRoot | None:
    for root in roots:
        try:
            real_root = Path(
                os.path.realpath(_expand_home(root.path, home), strict=True)
            )
        except OSError:
            continue  # NanoClaw skips an allowed root that does not exist
        if real_path.is_relative_to(real_root):
            return root
    return None
