"""Group folders, config.json, and additional mounts checked against the allowlist."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from engine.nanoclaw.errors import (
    GroupConfigError,
    InvalidGroupFolderError,
    MountAllowlistError,
    MountRejectedError,
)
from engine.nanoclaw.groups import (
    DEFAULT_BLOCKED_PATTERNS,
    AdditionalMount,
    GroupConfig,
    MountAllowlist,
    load_group_config,
    load_mount_allowlist,
    resolve_group_dir,
    validate_additional_mounts,
    validate_group_folder,
    validate_mount,
)


@pytest.mark.parametrize("folder", ["main", "family-chat_1", "A", "a" * 64, "9lives"])
def test_group_folder_valid(folder: str) -> None:
    assert validate_group_folder(folder) == folder


@pytest.mark.parametrize(
    "folder",
    [
        "",
        ".",
        "..",
        "../main",
        "a/b",
        "a\\b",
        " main",
        "main ",
        "main\n",
        "-x",
        "_x",
        "a" * 65,
        "global",
        "Global",
        "ünï",
        "a\x00b",
    ],
)
def test_group_folder_invalid(folder: str) -> None:
    with pytest.raises(InvalidGroupFolderError):
        validate_group_folder(folder)


def test_group_folder_error_names_value_and_fix() -> None:
    with pytest.raises(InvalidGroupFolderError) as caught:
        validate_group_folder("../etc")
    assert "'../etc'" in str(caught.value)
    assert "letters, digits" in str(caught.value)


def test_group_dir_symlink_outside_rejected(tmp_path: Path) -> None:
    groups = tmp_path / "groups"
    groups.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (groups / "sneaky").symlink_to(outside)
    with pytest.raises(InvalidGroupFolderError, match="outside"):
        resolve_group_dir(groups, "sneaky")


def test_group_dir_inside_root(tmp_path: Path) -> None:
    (tmp_path / "main").mkdir()
    assert resolve_group_dir(tmp_path, "main") == (tmp_path / "main").resolve()


def write_config(groups: Path, folder: str, config: object) -> Path:
    (groups / folder).mkdir(parents=True, exist_ok=True)
    path = groups / folder / "config.json"
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def test_config_missing_gives_defaults(tmp_path: Path) -> None:
    config = load_group_config(tmp_path, "main")
    assert config == GroupConfig()
    assert config.container_config.timeout is None
    assert config.container_config.timeout_seconds is None
    assert config.container_config.additional_mounts == ()


def test_config_full_container_config(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        "dev",
        {
            "name": "Dev team",
            "containerConfig": {
                "runtime": "tart",
                "timeout": 600000,
                "cpu": 1.5,
                "memory": "2g",
                "network": "none",
                "additionalMounts": [
                    {"hostPath": "~/projects/app", "containerPath": "app"},
                    {"hostPath": "/srv/data", "readonly": False},
                ],
            },
        },
    )
    container = load_group_config(tmp_path, "dev").container_config
    assert container.runtime == "tart"
    assert container.timeout == 600000
    assert container.timeout_seconds == 600.0
    assert container.cpu == 1.5
    assert container.memory_bytes == 2 * 1024**3
    assert container.network == "none"
    assert container.additional_mounts[0].container_path == "app"
    assert container.additional_mounts[0].readonly is True
    assert container.additional_mounts[1].container_path is None
    assert container.additional_mounts[1].readonly is False


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (512, 512 * 1024**2),
        ("512m", 512 * 1024**2),
        ("1G", 1024**3),
        ("6291456", 6291456),
    ],
)
def test_config_memory_units(tmp_path: Path, memory: object, expected: int) -> None:
    write_config(tmp_path, "main", {"containerConfig": {"memory": memory}})
    assert load_group_config(tmp_path, "main").container_config.memory_bytes == expected


@pytest.mark.parametrize(
    ("container_config", "message"),
    [
        ({"timout": 1000}, "containerConfig.timout: Extra inputs are not permitted"),
        ({"timeout": "600000"}, "containerConfig.timeout"),
        ({"timeout": 0}, "containerConfig.timeout"),
        ({"timeout": 1.5}, "containerConfig.timeout"),
        ({"cpu": -1}, "containerConfig.cpu"),
        ({"memory": "lots"}, "is not a size"),
        ({"memory": 1}, "below the minimum"),
        ({"memory": True}, "containerConfig.memory"),
        ({"network": "host;rm"}, "containerConfig.network"),
        ({"runtime": "../tart"}, "containerConfig.runtime"),
        ({"additionalMounts": [{"containerPath": "x"}]}, "hostPath"),
        ({"additionalMounts": [{"hostPath": "/a", "readonly": "no"}]}, "readonly"),
    ],
)
def test_config_invalid_values_name_field(
    tmp_path: Path, container_config: dict[str, object], message: str
) -> None:
    path = write_config(tmp_path, "main", {"containerConfig": container_config})
    with pytest.raises(GroupConfigError) as caught:
        load_group_config(tmp_path, "main")
    assert message in str(caught.value)
    assert caught.value.path == str(path)


def test_config_invalid_json_names_line(tmp_path: Path) -> None:
    write_config(tmp_path, "main", '{\n  "containerConfig": {,}\n}')
    with pytest.raises(GroupConfigError, match=r"not valid JSON: .* at line 2"):
        load_group_config(tmp_path, "main")


def test_config_symlink_rejected(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("{}")
    (tmp_path / "main").mkdir()
    (tmp_path / "main" / "config.json").symlink_to(target)
    with pytest.raises(GroupConfigError, match="not a symlink"):
        load_group_config(tmp_path, "main")


def test_config_directory_rejected(tmp_path: Path) -> None:
    (tmp_path / "main" / "config.json").mkdir(parents=True)
    with pytest.raises(GroupConfigError, match="not a regular file"):
        load_group_config(tmp_path, "main")


def test_config_invalid_folder_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidGroupFolderError):
        load_group_config(tmp_path, "../outside")


ALLOWLIST = {
    "allowedRoots": [
        {"path": "~/projects", "allowReadWrite": True, "description": "Projects"},
        {"path": "~/docs", "allowReadWrite": False},
        {"path": "~/missing-root", "allowReadWrite": True},
    ],
    "blockedPatterns": ["password"],
    "nonMainReadOnly": True,
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for directory in (
        "projects/app",
        "projects/secrets/.ssh",
        "docs/manual",
        ".ssh",
        ".gnupg",
        ".aws",
        "outside",
        "projects/password-store",
    ):
        (home / directory).mkdir(parents=True)
    (home / "projects" / ".env").write_text("TOKEN=x")
    return home


@pytest.fixture
def allowlist(tmp_path: Path) -> MountAllowlist:
    path = tmp_path / "mount-allowlist.json"
    path.write_text(json.dumps(ALLOWLIST))
    loaded = load_mount_allowlist(path)
    assert loaded is not None
    return loaded


def check(
    allowlist: MountAllowlist | None,
    home: Path,
    host_path: str,
    *,
    is_main: bool = True,
    **fields: object,
):
    mount = AdditionalMount.model_validate({"hostPath": host_path, **fields})
    return validate_mount(mount, allowlist, is_main=is_main, home=home)


def test_allowlist_missing_file_is_none(tmp_path: Path) -> None:
    assert load_mount_allowlist(tmp_path / "nope.json") is None


def test_allowlist_merges_default_patterns(allowlist: MountAllowlist) -> None:
    patterns = allowlist.effective_blocked_patterns
    assert patterns[: len(DEFAULT_BLOCKED_PATTERNS)] == DEFAULT_BLOCKED_PATTERNS
    assert patterns[-1] == "password"
    for required in (".ssh", ".gnupg", ".aws", ".env"):
        assert required in patterns


@pytest.mark.parametrize(
    "missing", ["allowedRoots", "blockedPatterns", "nonMainReadOnly"]
)
def test_allowlist_requires_all_keys(tmp_path: Path, missing: str) -> None:
    data = {key: value for key, value in ALLOWLIST.items() if key != missing}
    path = tmp_path / "allowlist.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MountAllowlistError, match=missing):
        load_mount_allowlist(path)


def test_allowlist_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.json"
    path.write_text("{allowedRoots: []}")
    with pytest.raises(MountAllowlistError, match="not valid JSON"):
        load_mount_allowlist(path)


def test_mount_without_allowlist_rejected(home: Path) -> None:
    with pytest.raises(MountRejectedError, match="no mount allowlist"):
        check(None, home, "~/projects/app")


def test_mount_under_root_accepted(allowlist: MountAllowlist, home: Path) -> None:
    mount = check(allowlist, home, "~/projects/app")
    assert mount.host_path == (home / "projects" / "app").resolve()
    assert mount.container_path == "/workspace/extra/app"
    assert mount.readonly is True


def test_mount_container_path_given(allowlist: MountAllowlist, home: Path) -> None:
    mount = check(allowlist, home, str(home / "projects/app"), containerPath="src/app")
    assert mount.container_path == "/workspace/extra/src/app"


@pytest.mark.parametrize(
    ("host_path", "pattern"),
    [
        ("~/.ssh", ".ssh"),
        ("~/.gnupg", ".gnupg"),
        ("~/.aws", ".aws"),
        ("~/projects/.env", ".env"),
        ("~/projects/secrets/.ssh", ".ssh"),
        ("~/projects/password-store", "password"),
    ],
)
def test_mount_blocked_patterns(
    allowlist: MountAllowlist, home: Path, host_path: str, pattern: str
) -> None:
    with pytest.raises(MountRejectedError) as caught:
        check(allowlist, home, host_path)
    assert f"blocked pattern {pattern!r}" in caught.value.reason


def test_mount_symlink_to_ssh_rejected(allowlist: MountAllowlist, home: Path) -> None:
    (home / "projects" / "harmless").symlink_to(home / ".ssh")
    with pytest.raises(MountRejectedError) as caught:
        check(allowlist, home, "~/projects/harmless")
    assert str(home / ".ssh") in caught.value.reason


def test_mount_symlink_out_of_root_rejected(
    allowlist: MountAllowlist, home: Path
) -> None:
    (home / "projects" / "escape").symlink_to(home / "outside")
    with pytest.raises(MountRejectedError, match="not under an allowed root"):
        check(allowlist, home, "~/projects/escape")


def test_mount_dotdot_out_of_root_rejected(
    allowlist: MountAllowlist, home: Path
) -> None:
    with pytest.raises(MountRejectedError, match="not under an allowed root"):
        check(allowlist, home, "~/projects/../outside")


def test_mount_root_symlink_resolved(tmp_path: Path, home: Path) -> None:
    (home / "link-to-projects").symlink_to(home / "projects")
    allowlist = MountAllowlist.model_validate(
        {
            "allowedRoots": [{"path": "~/link-to-projects", "allowReadWrite": True}],
            "blockedPatterns": [],
            "nonMainReadOnly": False,
        }
    )
    mount = check(allowlist, home, "~/projects/app", readonly=False)
    assert mount.readonly is False


def test_mount_missing_path_rejected(allowlist: MountAllowlist, home: Path) -> None:
    with pytest.raises(MountRejectedError, match="does not exist"):
        check(allowlist, home, "~/projects/nothing")


def test_mount_relative_path_rejected(allowlist: MountAllowlist, home: Path) -> None:
    with pytest.raises(MountRejectedError, match="must be absolute"):
        check(allowlist, home, "projects/app")


@pytest.mark.parametrize(
    "container_path", ["../x", "/abs", "a/../b", "a:b", "a,b", "."]
)
def test_mount_bad_container_path_rejected(
    allowlist: MountAllowlist, home: Path, container_path: str
) -> None:
    with pytest.raises(MountRejectedError, match="container path"):
        check(allowlist, home, "~/projects/app", containerPath=container_path)


@pytest.mark.parametrize(
    ("host_path", "is_main", "expected_readonly"),
    [
        ("~/projects/app", True, False),
        ("~/projects/app", False, True),
        ("~/docs/manual", True, True),
    ],
)
def test_mount_read_write_rules(
    allowlist: MountAllowlist,
    home: Path,
    host_path: str,
    is_main: bool,
    expected_readonly: bool,
) -> None:
    mount = check(allowlist, home, host_path, is_main=is_main, readonly=False)
    assert mount.readonly is expected_readonly


def test_mount_non_main_read_write_when_allowed(home: Path) -> None:
    allowlist = MountAllowlist.model_validate({**ALLOWLIST, "nonMainReadOnly": False})
    mount = check(allowlist, home, "~/projects/app", is_main=False, readonly=False)
    assert mount.readonly is False


def test_mounts_rejected_are_skipped_and_logged(
    allowlist: MountAllowlist, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mounts = [
        AdditionalMount(host_path="~/projects/app"),
        AdditionalMount(host_path="~/.ssh"),
    ]
    with caplog.at_level(logging.WARNING, logger="engine.nanoclaw.groups"):
        accepted = validate_additional_mounts(
            mounts, allowlist, is_main=True, home=home
        )
    assert [m.container_path for m in accepted] == ["/workspace/extra/app"]
    assert len(caplog.records) == 1
    assert caplog.records[0].host_path == "~/.ssh"
    assert "blocked pattern" in caplog.records[0].reason


def test_mounts_strict_raises(allowlist: MountAllowlist, home: Path) -> None:
    mounts = [AdditionalMount(host_path="~/.aws")]
    with pytest.raises(MountRejectedError, match="blocked pattern"):
        validate_additional_mounts(
            mounts, allowlist, is_main=True, strict=True, home=home
        )


def test_mount_default_home_is_user_home(allowlist: MountAllowlist) -> None:
    mount = AdditionalMount(host_path="~/surely-not-here-7f3a")
    with pytest.raises(MountRejectedError) as caught:
        validate_mount(mount, allowlist, is_main=True)
    assert os.path.expanduser("~/surely-not-here-7f3a") in caught.value.reason


def test_host_network_in_group_config_is_rejected(tmp_path):
    import json as json_module

    from engine.nanoclaw.errors import GroupConfigError
    from engine.nanoclaw.groups import load_group_config

    folder = tmp_path / "groups" / "team"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json_module.dumps({"containerConfig": {"network": "host"}})
    )
    with pytest.raises(GroupConfigError) as caught:
        load_group_config(tmp_path / "groups", "team")
    message = str(caught.value)
    assert "containerConfig.network" in message
    assert "defeats isolation" in message
    assert "errors.pydantic.dev" not in message
