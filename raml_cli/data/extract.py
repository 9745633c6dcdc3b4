"""Safe extraction of tar (plain, gzip, bzip2, xz) and zip archives.

Datasets come as archives from the internet or from the user; an archive must not
be able to write outside the folder it is extracted into. Before each member is
written, :func:`safe_extract` refuses (the whole archive, with a message naming the
member):

- absolute paths (``/etc/x``, ``C:\\x``) and paths that climb out with ``..``;
- symbolic links whose target lies outside the folder, and hard links to outside;
- device files, FIFOs and sockets;
- any member whose destination resolves outside the folder through a link extracted
  before it.

After extraction every symbolic link is checked again against where it resolves.
For tar, Python's own ``data`` extraction filter runs as well, as a second line.
A truncated or corrupt archive raises :class:`DataError`. The caller extracts into a
temporary folder and deletes it on any error (see :mod:`raml_cli.data.prepare`), so
nothing half-extracted is left looking complete.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

from raml_cli.errors import DataError
from raml_cli.progress import NULL_REPORTER, Reporter

MIB = 1 << 20
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".txz", ".tar.xz")
ZIP_SUFFIXES = (".zip",)

_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile,
            lzma.LZMAError)


class UnsafeArchiveError(DataError):
    """An archive member would land outside the extraction folder (or is a device file)."""


def is_archive(path: Path) -> bool:
    """Whether ``path`` is named like a tar or zip archive."""
    name = Path(path).name.lower()
    return name.endswith(TAR_SUFFIXES + ZIP_SUFFIXES)


#: Extraction stops beyond this many times the archive's size (plus EXPANSION_MARGIN):
#: the datasets' images are JPEGs, which archives barely compress; a member that expands
#: more is a decompression bomb (or not a dataset), refused before it fills the disk.
EXPANSION_FACTOR = 4
EXPANSION_MARGIN = 64 * MIB


def extraction_limit(archive: Path) -> int:
    """The most bytes :func:`safe_extract` writes for ``archive`` by default."""
    return EXPANSION_FACTOR * Path(archive).stat().st_size + EXPANSION_MARGIN


def safe_extract(archive: Path, dest: Path, reporter: Reporter | None = None,
                 max_bytes: int | None = None) -> None:
    """Extract ``archive`` (tar or zip, by name, else by content) into ``dest``.

    Args:
        archive: the archive file.
        dest: the folder to extract into (created if needed). On an error it may hold
            part of the archive: extract into a temporary folder and delete it on error.
        reporter: progress (a bar over the archive's MiB).
        max_bytes: stop (DataError) before the members' declared sizes add up to more;
            default :func:`extraction_limit`. Sizes are those the archive declares, which
            tar and zip readers enforce, so the check comes before the bytes are written.

    Raises:
        UnsafeArchiveError: a member would land outside ``dest`` or is a device file.
        DataError: the archive is truncated, corrupt, or neither tar nor zip.
    """
    reporter = reporter or NULL_REPORTER
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    try:
        limit = extraction_limit(archive) if max_bytes is None else int(max_bytes)
        if name.endswith(ZIP_SUFFIXES) or (not name.endswith(TAR_SUFFIXES)
                                          and zipfile.is_zipfile(archive)):
            _extract_zip(archive, dest, reporter, limit)
        else:
            _extract_tar(archive, dest, reporter, limit)
        _check_links(archive, dest)
    except UnsafeArchiveError:
        raise
    except _CORRUPT as err:
        raise DataError(f"{archive} is truncated or corrupt ({err or type(err).__name__}). "
                        "Delete it and download it again (or fetch a fresh copy).") from err
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"The disk is full while extracting {archive} into {dest}. Free "
                            "space or choose another --root, then run again.") from err
        raise DataError(f"Cannot extract {archive} into {dest}: {err}. Check that the "
                        "archive is readable and the folder writable.") from err


def _unsafe(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"Refusing to extract {archive}: its member {member!r} {why}. "
                              "The archive is damaged or malicious; nothing of it was kept. "
                              "Fetch the file from the official source.")


def _too_large(archive: Path, member: str, total: int, limit: int) -> DataError:
    return DataError(
        f"Refusing to extract {archive}: with its member {member!r} it would expand to more "
        f"than {limit // MIB} MiB ({total // MIB} MiB declared so far), far beyond what an "
        "archive of this size holds for a dataset of images. It is damaged or a "
        "decompression bomb; nothing of it was kept. Fetch the file from the official source.")


def _inside(base: str, path: str) -> bool:
    return path == base or path.startswith(base + os.sep)


def _check_name(archive: Path, name: str) -> str:
    """The member name normalised, or an error if it is absolute or climbs out."""
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise _unsafe(archive, name, "has an absolute path")
    normal = posixpath.normpath(name.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise _unsafe(archive, name, "points outside the folder with '..'")
    return normal


def _check_hard_link(archive: Path, member: str, target: str) -> str:
    """A hard link's target, normalised; the error names the member and its target."""
    try:
        return _check_name(archive, target)
    except UnsafeArchiveError:
        why = ("an absolute path" if target.startswith(("/", "\\")) or target[1:2] == ":"
               else "a path that climbs out of the folder with '..'")
        raise UnsafeArchiveError(
            f"Refusing to extract {archive}: its member {member!r} is a hard link to "
            f"{target!r}, {why}. The archive is damaged or malicious; nothing of it was "
            "kept. Fetch the file from the official source.") from None


def _check_target(archive: Path, dest_real: str, member: str, target: str) -> None:
    """A file is about to be written at ``dest/target``: it must resolve inside ``dest``."""
    if not _inside(dest_real, os.path.realpath(os.path.join(dest_real, target))):
        raise _unsafe(archive, member, "would be written outside the folder through a link")


def _check_link(archive: Path, dest_real: str, member: str, normal: str, link: str) -> None:
    if link.startswith(("/", "\\")) or (len(link) > 1 and link[1] == ":"):
        raise _unsafe(archive, member, f"is a link to the absolute path {link!r}")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(normal), link))
    resolved = os.path.realpath(os.path.join(dest_real, posixpath.dirname(normal), link))
    if lexical == ".." or lexical.startswith("../") or not _inside(dest_real, resolved):
        raise _unsafe(archive, member, f"is a link to {link!r}, outside the folder")


