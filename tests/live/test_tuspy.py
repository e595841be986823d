"""The tuspy client (``tusclient``) against a live gunicorn server with 2 workers.

Covers a chunked upload with metadata and a session cookie, resuming with a
new uploader found through tuspy's URL storage, and resuming after the
uploading process was SIGKILLed in the middle of a PATCH body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from tusclient import client
from tusclient.exceptions import TusCommunicationError
from tusclient.storage.filestorage import FileStorage
from tusclient.uploader import Uploader

from tests.support.data import file_sha256, sha256, upload_id_of
from tests.support.live import (
    HAS_PROC_NET,
    cookie_header,
    data_of,
    data_path,
    head,
    head_offset,
    is_locked,
    poll,
    record_of,
    wait_server_done,
)
from tests.support.servers import ROOT, GunicornServer

pytestmark = pytest.mark.live

CHUNK = 256 * 1024
# tuspy always sends Upload-Metadata (empty when it has no metadata); uploads
# here carry a filename so that the records can be checked by name.
META = {"filename": "resume.bin"}


@dataclass
class Login:
    session: requests.Session
    user_id: int

    @property
    def cookie(self) -> str:
        return cookie_header(self.session)


@pytest.fixture(scope="module")
def login(gunicorn_server: GunicornServer) -> Iterator[Login]:
    """A session cookie from the test-only login view, and the user's id."""
    session = requests.Session()
    response = session.post(f"{gunicorn_server.url}/test-login/", data={"username": "tuspy-user"}, timeout=30)
    response.raise_for_status()
    assert session.cookies, "the login view set no session cookie"
    try:
        yield Login(session, int(response.json()["id"]))
    finally:
        session.close()


@pytest.fixture
def tus_client(gunicorn_server: GunicornServer, login: Login) -> client.TusClient:
    """A tuspy client that sends the login cookie with every request."""
    return client.TusClient(gunicorn_server.files_url, headers={"Cookie": login.cookie})


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def upload_records(server: GunicornServer) -> list[bytes]:
    return [key for key in server.keys() if b":upload:" in key]


def assert_stored(server: GunicornServer, upload_id: str, data: bytes) -> dict[str, str]:
    """Data file and Redis record of a finished upload."""
    path = data_path(server, upload_id)
    assert path.stat().st_size == len(data)
    assert file_sha256(path) == sha256(data)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert record["offset"] == record["length"] == str(len(data))
    return record


def finish_counting(uploader: Uploader) -> int:
    """Upload the rest chunk by chunk, as ``Uploader.upload`` does; return how many PATCHes it took."""
    patches = 0
    size = uploader.get_file_size()
    uploader.stop_at = size
    while uploader.offset < size:
        uploader.upload_chunk()
        patches += 1
    return patches


