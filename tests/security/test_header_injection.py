"""Client text never becomes a response header (checked on the raw bytes gunicorn sends).

Metadata values are base64 on the wire; decoded, they may hold CR LF and a
header line. Neither their decoded form nor anything else a client sent
(file names of legacy parts, Upload-Concat URLs) may end up as a header line
of its own in any response: creation, HEAD, PATCH, termination, legacy chunk
and completion, on a server that hands finished files to a Storage.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import OFFSET_CT, TUS_VERSION, cookie_header
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

INJECTED = b"a\r\nX-Injected: 1"
INJECTED_LF = b"b\nX-Injected-Lf: 1\n\nbody"
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*[^\r\n]*")


@pytest.fixture(scope="module")
def server(gunicorn_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> GunicornServer:
    stored = tmp_path_factory.mktemp("stored")
    return gunicorn_factory(
        {"TUSBRIDGE_TEST_STORAGE": "tests.support.live.LiveStorage", "TUSBRIDGE_LIVE_STORAGE_DIR": str(stored)}
    )


@pytest.fixture(scope="module")
def session(server: GunicornServer) -> Iterator[requests.Session]:
    s = server.login("header-injection")
    try:
        yield s
    finally:
        s.close()


class Raw:
    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status = status
        self.head = head
        self.body = body

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


def raw_request(server: GunicornServer, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Raw:
    """One request on its own socket; the response read byte for byte until the server closes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        chunks = []
        while piece := sock.recv(65536):
            chunks.append(piece)
    data = b"".join(chunks)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data[:500]
    status = int(head.split(b" ", 2)[1])
    return Raw(status, head, rest)


def assert_clean(response: Raw) -> None:
    """Every line of the header block is one well-formed header; none was injected."""
    lines = response.head.split(b"\r\n")
    assert re.fullmatch(rb"HTTP/1\.[01] \d{3} [^\r\n]*", lines[0]), lines[0]
    for line in lines[1:]:
        assert HEADER_LINE.fullmatch(line), f"malformed header line {line!r}"
        assert not line.lower().startswith(b"x-injected"), f"injected header {line!r}"
    assert b"\n" not in response.head.replace(b"\r\n", b""), "a bare LF inside the header block"
    assert b"\r" not in response.head.replace(b"\r\n", b""), "a bare CR inside the header block"


def test_metadata_with_crlf_never_becomes_a_header(server: GunicornServer, session: requests.Session) -> None:
    tus = {"Tus-Resumable": TUS_VERSION, "Cookie": cookie_header(session)}
    metadata = ",".join(
        [
            "filename " + base64.b64encode(INJECTED).decode(),
            "name " + base64.b64encode(INJECTED_LF).decode(),
            "filetype " + base64.b64encode(b"text/plain\r\nSet-Cookie: sessionid=evil").decode(),
            "X-Injected " + base64.b64encode(b"1").decode(),
        ]
    )
    created = raw_request(server, "POST", "/files/", {**tus, "Upload-Length": "11", "Upload-Metadata": metadata})
    assert created.status == 201, created.body
    assert_clean(created)
    location = created.header("Location")
    assert location is not None
    path = "/files/" + upload_id_of(location)

    head = raw_request(server, "HEAD", path, tus)
    assert head.status == 200
    assert_clean(head)
    assert head.header("Upload-Metadata") == metadata  # echoed exactly as sent: still base64
    assert head.header("Set-Cookie") is None

    patched = raw_request(
        server, "PATCH", path, {**tus, "Content-Type": OFFSET_CT, "Upload-Offset": "0"}, b"hello world"
    )
    assert patched.status == 204, patched.body  # completes: the file goes to the Storage under its name
    assert_clean(patched)
    assert_clean(raw_request(server, "HEAD", path, tus))
    assert_clean(raw_request(server, "DELETE", path, tus))

    # Creation-with-upload that completes at once, with the same metadata.
    body = b"0123456789"
    with_body = raw_request(
        server,
        "POST",
        "/files/",
        {**tus, "Upload-Length": str(len(body)), "Upload-Metadata": metadata, "Content-Type": OFFSET_CT},
        body,
    )
    assert with_body.status == 201
    assert_clean(with_body)


