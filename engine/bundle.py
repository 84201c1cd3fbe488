"""The run bundle: what is copied into a machine, and how results come back.

Layout inside the machine, relative to the bundle root (`/engine` on Docker):

    run.sh, start.sh,   the guest scripts that run, detach, follow and report on
    follow.sh, status.sh  the agent
    stdin               the command's standard input
    env                 secrets as quoted assignments, mode 0600, removed on start
    work/               the agent's working directory
    work/input/         the `--upload` folder
    work/output/        files the agent leaves for the host
    result/             stdout, stderr, exit-status, pid, error

Uploads are one tar stream; collected tar streams are extracted without absolute
paths, `..` components or links.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
import time
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO

from engine.exceptions import UploadError

# Guest paths copied back to the host after every run.
DEFAULT_COLLECT_PATHS = ("result", "work/output")

GUEST_SCRIPTS = ("run.sh", "start.sh", "follow.sh", "status.sh")


@dataclasses.dataclass(frozen=True, slots=True)
class Bundle:
    """The files of one run. `directories` maps guest paths to host folders."""

    stdin: bytes | None = None
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    directories: Mapping[str, Path] = dataclasses.field(default_factory=dict)
    files: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Bundle(stdin={len(self.stdin or b'')} bytes, "
            f"secrets={sorted(self.secrets)}, directories={dict(self.directories)})"
        )


def guest_script(name: str) -> bytes:
    return resources.files("engine.guest").joinpath(name).read_bytes()


def shell_quote(value: str) -> str:
    """Quote `value` for a POSIX shell: single quotes, each `'` written as `'\\''`."""
    return "'" + value.replace("'", "'\\''") + "'"


def env_file(secrets: Mapping[str, str]) -> bytes:
    lines = [
        f"{name}={shell_quote(value)}\n" for name, value in sorted(secrets.items())
    ]
    return "".join(lines).encode()


def write_bundle(bundle: Bundle, stream: IO[bytes], prefix: str = "") -> None:
    """Write `bundle` to `stream` as an uncompressed tar archive under `prefix`."""
    now = time.time()
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("", "work", "work/input", "work/output", "result"):
            _add_directory(tar, _join(prefix, directory), now)
        for name in GUEST_SCRIPTS:
            _add_bytes(tar, _join(prefix, name), guest_script(name), 0o755, now)
        if bundle.stdin is not None:
            _add_bytes(tar, _join(prefix, "stdin"), bundle.stdin, 0o644, now)
        if bundle.secrets:
            _add_bytes(tar, _join(prefix, "env"), env_file(bundle.secrets), 0o600, now)
        for guest_path, content in bundle.files.items():
            _add_bytes(tar, _join(prefix, guest_path), content, 0o644, now)
        for guest_path, host_dir in bundle.directories.items():
            _add_tree(tar, host_dir, _join(prefix, guest_path))


def bundle_bytes(bundle: Bundle, prefix: str = "") -> bytes:
    buffer = io.BytesIO()
    write_bundle(bundle, buffer, prefix)
    return buffer.getvalue()


def _join(prefix: str, path: str) -> str:
    joined = str(PurePosixPath(prefix, path)) if prefix else path
    return joined or "."


def _add_directory(tar: tarfile.TarFile, name: str, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = mtime
    tar.addfile(info)


def _add_bytes(
    tar: tarfile.TarFile, name: str, content: bytes, mode: int, mtime: float
) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(content))


def _add_tree(tar: tarfile.TarFile, host_dir: Path, guest_path: str) -> None:
    if not host_dir.is_dir():
        raise UploadError(
            f"upload folder {str(host_dir)!r} does not exist or is not a folder"
        )
    _add_directory(tar, guest_path, host_dir.stat().st_mtime)
    for path in sorted(_walk(host_dir)):
        relative = path.relative_to(host_dir).as_posix()
        # Symlinks are stored as links, never followed, so nothing outside the
        # folder is uploaded.
        tar.add(path, arcname=f"{guest_path}/{relative}", recursive=False)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in dirnames + filenames:
            yield base / name


class UnsafeArchiveError(Exception):
    """A collected archive tried to write outside its destination."""


def extract_safely(stream: IO[bytes], destination: Path, strip: int = 0) -> list[str]:
    """Extract regular files and folders from a tar stream into `destination`.

    Skips links and device files, and raises on absolute paths and `..`
    components. `strip` drops that many leading path components. Returns the
    extracted relative paths.
    """
    destination.mkdir(parents=True, exist_ok=True)
    extracted: list[str] = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            relative = _safe_relative(member.name, strip)
            if relative is None:
                continue
            target = safe_target(destination, relative)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                write_file_safely(target, source, member.mode & 0o755)
            else:
                continue
            extracted.append(relative.as_posix())
    return extracted


def _safe_relative(name: str, strip: int) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeArchiveError(f"archive member {name!r} escapes the destination")
    parts = [part for part in path.parts if part not in (".", "")][strip:]
    if not parts:
        return None
    return PurePosixPath(*parts)


def safe_target(destination: Path, relative: PurePosixPath | str) -> Path:
    """Return `destination / relative`, raising if the path could escape it.

    Rejects absolute paths, `..` components, and existing symlinks on the way.
    """
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeArchiveError(f"path {str(relative)!r} escapes the destination")
    current = destination
    for part in path.parts[:-1]:
        current = current / part
        if current.is_symlink():
            raise UnsafeArchiveError(
                f"{current} is a symlink; refusing to extract through it"
            )
    return destination.joinpath(*path.parts)


def write_file_safely(target: Path, source: IO[bytes], mode: int) -> None:
    """Write `source` to `target`, replacing any file or symlink there unfollowed."""
    if target.is_symlink() or target.exists():
        target.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, mode or 0o644)
    with os.fdopen(fd, "wb") as handle:
        while chunk := source.read(1 << 20):
            handle.write(chunk)
