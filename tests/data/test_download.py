"""The real HTTP code against a local server: resume, mirrors, checksums, failures."""

from __future__ import annotations

import os

import pytest

from raml_cli.data.download import download_file, file_md5
from raml_cli.errors import DownloadError

PAYLOAD = os.urandom(300_000)


def fetch(urls, dest, **kwargs):
    kwargs.setdefault("backoff", 0.0)
    kwargs.setdefault("chunk_size", 16_384)
    return download_file(urls, dest, **kwargs)


def test_clean_download_checks_size_and_md5(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    out = fetch([server.url("a.tgz")], tmp_path / "dl" / "a.tgz", md5=make.md5(PAYLOAD),
                size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert not (tmp_path / "dl" / "a.tgz.part").exists()
    assert server.requests == [("a.tgz", None)]


def test_dropped_connection_resumes_with_range(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    server.drops["a.tgz"] = [100_000, 50_000]  # two drops, then a full answer
    out = fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    ranges = [r for _, r in server.requests]
    assert ranges[0] is None
    assert ranges[1] == "bytes=100000-"
    assert ranges[2] == "bytes=150000-"


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    (tmp_path / "a.tgz.part").write_bytes(PAYLOAD[:123_456])
    out = fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD),
                size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [("a.tgz", "bytes=123456-")]


def test_interrupted_run_keeps_the_part_and_the_next_run_finishes(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    server.drops["a.tgz"] = [0, 0]  # no progress twice in a row: give up this run
    with pytest.raises(DownloadError, match="connection closed") as err:
        fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD), attempts=2)
    assert "running again resumes" not in str(err.value)  # nothing was received
    server.drops["a.tgz"] = [200_000, 0]  # the next run: 200 kB, then no progress
    with pytest.raises(DownloadError, match="running again resumes"):
        fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD), attempts=1)
    assert (tmp_path / "a.tgz.part").stat().st_size == 200_000
    out = fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("a.tgz", "bytes=200000-")


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    server.ignore_range.add("a.tgz")
    (tmp_path / "a.tgz.part").write_bytes(b"stale bytes of another attempt")
    out = fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD


def test_complete_part_file_is_not_fetched_again(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    (tmp_path / "a.tgz.part").write_bytes(PAYLOAD)
    out = fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.requests == [("a.tgz", f"bytes={len(PAYLOAD)}-")]  # answered 416


def test_existing_verified_file_needs_no_request(server, tmp_path, make):
    (tmp_path / "a.tgz").write_bytes(PAYLOAD)
    fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5=make.md5(PAYLOAD))
    assert server.requests == []


def test_wrong_checksum_deletes_the_file_and_tries_the_next_mirror(server, tmp_path, make):
    server.files["bad/a.tgz"] = PAYLOAD[:-1] + b"!"
    server.files["good/a.tgz"] = PAYLOAD
    out = fetch([server.url("bad/a.tgz"), server.url("good/a.tgz")], tmp_path / "a.tgz",
                md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.paths_requested() == ["bad/a.tgz", "good/a.tgz"]


def test_wrong_checksum_everywhere_is_an_error_and_leaves_nothing(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    with pytest.raises(DownloadError, match="md5 .* does not match the expected 0+"):
        fetch([server.url("a.tgz")], tmp_path / "a.tgz", md5="0" * 32)
    assert sorted(os.listdir(tmp_path)) == []


def test_wrong_size_is_caught_before_the_md5(server, tmp_path, make):
    server.files["a.tgz"] = PAYLOAD
    with pytest.raises(DownloadError, match="expected 300,001"):
        fetch([server.url("a.tgz")], tmp_path / "a.tgz", size=len(PAYLOAD) + 1)


def test_dead_first_mirror_falls_back(server, tmp_path, make, dead_url):
    server.files["a.tgz"] = PAYLOAD
    out = fetch([dead_url, server.url("missing.tgz"), server.url("a.tgz")], tmp_path / "a.tgz",
                md5=make.md5(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    assert server.paths_requested() == ["missing.tgz", "a.tgz"]


def test_every_url_failing_lists_each_reason(server, tmp_path, dead_url):
    server.html.add("page.tgz")
    with pytest.raises(DownloadError) as err:
        fetch([dead_url, server.url("missing.tgz"), server.url("page.tgz")],
              tmp_path / "a.tgz")
    message = str(err.value)
    assert "Connection refused" in message
    assert "HTTP 404" in message
    assert "web page instead of the file" in message


def test_silent_server_times_out(server, tmp_path):
    server.files["slow.tgz"] = PAYLOAD
    server.stall["slow.tgz"] = 2.0
    with pytest.raises(DownloadError, match="timed out"):
        fetch([server.url("slow.tgz")], tmp_path / "a.tgz", timeout=0.3, attempts=1)


def test_file_md5(tmp_path, make):
    (tmp_path / "x").write_bytes(PAYLOAD)
    assert file_md5(tmp_path / "x") == make.md5(PAYLOAD)
