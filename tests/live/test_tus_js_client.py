"""Interoperability with tus-js-client (Node) against the live gunicorn server.

``tests/interop`` is a small Node project pinning tus-js-client 4.x (with a
committed package-lock.json); ``upload.js`` there uploads one file and prints
the final upload URL and the requests it made as JSON. The Node dependencies
are installed with ``npm ci`` once per session when missing. The tests skip
only when ``node`` or ``npm`` is not installed.

Each upload is checked on the server side: the stored file (named by the last
URL segment, in the server's upload directory) has the source's sha256 and the
Redis record is ``complete``.

Two tests interrupt an upload: one aborts it in a first ``node`` process and
resumes it from a ``FileUrlStorage`` JSON file in a second; the other sends it
through :class:`CuttingProxy`, which drops the connection in the middle of a
PATCH body once, and checks that tus-js-client's ``retryDelays`` recover.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.data import file_sha256, upload_id_of
from tests.support.live import (
    HAS_PROC_NET,
    TUS_VERSION,
    auth,
    cookie_header,
    data_path,
    head_offset,
    is_locked,
    path_of,
    poll,
    record_of,
    server_done_with,
    wait_server_done,
)
from tests.support.node import npm_ci
from tests.support.servers import ROOT, GunicornServer

pytestmark = pytest.mark.live

INTEROP = ROOT / "tests" / "interop"
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
        npm_ci(npm, INTEROP)
    assert _installed_version() == _pinned_version()
    return INTEROP


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


def upload_records(server: GunicornServer) -> list[bytes]:
    """The Redis keys of the server's upload records."""
    return [key for key in server.keys() if b":upload:" in key]


@pytest.mark.skipif(not HAS_PROC_NET, reason="waits through /proc for the server to finish the aborted PATCH")
def test_aborted_upload_is_resumed_by_another_process(
    node_project: Path,
    gunicorn_server: GunicornServer,
    session: requests.Session,
    tmp_path: Path,
) -> None:
    """Process A aborts mid-PATCH; process B finds the URL in the FileUrlStorage and resumes at the server's offset."""
    server = gunicorn_server
    chunk = 256 * KIB
    source = source_file(tmp_path, 3 * MIB + 4_321, seed=4)
    size = source.stat().st_size
    options: dict[str, Any] = {
        "endpoint": server.files_url,
        "file": str(source),
        "chunkSize": chunk,
        "headers": {"Cookie": cookie_header(session)},
        "metadata": {"filename": "resumed.bin"},
        "urlStorage": str(tmp_path / "tus-urls.json"),
    }

    first = run_upload(node_project, {**options, "abortAfter": MIB + 1})
    assert "error" not in first, first
    assert first["aborted"] is not None and first["aborted"] > MIB
    url = first["url"]
    assert first["requests"][0]["method"] == "POST"
    assert all(r["status"] == 204 for r in first["requests"][1:])
    stored_urls = [entry["uploadUrl"] for entry in json.loads((tmp_path / "tus-urls.json").read_text()).values()]
    assert stored_urls == [url]

    # The aborted PATCH may still be in a worker: wait until the server is done with A's connections.
    for port in first["clientPorts"]:
        wait_server_done(server, port)
    upload_id = upload_id_of(url)
    assert not is_locked(server, upload_id)
    offset = head_offset(server, session, url)
    assert MIB <= offset < size
    assert record_of(server, upload_id)["state"] == "uploading"
    records_before = upload_records(server)

    second = run_upload(node_project, {**options, "resume": True})
    assert "error" not in second, second
    assert second["url"] == url
    sent = second["requests"]
    assert [r["method"] for r in sent if r["method"] != "PATCH"] == ["HEAD"]
    assert sent[0]["method"] == "HEAD" and int(sent[0]["uploadOffset"]) == offset
    patches = [r for r in sent if r["method"] == "PATCH"]
    assert int(patches[0]["requestOffset"]) == offset
    assert len(patches) == math.ceil((size - offset) / chunk)
    assert upload_records(server) == records_before  # no new upload was created

    record = assert_stored(server, url, source)
    assert record["filename"] == "resumed.bin"


