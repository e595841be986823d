"""Request bodies read straight from gunicorn's socket, on kept-alive connections.

Under gunicorn, tusbridge reads a body of known length from the socket itself
(``tus.body``), after taking what gunicorn already buffered. These tests send
several requests down one connection of the threaded worker (which keeps
connections alive), some written in one piece with the next request right
behind the body, and check that every request is answered and every byte
lands where it belongs.
"""

from __future__ import annotations

import http.client
import os
import socket
import time

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import OFFSET_CT, cookie_header, create, data_of, path_of
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live


def _request(method: str, path: str, cookie: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Tus-Resumable: 1.0.0", f"Cookie: {cookie}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _patch(path: str, cookie: str, offset: int, body: bytes) -> bytes:
    headers = {"Content-Type": OFFSET_CT, "Upload-Offset": str(offset), "Content-Length": str(len(body))}
    return _request("PATCH", path, cookie, headers, body)


def _responses(sock: socket.socket, methods: list[str]) -> list[http.client.HTTPResponse]:
    """Read one response per method from a kept-alive connection, in order."""
    replies = []
    for method in methods:
        reply = http.client.HTTPResponse(sock, method=method)
        reply.begin()
        reply.read()
        replies.append(reply)
    return replies


def test_pipelined_requests_behind_a_body_are_served(
    gunicorn_server: GunicornServer, session: requests.Session
) -> None:
    """Three PATCHes and a HEAD sent in one write: the bytes after each body start the next request.

    The first body is small enough to arrive in gunicorn's first read together
    with the next request; the others are larger than any single read.
    """
    data = os.urandom(3 * 1024 * 1024 + 5)
    url = create(gunicorn_server, session, len(data) + 100)
    path, cookie = path_of(url), cookie_header(session)
    small, middle = 100, 1024 * 1024 + 3
    wire = _patch(path, cookie, 0, data[:small]) + _patch(path, cookie, small, data[small:middle])
    wire += _patch(path, cookie, middle, data[middle:]) + _request("HEAD", path, cookie, {})
    with socket.create_connection(("127.0.0.1", gunicorn_server.port), timeout=30) as sock:
        sock.sendall(wire)
        replies = _responses(sock, ["PATCH", "PATCH", "PATCH", "HEAD"])
    answers = [(reply.status, reply.getheader("Upload-Offset")) for reply in replies]
    assert answers == [(204, str(small)), (204, str(middle)), (204, str(len(data))), (200, str(len(data)))]
    assert data_of(gunicorn_server, upload_id_of(url)) == data


def test_bodies_sent_in_pieces_on_one_connection(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """Bodies that arrive in small, paused pieces, request after request on one connection."""
    pieces = [os.urandom(n) for n in (70_000, 1, 300_000, 4096)]
    url = create(gunicorn_server, session, sum(map(len, pieces)))
    path, cookie = path_of(url), cookie_header(session)
    offset = 0
    with socket.create_connection(("127.0.0.1", gunicorn_server.port), timeout=30) as sock:
        for piece in pieces:
            request = _patch(path, cookie, offset, piece)
            head_end = request.index(b"\r\n\r\n") + 4
            sock.sendall(request[:head_end])
            for start in range(head_end, len(request), 50_000):
                time.sleep(0.02)
                sock.sendall(request[start : start + 50_000])
            (reply,) = _responses(sock, ["PATCH"])
            offset += len(piece)
            assert (reply.status, reply.getheader("Upload-Offset")) == (204, str(offset))
            assert data_of(gunicorn_server, upload_id_of(url)) == b"".join(pieces)[:offset]
