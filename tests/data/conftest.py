"""Fixtures for the dataset tests: a local HTTP server and builders of real-layout archives.

The server (``http.server`` on 127.0.0.1, a thread per request) implements ``Range``
requests itself and can be told to drop a connection mid-file, to ignore ``Range``, to
answer with a web page, or to stall. Nothing here touches the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import socket
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from raml_cli.data import catalog


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (timeout tests) makes the handler's write fail


class FileServer:
    """Serves ``files`` (URL path -> bytes); records every request as (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drops: dict[str, list[int]] = {}  # path -> bytes to send before each drop
        self.ignore_range: set[str] = set()
        self.html: set[str] = set()
        self.stall: dict[str, float] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.lstrip("/")
                server.requests.append((path, self.headers.get("Range")))
                if path in server.stall:
                    time.sleep(server.stall[path])
                if path in server.html:
                    body = b"<html><body>Please confirm the download</body></html>"
                    self._send(200, body, {"Content-Type": "text/html; charset=utf-8"})
                    return
                if path not in server.files:
                    self._send(404, b"not found", {})
                    return
                data = server.files[path]
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and path not in server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(data):
                        self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                body = data[start:]
                headers = {"Content-Type": "application/octet-stream"}
                status = 200
                if start:
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                drops = server.drops.get(path)
                if drops:
                    cut = drops.pop(0)
                    self.send_response(status)
                    for key, value in {**headers, "Content-Length": str(len(body))}.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._send(status, body, headers)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def paths_requested(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def server():
    """A running :class:`FileServer`; stopped after the test."""
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def dead_url() -> str:
    """A URL on a local port that nothing listens on (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/gone.tgz"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar archive (gzip by default) of ``files`` (member name -> content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def write_mat(path: Path, records: list[dict], class_names: list[str] | None = None) -> None:
    """A MATLAB v5 file with an ``annotations`` struct array, as the Cars releases have."""
    import scipy.io

    fields = list(records[0])
    table = np.zeros((1, len(records)), dtype=[(name, "O") for name in fields])
    for i, record in enumerate(records):
        table[0, i] = tuple(record[name] for name in fields)
    content = {"annotations": table}
    if class_names is not None:
        content["class_names"] = np.array(class_names, dtype=object).reshape(1, -1)
    scipy.io.savemat(str(path), content)


PLACEHOLDER = b"\xff\xd8\xff"  # a JPEG start: the parsers never decode, only check existence


def cub_files(classes: int = 4, per_class: int = 3, top: str = "CUB_200_2011/"
              ) -> dict[str, bytes]:
    """A small CUB-200-2011 tree (member name -> content); classes 1..C, C/2 train."""
    files, images, labels, split = {}, [], [], []
    names = [f"{c:03d}.Bird_{c}" for c in range(1, classes + 1)]
    image_id = 0
    for c, folder in enumerate(names, start=1):
        for k in range(per_class):
            image_id += 1
            relative = f"{folder}/Bird_{c}_{k:04d}.jpg"
            files[f"{top}images/{relative}"] = PLACEHOLDER
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c}")
            split.append(f"{image_id} {k % 2}")
    files[f"{top}images.txt"] = ("\n".join(images) + "\n").encode()
    files[f"{top}image_class_labels.txt"] = ("\n".join(labels) + "\n").encode()
    files[f"{top}classes.txt"] = "".join(f"{c} {n}\n" for c, n in
                                         enumerate(names, start=1)).encode()
    files[f"{top}train_test_split.txt"] = ("\n".join(split) + "\n").encode()
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def sop_files(train_classes: int = 3, test_classes: int = 2, per_class: int = 2,
              top: str = "Stanford_Online_Products/") -> dict[str, bytes]:
    """A small Stanford Online Products tree in the documented Ebay_*.txt format."""
    files = {}
    image_id, class_id = 0, 0
    for split, count in (("train", train_classes), ("test", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for _ in range(count):
            class_id += 1
            for k in range(per_class):
                image_id += 1
                path = f"bicycle_final/{111085122870 + class_id}_{k}.JPG"
                files[top + path] = PLACEHOLDER
                lines.append(f"{image_id} {class_id} 1 {path}")
        files[f"{top}Ebay_{split}.txt"] = ("\n".join(lines) + "\n").encode()
    return files


@dataclasses.dataclass
class LocalRelease:
    """One file of a test release: its content and the server path it is served at."""

    name: str
    data: bytes


@pytest.fixture
def local_spec(monkeypatch, server):
    """Replace a catalogue entry by one whose files are served locally.

    ``local_spec("cub200", [releases...], expected={"train": (2, 6), ...})`` where each
    release is a list of :class:`LocalRelease` (served at ``/<release>/<name>``) or of
    ``(name, urls, md5)`` tuples for files that are not served (dead URLs).
    """

    def install(name: str, releases: list[list], expected: dict | None,
                serve: bool = True) -> catalog.DatasetSpec:
        spec = catalog.DATASETS[name]
        built = []
        for index, files in enumerate(releases):
            remote = []
            for item in files:
                if isinstance(item, LocalRelease):
                    path = f"r{index}/{item.name}"
                    if serve:
                        server.files[path] = item.data
                    remote.append(catalog.RemoteFile(item.name, (server.url(path),),
                                                     md5=md5(item.data), size=len(item.data)))
                else:
                    file_name, urls, checksum = item
                    remote.append(catalog.RemoteFile(file_name, tuple(urls), md5=checksum))
            built.append(catalog.Release(f"release{index}", tuple(remote)))
        counts = None if expected is None else {
            split: catalog.SplitCounts(*value) for split, value in expected.items()}
        replaced = dataclasses.replace(spec, releases=tuple(built), expected=counts)
        monkeypatch.setitem(catalog.DATASETS, name, replaced)
        return replaced

    return install


@pytest.fixture
def make():
    """The archive and layout builders of this file, for the tests (conftest is not importable
    under ``--import-mode=importlib``)."""
    return SimpleNamespace(tar=tar_bytes, zip=zip_bytes, write_mat=write_mat,
                           cub_files=cub_files, sop_files=sop_files, write_tree=write_tree,
                           md5=md5, LocalRelease=LocalRelease, PLACEHOLDER=PLACEHOLDER)
