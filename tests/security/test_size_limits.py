"""Size limits hold before bytes reach the disk, whatever the client announces (live gunicorn, raw sockets).

The server runs with TUSBRIDGE_MAX_SIZE = 4096. A thread watches the upload
directory while each request streams and records the largest data file it
ever saw, so a limit enforced only after writing (write, then truncate) fails
as surely as one not enforced at all.

- tus: a PATCH whose Content-Length says less than it sends stores exactly
  what it announced; a deferred-length upload that keeps sending (chunked
  transfer encoding) or announces too much is refused without growing past
  the limit;
- legacy: a chunk whose Content-Range claims a smaller span than its part,
  or runs past or changes the total, is refused and stores nothing; a total
  above TUSBRIDGE_MAX_SIZE is refused before anything is stored; a first
  chunk cut off by a connection reset leaves nothing behind.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import (
    OFFSET_CT,
    RawRequest,
    auth,
    cookie_header,
    create,
    data_of,
    head_offset,
    patch,
    path_of,
    poll,
    record_of,
)
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

LIMIT = 4096


@pytest.fixture(scope="module")
def gunicorn_extra_env() -> dict[str, str]:
    return {
        "TUSBRIDGE_TEST_MAX_SIZE": str(LIMIT),
        "TUSBRIDGE_TEST_READ_SIZE": "4096",
        "TUSBRIDGE_TEST_IDLE_TIMEOUT": "5",
        # Per-user limits that never refuse here, so that every upload is reserved and a
        # reservation left by a refused request is visible in Redis.
        "TUSBRIDGE_TEST_MAX_UPLOADS_PER_USER": "100000",
    }


class Watch:
    """The largest data file seen while the block ran: new ones, and those of ``uploads``."""

    def __init__(self, server: GunicornServer, uploads: tuple[str, ...]) -> None:
        self.server = server
        self.largest = 0
        self._stop = threading.Event()
        self._ignore = {p.name for p in server.upload_dir.iterdir()} - set(uploads)

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in list(self.server.upload_dir.iterdir()):
                if "." in path.name or path.name in self._ignore:
                    continue  # .info side files, and other uploads' files
                try:
                    self.largest = max(self.largest, path.stat().st_size)
                except FileNotFoundError:
                    pass
            time.sleep(0.0005)


@contextmanager
def watch(server: GunicornServer, *uploads: str) -> Iterator[Watch]:
    w = Watch(server, uploads)
    thread = threading.Thread(target=w._run, daemon=True)
    thread.start()
    try:
        yield w
    finally:
        time.sleep(0.01)
        w._stop.set()
        thread.join(5)


def raw_patch(
    server: GunicornServer, session: requests.Session, url: str, offset: int, length: int | None
) -> RawRequest:
    headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": str(offset)})
    headers["Content-Length" if length is not None else "Transfer-Encoding"] = (
        str(length) if length is not None else "chunked"
    )
    return RawRequest(server, "PATCH", path_of(url), headers, terminate_headers=True)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


# tus ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deferred", [False, True], ids=["with-length", "deferred"])
def test_tus_patch_content_length_that_says_less(
    gunicorn_server: GunicornServer, session: requests.Session, deferred: bool
) -> None:
    """Content-Length: 100, then 10 000 bytes: 100 are stored, the rest is never read into the file."""
    server = gunicorn_server
    url = create(server, session, None if deferred else LIMIT)
    upload_id = upload_id_of(url)
    body = bytes(range(256)) * 40
    with watch(server, upload_id) as w:
        request = raw_patch(server, session, url, 0, 100)
        request.send(body)
        reply = request.response()
    assert reply.status == 204, reply.body
    assert reply.headers["Upload-Offset"] == "100"
    assert data_of(server, upload_id) == body[:100]
    assert w.largest <= 100
    assert head_offset(server, session, url) == 100


def test_tus_deferred_upload_that_keeps_sending(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """A chunked body with no end in sight: 413, and the file never held more than the limit."""
    server = gunicorn_server
    url = create(server, session, None)
    upload_id = upload_id_of(url)
    piece = b"\xab" * 1000
    with watch(server, upload_id) as w:
        request = raw_patch(server, session, url, 0, None)
        try:
            for _ in range(40):  # 40 000 bytes offered, ten times the limit
                request.sock.sendall(chunk(piece))
                time.sleep(0.002)
            request.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may answer and close before we finish sending
        reply = request.response()
    assert reply.status == 413, reply.body
    assert w.largest <= LIMIT, f"the data file grew to {w.largest} bytes"
    assert data_of(server, upload_id) == b""
    assert record_of(server, upload_id)["offset"] == "0"


def test_tus_deferred_upload_near_the_limit(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    server = gunicorn_server
    url = create(server, session, None)
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, b"a" * 4000).status_code == 204
    with watch(server, upload_id) as w:
        # Announced past the limit: refused before reading.
        too_long = raw_patch(server, session, url, 4000, 200)
        too_long.send(b"b" * 200)
        assert too_long.response().status == 413
        # Chunked, past the limit: refused, what was already there kept as it was.
        request = raw_patch(server, session, url, 4000, None)
        request.send(chunk(b"c" * 150) + chunk(b"d" * 150) + b"0\r\n\r\n")
        assert request.response().status == 413
    assert w.largest <= LIMIT
    assert data_of(server, upload_id) == b"a" * 4000
    # Exactly up to the limit is fine.
    assert patch(session, url, 4000, b"e" * 96, **{"Upload-Length": str(LIMIT)}).status_code == 204


def test_tus_creation_with_a_body_past_the_limit(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """creation-with-upload of a deferred upload whose chunked body runs past the limit."""
    server = gunicorn_server
    headers = auth(session, **{"Upload-Defer-Length": "1", "Content-Type": OFFSET_CT, "Transfer-Encoding": "chunked"})
    with watch(server) as w:
        request = RawRequest(server, "POST", "/files/", headers, terminate_headers=True)
        request.send(b"".join(chunk(b"f" * 1000) for _ in range(10)) + b"0\r\n\r\n")
        reply = request.response()
    assert reply.status == 413, reply.body
    assert w.largest <= LIMIT
    if reply.headers.get("Location"):  # the upload exists, with nothing of the refused body
        assert data_of(server, upload_id_of(reply.headers["Location"])) == b""


# legacy -----------------------------------------------------------------------------------------


def legacy_post(
    server: GunicornServer, session: requests.Session, part: bytes, content_range: str | None, upload_id: str = ""
) -> requests.Response:
    headers = {"X-CSRFToken": session.cookies.get("csrftoken") or ""}
    if content_range is not None:
        headers["Content-Range"] = content_range
    fields = {"upload_id": upload_id} if upload_id else {}
    return session.post(
        server.files_url,
        data=fields,
        files={"file": ("data.bin", part, "application/octet-stream")},
        headers=headers,
        timeout=30,
    )


def data_files(server: GunicornServer) -> list[str]:
    return sorted(p.name for p in server.upload_dir.iterdir() if "." not in p.name)


def test_legacy_chunk_larger_than_its_content_range(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    server = gunicorn_server
    files_before, keys_before = data_files(server), server.keys()
    with watch(server) as w:
        response = legacy_post(server, session, b"g" * 3000, "bytes 0-99/4000")
    assert response.status_code == 400, response.text
    assert w.largest <= 100, f"a data file grew to {w.largest} bytes for a 100-byte span"
    assert data_files(server) == files_before
    assert server.keys() == keys_before


def test_legacy_chunks_that_add_up_past_the_total(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    server = gunicorn_server
    total = 4000
    data = bytes(range(250)) * 16
    first = legacy_post(server, session, data[:2000], f"bytes 0-1999/{total}")
    assert first.status_code == 200, first.text
    upload_id = first.json()["upload_id"]
    with watch(server, upload_id) as w:
        for part, content_range in [
            (b"h" * 3000, f"bytes 2000-3999/{total}"),  # the part is larger than its span
            (b"h" * 4000, f"bytes 2000-5999/{total}"),  # the span runs past the total
            (b"h" * 4000, "bytes 2000-5999/6000"),  # the total changes (and exceeds the limit)
            (b"h" * 1000, "bytes 2000-2999/8000"),  # the total changes
        ]:
            response = legacy_post(server, session, part, content_range, upload_id)
            assert response.status_code in (400, 413), (content_range, response.text)
            assert data_of(server, upload_id) == data[:2000]
    assert w.largest <= total
    done = legacy_post(server, session, data[2000:], f"bytes 2000-3999/{total}", upload_id)
    assert done.status_code == 200, done.text
    assert data_of(server, upload_id) == data


def test_legacy_total_above_the_max_size_is_refused_before_anything_is_stored(
    gunicorn_server: GunicornServer, session: requests.Session
) -> None:
    """TUSBRIDGE_MAX_SIZE applies to legacy uploads as it does to tus ones (tus: 413 at creation)."""
    server = gunicorn_server
    files_before, keys_before = data_files(server), server.keys()
    accepted = []
    with watch(server) as w:
        for part, content_range in [
            (b"i" * 1000, f"bytes 0-999/{LIMIT * 2}"),  # a first chunk of an upload too large
            (b"j" * (LIMIT + 1), None),  # a whole file (no Content-Range) one byte too large
        ]:
            response = legacy_post(server, session, part, content_range)
            if response.status_code == 200:
                accepted.append((content_range, response.json()))
    assert not accepted, f"accepted past TUSBRIDGE_MAX_SIZE={LIMIT}: {accepted}; largest data file {w.largest}"
    assert data_files(server) == files_before
    assert server.keys() == keys_before


def test_legacy_first_chunk_cut_by_a_connection_reset_leaves_nothing(gunicorn_factory: Any) -> None:
    """The client vanishes (RST) half-way through its first chunk: no data file, no record, no lock, no reservation.

    On a server without TUSBRIDGE_MAX_SIZE: the chunk must be larger than the 64 KiB the multipart
    parser reads at a time for its bytes to stream into a data file before the body is complete.
    """
    server = gunicorn_factory({"TUSBRIDGE_TEST_MAX_UPLOADS_PER_USER": "100000"})
    session = server.login("reset")
    files_before, keys_before = data_files(server), server.keys()
    boundary = "XxResetxX"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload_id"\r\n\r\n\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="data.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    total = 300_000  # more than the 64 KiB the multipart parser reads at a time
    body_length = len(head) + total + len(f"\r\n--{boundary}--\r\n")
    request = RawRequest(
        server,
        "POST",
        "/files/",
        {
            "Cookie": cookie_header(session),
            "X-CSRFToken": session.cookies.get("csrftoken") or "",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Range": f"bytes 0-{total - 1}/{total}",
            "Content-Length": str(body_length),
        },
        terminate_headers=True,
    )
    request.send(head + b"k" * 200_000)
    # Wait until the server has started writing this chunk into a data file, then reset.
    poll(lambda: any(n not in files_before for n in data_files(server)) or None, "the chunk to reach a data file", 10)
    request.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.close()

    def cleaned_up() -> bool | None:
        return (data_files(server) == files_before and server.keys() == keys_before) or None

    try:
        poll(cleaned_up, "the refused chunk to be cleaned up", timeout=5)
    except AssertionError:
        leftovers: dict[str, Any] = {
            "data files": sorted(set(data_files(server)) - set(files_before)),
            "redis keys": sorted(k.decode() for k in set(server.keys()) - set(keys_before)),
        }
        raise AssertionError(f"a first chunk cut off by a reset left {leftovers}") from None
