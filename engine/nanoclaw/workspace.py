"""Copying a group's folders back from a finished run without losing host changes.

The group folder and the session folder are uploaded into the machine, and once
the run is done they are collected into the run folder. `copy_back` then applies
the agent's changes to the host folder:

- a file that the agent added or changed is written to the host folder, and a
  file that it deleted is deleted there;
- a file that the host changed since the upload keeps the host's version and is
  reported as a conflict;
- links and special files are neither created nor followed;
- a file that contains a secret value is not copied, so that the secret does not
  reach the host's disk.
"""

from __future__ import annotations

import dataclasses
import filecmp
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.bundle import UnsafeArchiveError, safe_target, write_file_safely

logger = logging.getLogger(__name__)

# Shorter secret values are not searched for in copied files: they would match
# ordinary text.
MIN_SECRET_CHARS = 8
_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class FileState:
    size: int
    mtime_ns: int


# A folder's regular files at upload time, by path relative to the folder.
FileSnapshot = dict[str, FileState]


@dataclasses.dataclass
class CopyReport:
    written: list[str] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)
    conflicts: list[str] = dataclasses.field(default_factory=list)
    """Files that the host changed too during the run, so the host's version stays."""
    failed: list[str] = dataclasses.field(default_factory=list)
    """Files that could not be written: the path runs through a link, or an error."""
    withheld: list[str] = dataclasses.field(default_factory=list)
    """Files that contain a secret value and were not copied."""


def snapshot(folder: Path) -> FileSnapshot:
    """Return the size and modification time of each regular file in `folder`."""
    files: FileSnapshot = {}
    for relative, path in regular_files(folder):
        info = path.lstat()
        files[relative] = FileState(info.st_size, info.st_mtime_ns)
    return files


def regular_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Yield (relative POSIX path, path) for each regular file; links not followed."""
    for dirpath, _, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = Path(dirpath, name)
            if stat.S_ISREG(path.lstat().st_mode):
                yield path.relative_to(root).as_posix(), path


def copy_back(
    collected: Path,
    target: Path,
    before: FileSnapshot,
    *,
    protected: frozenset[str] = frozenset(),
    secrets: Sequence[str] = (),
) -> CopyReport:
    """Apply the changes in `collected` to `target`, which `before` describes.

    `protected` paths are never written or deleted. When `collected` does not
    exist, nothing came back and `target` is left as it is.
    """
    report = CopyReport()
    if not collected.is_dir():
        logger.warning(
            "no copy of the folder came back from the machine; left it unchanged",
            extra={"action": "copy_back_skipped", "folder": str(target)},
        )
        return report
    after = dict(regular_files(collected))
    needles = [value.encode() for value in secrets if len(value) >= MIN_SECRET_CHARS]
    for relative, source in sorted(after.items()):
        if relative not in protected:
            _copy_file(relative, source, target, before.get(relative), needles, report)
    for relative in sorted(before.keys() - after.keys() - protected):
        _delete_file(relative, target, collected, before[relative], report)
    problems = (
        ("conflicts", report.conflicts),
        ("failed", report.failed),
        ("withheld", report.withheld),
    )
    for name, paths in problems:
        if paths:
            logger.warning(
                "%d file(s) not copied back (%s): %s",
                len(paths),
                name,
                ", ".join(paths[:10]),
                extra={"action": "copy_back_" + name, "folder": str(target)},
            )
    return report


def _copy_file(
    relative: str,
    source: Path,
    target: Path,
    state: FileState | None,
    needles: list[bytes],
    report: CopyReport,
) -> None:
    try:
        destination = safe_target(target, relative)
    except UnsafeArchiveError:
        report.failed.append(relative)
        return
    if (
        destination.is_file()
        and not destination.is_symlink()
        and filecmp.cmp(source, destination, shallow=False)
    ):
        return
    if host_changed(destination, state):
        report.conflicts.append(relative)
        return
    if _contains_any(source, needles):
        report.withheld.append(relative)
        return
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as handle:
            write_file_safely(destination, handle, source.stat().st_mode & 0o755)
    except OSError as exc:
        logger.warning(
            "could not copy %s back: %s",
            relative,
            exc,
            extra={"action": "copy_back_failed", "folder": str(target)},
        )
        report.failed.append(relative)
        return
    report.written.append(relative)


def _delete_file(
    relative: str,
    target: Path,
    collected: Path,
    state: FileState,
    report: CopyReport,
) -> None:
    try:
        destination = safe_target(target, relative)
    except UnsafeArchiveError:
        return
    if host_changed(destination, state):
        if destination.exists() or destination.is_symlink():
            report.conflicts.append(relative)
        return
    destination.unlink()
    report.deleted.append(relative)
    # Remove folders that the agent removed, once they are empty here too.
    parent = destination.parent
    while parent != target and not (collected / parent.relative_to(target)).is_dir():
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def host_changed(path: Path, state: FileState | None) -> bool:
    """Return whether `path` differs from `state`, its state at upload time."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return state is not None
    if state is None or not stat.S_ISREG(info.st_mode):
        return True
    return (info.st_size, info.st_mtime_ns) != (state.size, state.mtime_ns)


def _contains_any(path: Path, needles: list[bytes]) -> bool:
    if not needles:
        return False
    overlap = max(len(needle) for needle in needles) - 1
    tail = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            window = tail + chunk
            if any(needle in window for needle in needles):
                return True
            tail = window[-overlap:] if overlap else b""
    return False