def test_tuspy_chunked_upload_with_metadata(
    gunicorn_server: GunicornServer, login: Login, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """A few MiB in 256 KiB PATCHes with metadata and a session cookie."""
    server = gunicorn_server
    data = make_file(tmp_path / "report.bin", 3 * 1024 * 1024 + 4321)
    uploader = tus_client.uploader(
        file_path=str(tmp_path / "report.bin"),
        chunk_size=CHUNK,
        metadata={"filename": "report.bin", "kind": "quarterly report"},
    )
    uploader.upload()
    assert uploader.offset == len(data)
    assert uploader.url is not None and uploader.url.startswith(server.files_url)
    upload_id = upload_id_of(uploader.url)

    record = assert_stored(server, upload_id, data)
    assert record["owner"] == str(login.user_id)
    assert record["filename"] == "report.bin"
    assert json.loads(record["metadata"]) == {"filename": "report.bin", "kind": "quarterly report"}

    response = head(server, login.session, uploader.url)
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(len(data))
    pairs = dict(item.split(" ", 1) for item in response.headers["Upload-Metadata"].split(","))
    assert {k: base64.b64decode(v).decode() for k, v in pairs.items()} == {
        "filename": "report.bin",
        "kind": "quarterly report",
    }
    assert uploader.get_offset() == len(data)  # tuspy's own HEAD


def test_tuspy_resume_with_new_uploader(
    gunicorn_server: GunicornServer, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """Stop after 5 chunks; a new uploader finds the URL in tuspy's storage and goes on from there."""
    server = gunicorn_server
    file_path = tmp_path / "resume.bin"
    data = make_file(file_path, 2 * 1024 * 1024 + 999)
    urls = tmp_path / "tus-urls.json"
    before = upload_records(server)

    storage = FileStorage(str(urls))
    first = tus_client.uploader(
        file_path=str(file_path), chunk_size=CHUNK, metadata=META, store_url=True, url_storage=storage
    )
    stop = 5 * CHUNK
    first.upload(stop_at=stop)
    storage.close()
    assert first.offset == stop
    upload_id = upload_id_of(first.url)
    assert data_of(server, upload_id) == data[:stop]
    assert record_of(server, upload_id)["state"] == "uploading"

    storage = FileStorage(str(urls))
    try:
        second = tus_client.uploader(file_path=str(file_path), chunk_size=CHUNK, store_url=True, url_storage=storage)
        assert second.url == first.url  # found through the file's fingerprint
        assert second.offset == stop  # asked the server, did not start from 0
        patches = finish_counting(second)
    finally:
        storage.close()
    assert patches == math.ceil((len(data) - stop) / CHUNK)
    assert_stored(server, upload_id, data)
    assert len(upload_records(server)) == len(before) + 1  # resuming created no second upload


CHILD = textwrap.dedent(
    """
    import json, socket, sys
    from urllib.parse import urlsplit
    from tusclient import client
    from tusclient.storage.filestorage import FileStorage

    files_url, cookie, path, urls, stop_at, chunk = sys.argv[1:]
    stop_at, chunk = int(stop_at), int(chunk)
    tus = client.TusClient(files_url, headers={"Cookie": cookie})
    uploader = tus.uploader(
        file_path=path, chunk_size=chunk, metadata={"filename": "killed.bin"}, store_url=True,
        url_storage=FileStorage(urls),
    )
    uploader.upload(stop_at=stop_at)

    # Begin the next chunk's PATCH and send half of its body, then wait to be killed.
    with open(path, "rb") as fh:
        fh.seek(stop_at)
        piece = fh.read(chunk)
    parts = urlsplit(uploader.url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = (
        f"PATCH {parts.path} HTTP/1.1\\r\\nHost: {parts.netloc}\\r\\nTus-Resumable: 1.0.0\\r\\n"
        f"Cookie: {cookie}\\r\\nContent-Type: application/offset+octet-stream\\r\\n"
        f"Upload-Offset: {stop_at}\\r\\nContent-Length: {len(piece)}\\r\\n\\r\\n"
    )
    sock.sendall(head.encode() + piece[: len(piece) // 2])
    port = sock.getsockname()[1]
    print(json.dumps({"url": uploader.url, "offset": uploader.offset, "port": port}), flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.skipif(not HAS_PROC_NET, reason="waits for the server through /proc")
def test_tuspy_resume_after_uploader_process_is_killed(
    gunicorn_server: GunicornServer, login: Login, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """SIGKILL a process mid-PATCH; a new tuspy uploader in this process resumes at the server's offset."""
    server = gunicorn_server
    file_path = tmp_path / "killed.bin"
    data = make_file(file_path, 3 * 1024 * 1024 + 17)
    urls = tmp_path / "tus-urls.json"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    stop = 6 * CHUNK

    proc = subprocess.Popen(
        [sys.executable, str(script), server.files_url, login.cookie, str(file_path), str(urls), str(stop), str(CHUNK)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the uploading process never got half-way"
        line = proc.stdout.readline() if proc.stdout else b""
        assert line, proc.stderr.read().decode() if proc.stderr else "no output"
        started = json.loads(line)
        upload_id = upload_id_of(started["url"])
        assert started["offset"] == stop
        # The server has the first chunks before the process dies mid-body.
        poll(
            lambda: int(record_of(server, upload_id).get("offset", 0)) >= stop,
            "the server offset to pass the kill point",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    wait_server_done(server, started["port"])  # the cut-off PATCH has been handled
    poll(lambda: not is_locked(server, upload_id), "the cut-off PATCH to let go of the upload")
    server_offset = head_offset(server, login.session, started["url"])
    assert stop <= server_offset < len(data)
    assert data_of(server, upload_id) == data[:server_offset]
    assert record_of(server, upload_id)["state"] == "uploading"

    storage = FileStorage(str(urls))
    try:
        resumed = tus_client.uploader(file_path=str(file_path), chunk_size=CHUNK, store_url=True, url_storage=storage)
        assert resumed.url == started["url"]
        assert resumed.offset == server_offset
        patches = finish_counting(resumed)
    finally:
        storage.close()
    assert patches == math.ceil((len(data) - server_offset) / CHUNK)
    assert_stored(server, upload_id, data)


class LyingChecksumUploader(Uploader):
    """An uploader whose Upload-Checksum never matches the chunk it sends."""

    CHECKSUM_ALGORITHM_PAIR = ("sha1", lambda chunk: hashlib.sha1(chunk + b"!"))


def test_tuspy_upload_with_checksums(
    gunicorn_server: GunicornServer, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """tuspy's checksum extension: every PATCH carries a sha1 the server verifies."""
    data = make_file(tmp_path / "summed.bin", 1024 * 1024 + 77)
    uploader = tus_client.uploader(
        file_path=str(tmp_path / "summed.bin"), chunk_size=CHUNK, metadata=META, upload_checksum=True
    )
    uploader.upload()
    assert_stored(gunicorn_server, upload_id_of(uploader.url), data)


def test_tuspy_wrong_checksum_is_refused_and_stores_nothing(
    gunicorn_server: GunicornServer, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """A chunk whose checksum does not match is answered 460 and leaves the upload as it was."""
    server = gunicorn_server
    make_file(tmp_path / "lied.bin", CHUNK * 2)
    uploader = LyingChecksumUploader(
        file_path=str(tmp_path / "lied.bin"),
        client=tus_client,
        chunk_size=CHUNK,
        metadata=META,
        upload_checksum=True,
        retries=0,
    )
    with pytest.raises(TusCommunicationError) as failure:
        uploader.upload_chunk()
    assert failure.value.status_code == 460
    upload_id = upload_id_of(uploader.url)
    assert data_path(server, upload_id).stat().st_size == 0
    assert record_of(server, upload_id)["offset"] == "0"


def test_tuspy_upload_without_metadata(
    gunicorn_server: GunicornServer, tus_client: client.TusClient, tmp_path: Path
) -> None:
    """tuspy sends an empty Upload-Metadata header when it has no metadata; that is no metadata, not an error."""
    data = make_file(tmp_path / "bare.bin", 300_000)
    uploader = tus_client.uploader(file_path=str(tmp_path / "bare.bin"), chunk_size=CHUNK)
    uploader.upload()
    record = assert_stored(gunicorn_server, upload_id_of(uploader.url), data)
    assert record["metadata_raw"] == "" and json.loads(record["metadata"]) == {}