def test_upload_concat_is_echoed_without_injection(server: GunicornServer, session: requests.Session) -> None:
    """Upload-Concat is echoed as received; the URLs in it are the client's text."""
    tus = {"Tus-Resumable": TUS_VERSION, "Cookie": cookie_header(session)}
    partial = raw_request(server, "POST", "/files/", {**tus, "Upload-Length": "3", "Upload-Concat": "partial"})
    assert partial.status == 201
    partial_url = partial.header("Location") or ""
    concat = f"final;{partial_url}?x=%0d%0aX-Injected:%201 {partial_url}#%0aX-Injected-Lf:1"
    final = raw_request(server, "POST", "/files/", {**tus, "Upload-Concat": concat})
    assert final.status == 201, final.body
    assert_clean(final)
    head = raw_request(server, "HEAD", "/files/" + upload_id_of(final.header("Location") or ""), tus)
    assert head.status == 200
    assert_clean(head)
    assert head.header("Upload-Concat") == concat


def _multipart(filename: bytes, data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "XxBoundaryxX"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    )
    parts += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return parts, f"multipart/form-data; boundary={boundary}"


def test_legacy_file_names_never_become_headers(server: GunicornServer, session: requests.Session) -> None:
    token = session.cookies.get("csrftoken")
    assert token, "the login gave no CSRF cookie"
    base = {"Cookie": cookie_header(session), "X-CSRFToken": token}
    data = b"x" * 1000
    names = [
        b"a%0d%0aX-Injected: 1.txt",
        b"a&#13;&#10;X-Injected: 1.txt",  # Django unescapes HTML entities in part file names
        "\u202einjected\r\nX-Injected: 1".encode(),  # a CR LF inside the quoted part header
        b"b\nX-Injected-Lf: 1",
    ]
    for name in names:
        body, content_type = _multipart(name, data, {})
        chunk = raw_request(
            server,
            "POST",
            "/files/",
            {**base, "Content-Type": content_type, "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"},
            body,
        )
        assert chunk.status in (200, 400), chunk.body
        assert_clean(chunk)
        if chunk.status != 200:
            continue
        upload_id = re.search(rb'"upload_id": "([0-9a-f]{32})"', chunk.body)
        assert upload_id, chunk.body
        form = f"upload_id={upload_id.group(1).decode()}&md5={hashlib.md5(data).hexdigest()}".encode()
        done = raw_request(
            server,
            "POST",
            "/files/complete/",
            {**base, "Content-Type": "application/x-www-form-urlencoded"},
            form,
        )
        assert done.status == 200, done.body
        assert_clean(done)


def test_the_stored_name_of_a_crlf_filename_is_clean(server: GunicornServer, session: requests.Session) -> None:
    """The Storage got a name without CR, LF or other control characters."""
    tus = {"Tus-Resumable": TUS_VERSION, "Cookie": cookie_header(session)}
    metadata = "filename " + base64.b64encode(INJECTED + b".txt").decode()
    created = raw_request(
        server,
        "POST",
        "/files/",
        {**tus, "Upload-Length": "2", "Upload-Metadata": metadata, "Content-Type": OFFSET_CT},
        b"ok",
    )
    assert created.status == 201
    stored_dir = Path(server.extra_env["TUSBRIDGE_LIVE_STORAGE_DIR"])
    names = [str(p.relative_to(stored_dir)) for p in stored_dir.rglob("*") if p.is_file()]
    upload_id = upload_id_of(created.header("Location") or "")
    mine = [n for n in names if upload_id in n]
    assert len(mine) == 1, names
    assert not any(ord(ch) < 0x20 or ch == "\x7f" for ch in mine[0]), repr(mine[0])