class CuttingProxy:
    """A TCP proxy to the live server that drops one connection in the middle of a PATCH body.

    Requests from the client are followed only as far as needed to find their
    bodies (``Content-Length``). Once PATCH number ``cut_patch`` (counted over
    all connections, from 1) has passed ``cut_after`` body bytes, the server
    side of that connection is closed, and once the server is done with it
    (so a retry cannot overtake the cut request) the client side too;
    everything else is forwarded unchanged. The client sends the proxy's
    Host, so the server's Location URLs name the proxy and retries go
    through it too.
    """

    def __init__(self, upstream_port: int, cut_patch: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_patch = cut_patch
        self.cut_after = cut_after
        self.patches = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cutting: set[socket.socket] = set()  # clients whose connection is being cut
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                self._drop(sock)

    @staticmethod
    def _drop(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._forward_requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._forward_responses, args=(upstream, client), daemon=True).start()

    def _cut(self, client: socket.socket, upstream: socket.socket) -> None:
        """Drop the server side, wait until the server has finished the request, then drop the client."""
        port = int(upstream.getsockname()[1])
        with self._lock:
            self._cutting.add(client)
        try:
            self._drop(upstream)
            poll(lambda: server_done_with(self.upstream_port, port), f"the server to finish with port {port}")
        finally:
            with self._lock:
                self.cuts += 1
            self._drop(client)

    def _forward_responses(self, upstream: socket.socket, client: socket.socket) -> None:
        """Copy the responses as they are; leave the client alone once its connection is being cut."""
        try:
            while (data := upstream.recv(1 << 16)) and client not in self._cutting:
                client.sendall(data)
            if client not in self._cutting:
                client.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy the requests, following heads and bodies; cut the chosen PATCH body."""
        pending = b""  # a request head seen so far
        body_left = 0  # body bytes of the current request still to come
        cut_in: int | None = None  # body bytes to forward before cutting this body
        try:
            while data := client.recv(1 << 16):
                pos = 0
                while pos < len(data):
                    if body_left:
                        take = min(body_left, len(data) - pos)
                        if cut_in is not None and take >= cut_in:
                            upstream.sendall(data[: pos + cut_in])
                            self._cut(client, upstream)
                            return
                        if cut_in is not None:
                            cut_in -= take
                        body_left -= take
                        pos += take
                        continue
                    pending += data[pos:]
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        pos = len(data)
                        continue
                    head, rest = pending[: end + 4], pending[end + 4 :]
                    pos, pending = len(data) - len(rest), b""
                    lines = head.decode("latin-1").split("\r\n")
                    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
                    lengths = [v for k, v in fields.items() if k.strip().lower() == "content-length"]
                    body_left = int(lengths[0]) if lengths else 0
                    cut_in = None
                    if lines[0].startswith("PATCH "):
                        with self._lock:
                            self.patches += 1
                            if self.patches == self.cut_patch:
                                cut_in = self.cut_after
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def cutting_proxy(gunicorn_server: GunicornServer) -> Iterator[CuttingProxy]:
    """A proxy to the module's server that cuts the third PATCH after 100 KiB of its body."""
    proxy = CuttingProxy(gunicorn_server.port, cut_patch=3, cut_after=100 * KIB)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.skipif(not HAS_PROC_NET, reason="the proxy waits through /proc for the server to finish the cut PATCH")
def test_dropped_connection_is_retried(
    node_project: Path,
    gunicorn_server: GunicornServer,
    session: requests.Session,
    cutting_proxy: CuttingProxy,
    tmp_path: Path,
) -> None:
    """A PATCH whose connection drops mid-body is retried (HEAD, then PATCH at the server's offset); exact file."""
    server, proxy = gunicorn_server, cutting_proxy
    chunk = 256 * KIB
    source = source_file(tmp_path, 2 * MIB + 999, seed=5)
    size = source.stat().st_size
    output = run_upload(
        node_project,
        {
            "endpoint": f"{proxy.url}/files/",
            "file": str(source),
            "chunkSize": chunk,
            "retryDelays": [0, 200, 500],
            "headers": {"Cookie": cookie_header(session)},
        },
    )
    assert "error" not in output, output
    url = output["url"]
    assert url.startswith(f"{proxy.url}/files/")  # every request went through the proxy

    assert proxy.cuts == 1
    sent = output["requests"]
    patches = [r for r in sent if r["method"] == "PATCH"]
    assert proxy.patches == len(patches) + 1  # the cut PATCH got no response
    # One retry, for the PATCH at 512 KiB that got no answer (onShouldRetry saw no status).
    [retry] = output["retries"]
    assert retry["attempt"] == 0 and retry["status"] is None
    assert f"failed to upload chunk at offset {2 * chunk}" in retry["error"]

    # Then tus-js-client asks the server (HEAD), which kept the 100 KiB that
    # arrived, and continues from there.
    assert [r["method"] for r in sent[:5]] == ["POST", "PATCH", "PATCH", "HEAD", "PATCH"]
    assert [r["method"] for r in sent].count("HEAD") == 1
    kept = 2 * chunk + 100 * KIB
    assert sent[3]["status"] == 200 and int(sent[3]["uploadOffset"]) == kept
    assert int(sent[4]["requestOffset"]) == kept
    assert all(r["status"] == 204 for r in patches)
    assert len(patches) == 2 + math.ceil((size - kept) / chunk)

    assert_stored(server, url, source)