def _extract_tar(archive: Path, dest: Path, reporter: Reporter, limit: int) -> None:
    dest_real = os.path.realpath(dest)
    size = archive.stat().st_size
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar, \
            reporter.track(f"extracting {archive.name}", total=size / MIB, unit="MiB") as bar:
        done = 0
        expanded = 0
        for member in tar:
            expanded += max(0, member.size)
            if expanded > limit:
                raise _too_large(archive, member.name, expanded, limit)
            normal = _check_name(archive, member.name)
            if member.isdev() or member.isfifo():
                raise _unsafe(archive, member.name, "is a device file or FIFO")
            if member.issym():
                _check_link(archive, dest_real, member.name, normal, member.linkname)
            elif member.islnk():
                target = _check_hard_link(archive, member.name, member.linkname)
                _check_target(archive, dest_real, member.name, target)
            _check_target(archive, dest_real, member.name, normal)
            if hasattr(tarfile, "data_filter"):
                try:
                    tar.extract(member, dest, filter="data")
                except tarfile.FilterError as err:
                    raise _unsafe(archive, member.name, f"is refused ({err})") from err
            else:  # Python without extraction filters: our checks above are the guard
                tar.extract(member, dest)
            position = raw.tell()
            bar.advance((position - done) / MIB)
            done = position


def _extract_zip(archive: Path, dest: Path, reporter: Reporter, limit: int) -> None:
    dest_real = os.path.realpath(dest)
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        expanded = 0
        for info in members:  # declared sizes; the zip reader stops at them
            expanded += info.file_size
            if expanded > limit:
                raise _too_large(archive, info.filename, expanded, limit)
        total = sum(info.compress_size for info in members)
        with reporter.track(f"extracting {archive.name}", total=total / MIB,
                            unit="MiB") as bar:
            for info in members:
                _extract_zip_member(archive, zf, info, dest_real)
                bar.advance(info.compress_size / MIB)


def _extract_zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                        dest_real: str) -> None:
    normal = _check_name(archive, info.filename)
    mode = info.external_attr >> 16
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise _unsafe(archive, info.filename, "is a device file, FIFO or socket")
    _check_target(archive, dest_real, info.filename, normal)
    target = os.path.join(dest_real, normal)
    if stat.S_ISLNK(mode):
        link = zf.read(info).decode("utf-8", errors="strict")
        _check_link(archive, dest_real, info.filename, normal, link)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(link, target)
        return
    if info.is_dir():
        os.makedirs(target, exist_ok=True)
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zf.open(info) as source, open(target, "wb") as out:  # reading checks the CRC
        shutil.copyfileobj(source, out, MIB)


def _check_links(archive: Path, dest: Path) -> None:
    """After extraction: every symbolic link must still resolve inside ``dest``."""
    dest_real = os.path.realpath(dest)
    for directory, subdirs, files in os.walk(dest):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and not _inside(dest_real, os.path.realpath(path)):
                raise _unsafe(archive, os.path.relpath(path, dest),
                              "resolves outside the folder through a chain of links")
