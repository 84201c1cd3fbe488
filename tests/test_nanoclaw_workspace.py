"""Copying a group folder back: agent changes applied, host changes and secrets kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from engine.nanoclaw.workspace import copy_back, snapshot

SECRET = "sk-ant-api03-0123456789"


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """A host folder and the machine's copy of it, as collected after a run."""
    host = tmp_path / "host"
    (host / "notes").mkdir(parents=True)
    (host / "CLAUDE.md").write_text("memory\n")
    (host / "notes" / "a.txt").write_text("a\n")
    (host / "config.json").write_text('{"containerConfig": {}}')
    collected = tmp_path / "collected"
    shutil.copytree(host, collected)
    return host, collected


def test_added_changed_and_deleted_files(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    (collected / "CLAUDE.md").write_text("memory\nmore\n")
    (collected / "new" / "deep").mkdir(parents=True)
    (collected / "new" / "deep" / "b.txt").write_text("b\n")
    shutil.rmtree(collected / "notes")

    report = copy_back(collected, host, before)

    assert (host / "CLAUDE.md").read_text() == "memory\nmore\n"
    assert (host / "new" / "deep" / "b.txt").read_text() == "b\n"
    assert not (host / "notes").exists()
    assert sorted(report.written) == ["CLAUDE.md", "new/deep/b.txt"]
    assert report.deleted == ["notes/a.txt"]


def test_unchanged_files_not_rewritten(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    mtime = (host / "CLAUDE.md").stat().st_mtime_ns
    report = copy_back(collected, host, before)
    assert report.written == []
    assert (host / "CLAUDE.md").stat().st_mtime_ns == mtime


def test_host_change_during_run_wins(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    (collected / "CLAUDE.md").write_text("from the agent\n")
    (host / "CLAUDE.md").write_text("from the host, during the run\n")
    os.utime(host / "CLAUDE.md", ns=(1, 1))
    (host / "notes" / "a.txt").write_text("host edit\n")
    os.utime(host / "notes" / "a.txt", ns=(1, 1))
    (collected / "notes" / "a.txt").unlink()

    report = copy_back(collected, host, before)

    assert (host / "CLAUDE.md").read_text() == "from the host, during the run\n"
    assert (host / "notes" / "a.txt").read_text() == "host edit\n"
    assert sorted(report.conflicts) == ["CLAUDE.md", "notes/a.txt"]


def test_protected_file_never_written(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    (collected / "config.json").write_text('{"containerConfig": {"network": "x"}}')
    copy_back(collected, host, before, protected=frozenset({"config.json"}))
    assert (host / "config.json").read_text() == '{"containerConfig": {}}'


def test_protected_file_never_deleted(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    (collected / "config.json").unlink()
    copy_back(collected, host, before, protected=frozenset({"config.json"}))
    assert (host / "config.json").exists()


def test_file_with_secret_withheld(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    (collected / "leak.txt").write_bytes(b"x" * (1 << 20) + SECRET.encode() + b"\n")
    (collected / "fine.txt").write_text("no secret here\n")
    report = copy_back(collected, host, before, secrets=[SECRET, "short"])
    assert not (host / "leak.txt").exists()
    assert (host / "fine.txt").exists()
    assert report.withheld == ["leak.txt"]


def test_secret_across_chunk_boundary_found(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    # The secret starts 5 bytes before the end of the first 1 MiB read.
    (collected / "leak.bin").write_bytes(b"y" * ((1 << 20) - 5) + SECRET.encode())
    report = copy_back(collected, host, before, secrets=[SECRET])
    assert report.withheld == ["leak.bin"]


def test_symlinks_neither_copied_nor_followed(folders, tmp_path: Path) -> None:
    host, collected = folders
    outside = tmp_path / "outside"
    outside.mkdir()
    (host / "link").symlink_to(outside)
    before = snapshot(host)
    (collected / "link").mkdir()
    (collected / "link" / "escape.txt").write_text("escape\n")
    (collected / "made-link").symlink_to("/etc/passwd")

    report = copy_back(collected, host, before)

    assert list(outside.iterdir()) == []
    assert not (host / "made-link").exists()
    assert (host / "link").is_symlink()
    assert report.failed == ["link/escape.txt"]


def test_nothing_collected_leaves_host(folders, tmp_path: Path) -> None:
    host, _ = folders
    before = snapshot(host)
    report = copy_back(tmp_path / "absent", host, before)
    assert (host / "notes" / "a.txt").exists()
    assert report.deleted == []


def test_executable_mode_copied(folders) -> None:
    host, collected = folders
    before = snapshot(host)
    script = collected / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    copy_back(collected, host, before)
    assert (host / "run.sh").stat().st_mode & 0o777 == 0o755
