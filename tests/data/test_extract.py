"""Safe extraction: malicious tar and zip members are refused, truncation is a clear error."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from raml_cli.data.extract import UnsafeArchiveError, is_archive, safe_extract
from raml_cli.errors import DataError


def tar_with(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]],
             mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.fixture
def layout(tmp_path):
    """(archive folder, extraction folder inside a parent we can check for escapes)."""
    parent = tmp_path / "root"
    dest = parent / "dest"
    parent.mkdir()
    return tmp_path, dest


def escaped(parent: Path, dest: Path) -> list[str]:
    """Anything written next to ``dest`` (outside it) or at the absolute target."""
    return sorted(p.name for p in parent.iterdir() if p != dest)


def test_clean_tar_and_inside_symlink_are_extracted(layout):
    here, dest = layout
    archive = tar_with(here / "ok.tgz", [("top/a.txt", b"a"), link("top/b.txt", "a.txt")])
    safe_extract(archive, dest)
    assert (dest / "top" / "a.txt").read_bytes() == b"a"
    assert (dest / "top" / "b.txt").is_symlink()
    assert (dest / "top" / "b.txt").read_bytes() == b"a"


@pytest.mark.parametrize("member, why", [
    (("../evil.txt", b"x"), "'..'"),
    (("top/../../evil.txt", b"x"), "'..'"),
    (("/tmp/raml-test-evil.txt", b"x"), "absolute path"),
    (link("top/out", "../../evil.txt"), "outside the folder"),
    (link("top/abs", "/etc/passwd"), "absolute path"),
    (link("top/hard", "../evil.txt", tarfile.LNKTYPE), "'..'"),
])
def test_malicious_tar_members_are_refused(layout, member, why):
    here, dest = layout
    archive = tar_with(here / "bad.tgz", [("top/fine.txt", b"ok"), member])
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, dest)
    assert escaped(dest.parent, dest) == []
    assert not Path("/tmp/raml-test-evil.txt").exists()


def test_tar_device_file_is_refused(layout):
    here, dest = layout
    device = tarfile.TarInfo("top/null")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    archive = tar_with(here / "dev.tar", [device], mode="w")
    with pytest.raises(UnsafeArchiveError, match="device"):
        safe_extract(archive, dest)


def test_tar_writing_through_an_earlier_symlink_is_refused(layout):
    here, dest = layout
    (dest.parent / "outside").mkdir()
    # 'top/d' -> '..' would be caught lexically; a chain of inside-looking links is not.
    archive = tar_with(here / "chain.tgz", [link("top/x", "n/.."), link("top/n", "."),
                                            ("top/x/../../outside/evil.txt", b"x")])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, dest)
    assert list((dest.parent / "outside").iterdir()) == []


def zip_with(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_clean_zip_is_extracted_with_inside_symlink(layout):
    here, dest = layout
    archive = zip_with(here / "ok.zip", [("top/a.txt", b"a", None), ("top/dir/", b"", None),
                                         ("top/l", b"a.txt", stat.S_IFLNK | 0o777)])
    safe_extract(archive, dest)
    assert (dest / "top" / "a.txt").read_bytes() == b"a"
    assert (dest / "top" / "dir").is_dir()
    assert os.readlink(dest / "top" / "l") == "a.txt"


@pytest.mark.parametrize("member, why", [
    (("../evil.txt", b"x", None), "'..'"),
    (("/tmp/raml-test-evil.txt", b"x", None), "absolute path"),
    (("top/out", b"../../evil.txt", stat.S_IFLNK | 0o777), "outside the folder"),
    (("top/abs", b"/etc", stat.S_IFLNK | 0o777), "absolute path"),
    (("top/fifo", b"", stat.S_IFIFO | 0o644), "FIFO"),
])
def test_malicious_zip_members_are_refused(layout, member, why):
    here, dest = layout
    archive = zip_with(here / "bad.zip", [("top/fine.txt", b"ok", None), member])
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, dest)
    assert escaped(dest.parent, dest) == []
    assert not Path("/tmp/raml-test-evil.txt").exists()


def test_truncated_tgz_is_a_clear_error(layout, make):
    here, dest = layout
    data = make.tar({f"top/{k}.bin": os.urandom(20_000) for k in range(5)})
    (here / "cut.tgz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        safe_extract(here / "cut.tgz", dest)


def test_truncated_zip_is_a_clear_error(layout, make):
    here, dest = layout
    data = make.zip({f"top/{k}.bin": os.urandom(20_000) for k in range(5)})
    (here / "cut.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        safe_extract(here / "cut.zip", dest)


def test_corrupt_zip_member_fails_its_crc(layout, make):
    here, dest = layout
    data = bytearray(make.zip({"top/a.bin": b"z" * 5000}))
    zipfile.ZipFile(io.BytesIO(bytes(data)))  # well-formed before the damage
    start = bytes(data).index(b"top/a.bin") + len("top/a.bin")
    data[start + 10] ^= 0xFF  # flip a byte of the compressed data
    (here / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt"):
        safe_extract(here / "bad.zip", dest)


def test_not_an_archive_is_a_clear_error(layout):
    here, dest = layout
    (here / "notes.tgz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match="notes.tgz"):
        safe_extract(here / "notes.tgz", dest)


def test_archive_names():
    assert is_archive(Path("CUB_200_2011.tgz")) and is_archive(Path("x.ZIP"))
    assert is_archive(Path("a.tar.xz")) and not is_archive(Path("cars_annos.mat"))
