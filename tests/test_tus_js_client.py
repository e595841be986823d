"""Interoperability with tus-js-client (Node) against the live gunicorn server.

``tests/interop`` is a small Node project pinning tus-js-client 4.x (with a
committed package-lock.json); ``upload.js`` there uploads one file and prints
the final upload URL and the requests it made as JSON. The Node dependencies
are installed with ``npm ci`` once per session when missing. The tests skip
only when ``node`` or ``npm`` is not installed.

Each upload is checked on the server side: the stored file (named by the last
URL segment, in the server's upload directory) has the source's sha256 and the
Redis record is ``complete``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import GunicornServer
from tests.live_support import (
    TUS_VERSION,
    auth,
    cookie_header,
    data_path,
    file_sha256,
    path_of,
    record_of,
    upload_id_of,
)

pytestmark = pytest.mark.live

INTEROP = Path(__file__).resolve().parent / "interop"
SCRIPT = INTEROP / "upload.js"
KIB = 1024
MIB = 1024 * KIB


def _pinned_version() -> str:
    return str(json.loads((INTEROP / "package.json").read_text())["dependencies"]["tus-js-client"])


def _installed_version() -> str | None:
    manifest = INTEROP / "node_modules" / "tus-js-client" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="session")
def node_project() -> Path:
    """tests/interop with its pinned dependencies installed (``npm ci`` when missing or stale)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the tus-js-client interop tests (install Node.js >= 18)")
    if _installed_version() != _pinned_version():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci in {INTEROP} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    assert _installed_version() == _pinned_version()
    return INTEROP


@pytest.fixture(scope="module")
def session(gunicorn_server: GunicornServer) -> Iterator[requests.Session]:
    """A login cookie for the module's live server."""
    s = gunicorn_server.login("js-client")
    try:
        yield s
    finally:
        s.close()


def run_upload(project: Path, options: dict[str, Any], timeout: float = 180.0) -> dict[str, Any]:
    """Run upload.js with ``options``; return its JSON output (``error`` set when the upload failed)."""
    result = subprocess.run(
        ["node", str(SCRIPT)],
        cwd=project,
        input=json.dumps(options),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"upload.js printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    output: dict[str, Any] = json.loads(lines[-1])
    if result.returncode != 0:
        assert "error" in output, result.stderr
    return output


def source_file(tmp_path: Path, size: int, seed: int) -> Path:
    path = tmp_path / f"source-{seed}.bin"
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def assert_stored(server: GunicornServer, url: str, source: Path) -> dict[str, str]:
    """The final upload's file has the source's bytes and its record is complete."""
    upload_id = upload_id_of(url)
    stored = data_path(server, upload_id)
    assert stored.is_file(), f"no data file {stored}"
    assert stored.stat().st_size == source.stat().st_size
    assert file_sha256(stored) == file_sha256(source)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert record["offset"] == record["length"] == str(source.stat().st_size)
    return record


@pytest.mark.parametrize("source_kind", ["stream", "buffer"])
def test_multi_chunk_upload(
    node_project: Path,
    gunicorn_server: GunicornServer,
    session: requests.Session,
    tmp_path: Path,
    source_kind: str,
) -> None:
    """chunkSize 256 KiB, ~3 MiB: one POST, then one PATCH per chunk at increasing offsets; exact file."""
    server = gunicorn_server
    chunk = 256 * KIB
    source = source_file(tmp_path, 3 * MIB + 12_345, seed=1)
    output = run_upload(
        node_project,
        {
            "endpoint": server.files_url,
            "file": str(source),
            "source": source_kind,
            "chunkSize": chunk,
            "headers": {"Cookie": cookie_header(session)},
            "metadata": {"filename": "chunked.bin", "filetype": "application/octet-stream"},
        },
    )
    assert "error" not in output, output
    url = output["url"]
    assert url.startswith(server.files_url)

    sent = output["requests"]
    posts = [r for r in sent if r["method"] == "POST"]
    patches = [r for r in sent if r["method"] == "PATCH"]
    assert [r["status"] for r in posts] == [201]
    size = source.stat().st_size
    assert len(patches) == math.ceil(size / chunk)
    assert all(r["status"] == 204 for r in patches)
    offsets = [int(r["uploadOffset"]) for r in patches]
    assert offsets == [min((i + 1) * chunk, size) for i in range(len(patches))]
    assert all(path_of(r["url"]) == path_of(url) for r in patches)

    record = assert_stored(server, url, source)
    assert record["filename"] == "chunked.bin"
    head = requests.head(url, headers=auth(session), timeout=30)
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(size)


@pytest.mark.parametrize("chunk_size", [None, 256 * KIB], ids=["one-patch-per-part", "chunked-parts"])
def test_parallel_upload_uses_concatenation(
    node_project: Path,
    gunicorn_server: GunicornServer,
    session: requests.Session,
    tmp_path: Path,
    chunk_size: int | None,
) -> None:
    """parallelUploads 3: three partial uploads and one final (Upload-Concat); the final file is exact."""
    server = gunicorn_server
    source = source_file(tmp_path, 3 * MIB + 777, seed=2)
    options: dict[str, Any] = {
        "endpoint": server.files_url,
        "file": str(source),
        "parallelUploads": 3,
        "headers": {"Cookie": cookie_header(session)},
        "metadata": {"filename": "parallel.bin"},
    }
    if chunk_size:
        options["chunkSize"] = chunk_size
    output = run_upload(node_project, options)
    assert "error" not in output, output
    url = output["url"]

    sent = output["requests"]
    partial_posts = [r for r in sent if r["method"] == "POST" and r["uploadConcat"] == "partial"]
    final_posts = [r for r in sent if r["method"] == "POST" and (r["uploadConcat"] or "").startswith("final;")]
    assert len(partial_posts) == 3 and all(r["status"] == 201 for r in partial_posts)
    assert len(final_posts) == 1 and final_posts[0]["status"] == 201
    partial_urls = final_posts[0]["uploadConcat"][len("final;") :].split(" ")
    assert len(partial_urls) == 3
    assert all(r["status"] == 204 for r in sent if r["method"] == "PATCH")
    if chunk_size:
        assert len([r for r in sent if r["method"] == "PATCH"]) > 3

    record = assert_stored(server, url, source)
    assert record["concat"] == "final"
    assert record["filename"] == "parallel.bin"
    total = 0
    for partial_url in partial_urls:
        partial = record_of(server, upload_id_of(partial_url))
        assert partial["concat"] == "partial"
        assert partial["state"] == "complete"
        total += int(partial["length"])
    assert total == source.stat().st_size

    head = requests.head(url, headers=auth(session), timeout=30)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(source.stat().st_size)
    assert head.headers["Upload-Concat"] == final_posts[0]["uploadConcat"]
    assert head.headers["Tus-Resumable"] == TUS_VERSION


def test_upload_without_login_is_refused(node_project: Path, gunicorn_server: GunicornServer, tmp_path: Path) -> None:
    """Without the session cookie tus-js-client gets the server's refusal and nothing is stored."""
    server = gunicorn_server
    before = set(os.listdir(server.upload_dir))
    source = source_file(tmp_path, 10_000, seed=3)
    output = run_upload(node_project, {"endpoint": server.files_url, "file": str(source)})
    assert output.get("error"), output
    assert output["status"] in (401, 403)
    assert set(os.listdir(server.upload_dir)) == before
