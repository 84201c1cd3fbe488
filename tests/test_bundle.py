"""The run bundle: tar writing, quoting, and safe extraction."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from engine.bundle import (
    Bundle,
    UnsafeArchiveError,
    bundle_bytes,
    env_file,
    extract_safely,
    shell_quote,
)


def _archive(*members: tarfile.TarInfo, content: bytes = b"x") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member in members:
            if member.isfile():
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
            else:
                tar.addfile(member)
    buffer.seek(0)
    return buffer


def test_bundle_contains_scripts_input_and_private_env(tmp_path):
    upload = tmp_path / "up"
    (upload / "sub").mkdir(parents=True)
    (upload / "sub" / "a.txt").write_text("a")
    bundle = Bundle(
        stdin=b"in", secrets={"KEY": "v"}, directories={"work/input": upload}
    )
    with tarfile.open(fileobj=io.BytesIO(bundle_bytes(bundle, "engine"))) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert "engine/run.sh" in members
    assert "engine/stdin" in members
    assert "engine/work/input/sub/a.txt" in members
    assert members["engine/env"].mode == 0o600


def test_bundle_repr_hides_secret_values():
    bundle = Bundle(secrets={"KEY": "hidden-value"})
    assert "hidden-value" not in repr(bundle)
    assert "KEY" in repr(bundle)


@pytest.mark.parametrize(
    "value", ["plain", "it's", "$(touch x) `y`", "line\nbreak", "'", "\\'\"", ""]
)
def test_shell_quote_round_trips_through_sh(value):
    script = env_file({"VALUE": value}).decode() + 'printf %s "$VALUE"'
    output = subprocess.run(["sh", "-c", script], capture_output=True, check=True)
    assert output.stdout.decode() == value
    assert shell_quote(value).startswith("'")


def test_extract_rejects_parent_components(tmp_path):
    archive = _archive(tarfile.TarInfo("result/../../escape.txt"))
    with pytest.raises(UnsafeArchiveError):
        extract_safely(archive, tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_rejects_absolute_paths(tmp_path):
    archive = _archive(tarfile.TarInfo("/tmp/absolute.txt"))
    with pytest.raises(UnsafeArchiveError):
        extract_safely(archive, tmp_path / "dest")


def test_extract_skips_links(tmp_path):
    link = tarfile.TarInfo("result/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    hard = tarfile.TarInfo("result/hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "/etc/passwd"
    extracted = extract_safely(_archive(link, hard), tmp_path / "dest")
    assert extracted == []
    assert not (tmp_path / "dest" / "result" / "link").exists()


def test_extract_does_not_write_through_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "result").symlink_to(outside)
    with pytest.raises(UnsafeArchiveError):
        extract_safely(_archive(tarfile.TarInfo("result/stdout")), dest)
    assert list(outside.iterdir()) == []


def test_extract_replaces_a_symlinked_file(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stdout").symlink_to(target)
    extract_safely(_archive(tarfile.TarInfo("stdout"), content=b"new"), dest)
    assert target.read_text() == "keep"
    assert (dest / "stdout").read_bytes() == b"new"
    assert not (dest / "stdout").is_symlink()
