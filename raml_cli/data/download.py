"""Fetching one file over HTTP(S) (or FTP): mirrors, resume, checksums, progress.

:func:`download_file` tries each URL in turn. The bytes go to ``DEST.part``; an
interrupted transfer continues from the end of that file with an HTTP ``Range``
request (in the same call after a dropped connection, or in a later call), and a
server that ignores ``Range`` makes it start over. A complete file is checked
against its size and md5 before it is renamed to ``DEST``; a mismatch deletes it and
moves on to the next URL. Only the standard library (``urllib``) is used.

>>> from pathlib import Path
>>> import tempfile
>>> src = Path(tempfile.mkdtemp()) / "a.bin"
>>> _ = src.write_bytes(b"hello")
>>> out = download_file([src.as_uri()], src.with_name("b.bin"),
...                     md5="5d41402abc4b2a76b9719d911017c592")
>>> out.read_bytes()
b'hello'
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from raml_cli import __version__
from raml_cli.errors import DownloadError
from raml_cli.progress import NULL_REPORTER, Bar, Reporter

MIB = 1 << 20
#: Seconds before the first retry of a URL that brought no new bytes (doubled each time).
RETRY_BACKOFF_S = 1.0
USER_AGENT = f"raml/{__version__} (+https://github.com/pavelsuma/raml)"


class TransferError(Exception):
    """One URL failed; ``str`` is the short reason (collected into the final message)."""


def file_md5(path: Path, reporter: Reporter | None = None, chunk_size: int = 4 * MIB) -> str:
    """Hex md5 of a file, with a progress bar (MiB) for large files."""
    reporter = reporter or NULL_REPORTER
    digest = hashlib.md5()
    size = Path(path).stat().st_size
    with open(path, "rb") as handle, reporter.track(f"md5 {Path(path).name}",
                                                    total=_mib(size), unit="MiB") as bar:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            bar.advance(len(chunk) / MIB)
    return digest.hexdigest()


def _mib(n: int | None) -> float | None:
    return None if n is None else n / MIB


def download_file(urls: Sequence[str], dest: Path, *, md5: str | None = None,
                  size: int | None = None, reporter: Reporter | None = None,
                  timeout: float = 30.0, attempts: int = 4, backoff: float | None = None,
                  chunk_size: int = MIB) -> Path:
    """Download one file from the first URL that delivers it intact.

    Args:
        urls: the URLs to try, in order (the original, then mirrors).
        dest: where the complete file goes (its folder is created).
        md5: the expected hex md5 (``None``: not checked).
        size: the expected size in bytes (``None``: taken from the server).
        reporter: progress (a bar in MiB with rate and ETA per transfer).
        timeout: seconds to wait for a connection or for the next bytes.
        attempts: tries per URL in a row that bring no new bytes (a transfer that makes
            progress and then drops is resumed without counting against this).
        backoff: seconds before the first retry (default :data:`RETRY_BACKOFF_S`); doubled
            each time, at most 30.
        chunk_size: bytes per read.

    Returns:
        ``dest``. If ``dest`` already exists with the right md5 nothing is fetched.

    Raises:
        DownloadError: every URL failed; the message lists each URL and why.
    """
    reporter = reporter or NULL_REPORTER
    backoff = RETRY_BACKOFF_S if backoff is None else backoff
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is None or file_md5(dest, reporter) == md5:
            return dest
        reporter.warn(f"{dest} does not match its md5; fetching it again.")
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        try:
            _transfer(url, part, size, reporter, timeout, attempts, backoff, chunk_size)
            problem = _check(part, size, md5, reporter)
        except TransferError as err:
            failures.append(f"{_short(url)}: {err}")
            continue
        if problem:
            part.unlink(missing_ok=True)
            failures.append(f"{_short(url)}: {problem}")
            reporter.warn(f"{_short(url)}: {problem}; trying the next URL.")
            continue
        os.replace(part, dest)
        return dest
    partial = (f" The partial file {part} is kept: running again resumes it."
               if part.exists() and part.stat().st_size else "")
    raise DownloadError(f"Could not download {dest.name} from any known URL: "
                        f"{'; '.join(failures) or 'no URL is known'}.{partial}")


def _short(url: str) -> str:
    return url if len(url) <= 90 else url[:87] + "..."


def _check(part: Path, size: int | None, md5: str | None, reporter: Reporter) -> str | None:
    got = part.stat().st_size
    if size is not None and got != size:
        return f"got {got:,} bytes, expected {size:,}"
    if md5 is not None:
        actual = file_md5(part, reporter)
        if actual != md5:
            return f"md5 {actual} does not match the expected {md5} (damaged or different file)"
    return None


def _transfer(url: str, part: Path, size: int | None, reporter: Reporter, timeout: float,
              attempts: int, backoff: float, chunk_size: int) -> None:
    """Bring ``part`` to the complete file from ``url``, resuming and retrying."""
    failures_in_a_row = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            if have == size:
                return
            part.unlink()
            have = 0
        try:
            _request(url, part, have, size, reporter, timeout, chunk_size)
            return
        except _Dropped as err:
            received, reason = err.received, str(err)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing past our end: complete, or a stale part
                if size is None or have == size:
                    return
                part.unlink()
                continue
            if err.code < 500 and err.code not in (408, 429):
                raise TransferError(f"HTTP {err.code} {err.reason}") from None
            received, reason = 0, f"HTTP {err.code} {err.reason}"
        except urllib.error.URLError as err:
            if isinstance(err.reason, (ConnectionRefusedError, socket.gaierror)):
                raise TransferError(_reason(err.reason)) from None
            received, reason = 0, _reason(err.reason)
        except (OSError, http.client.HTTPException) as err:
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EACCES,
                                                           errno.EROFS):
                raise DownloadError(f"Cannot write {part}: {err.strerror}. Free disk space or "
                                    "choose another --root, then run again (the download "
                                    "resumes).") from err
            received, reason = 0, _reason(err)
        failures_in_a_row = 0 if received else failures_in_a_row + 1
        if failures_in_a_row >= attempts:
            raise TransferError(reason)
        if failures_in_a_row:
            time.sleep(min(backoff * 2 ** (failures_in_a_row - 1), 30.0))
        reporter.log(f"{part.name}: {reason}; resuming.")


class _Dropped(Exception):
    def __init__(self, reason: str, received: int) -> None:
        super().__init__(reason)
        self.received = received


def _reason(err: object) -> str:
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    text = str(err) or type(err).__name__
    return text[:200]


def _request(url: str, part: Path, have: int, size: int | None, reporter: Reporter,
             timeout: float, chunk_size: int) -> int:
    """One HTTP request appending to ``part`` from byte ``have``; returns bytes received.

    Raises ``_Dropped`` (with the bytes received) when the connection ends early.
    """
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", None)
        if have and status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise TransferError(f"the server resumed at byte {start}, not {have}")
            mode = "ab"
        elif status in (None, 200):  # FTP and file: URLs have no status; 200: from scratch
            have, mode = 0, "wb"
        else:
            raise TransferError(f"unexpected HTTP status {status}")
        content_type = response.headers.get("Content-Type", "") or ""
        if content_type.startswith("text/html"):
            raise TransferError("the server sent a web page instead of the file (a login, "
                                "quota or confirmation page)")
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        total = have + remaining if remaining is not None else size
        if have:
            reporter.log(f"{part.name}: resuming at {have / MIB:,.1f} MiB")
        received = 0
        with open(part, mode) as out, reporter.track(
                f"{part.name[:-len('.part')]}", total=_mib(total), unit="MiB") as bar:
            bar.advance(have / MIB)
            meter = _RateMeter(bar)
            while True:
                try:
                    chunk = response.read(chunk_size)
                except (OSError, http.client.HTTPException) as err:
                    raise _Dropped(f"connection lost ({_reason(err)})", received) from err
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                meter.add(len(chunk))
        if remaining is not None and received < remaining:
            raise _Dropped(f"connection closed after {have + received:,} of {total:,} bytes",
                           received)
        return received


def _range_start(content_range: str) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else None


class _RateMeter:
    """Advances a bar in MiB and shows the transfer rate, refreshed twice a second."""

    def __init__(self, bar: Bar) -> None:
        self.bar = bar
        self.window_start = time.monotonic()
        self.window_bytes = 0

    def add(self, n: int) -> None:
        self.bar.advance(n / MIB)
        self.window_bytes += n
        elapsed = time.monotonic() - self.window_start
        if elapsed >= 0.5:
            self.bar.update(rate=f"{self.window_bytes / MIB / elapsed:.1f} MiB/s")
            self.window_start, self.window_bytes = time.monotonic(), 0
