"""Reading a tus request body from the WSGI server."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.http import HttpRequest

from .. import errors
from ..appending import Readable
from .headers import parse_uint


class BodyReader:
    """``wsgi.input`` limited to Content-Length.

    Django's own request stream would do, except that it turns every read
    error into UnreadablePostError, which hides the read timeouts that
    ``polling_reads`` relies on.
    """

    def __init__(self, stream: Readable, length: int) -> None:
        self._stream = stream
        self._remaining = length

    def read(self, size: int = -1, /) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        data = self._stream.read(size)
        self._remaining -= len(data)
        return data

    def drain(self) -> bytes:
        """Bytes that arrived but that no read returned yet, without waiting for more.

        A read that times out leaves what it received so far in gunicorn's
        buffers (the next read would return it). A request that stops early
        (another request wants the upload) takes those bytes too, so that
        every byte that reached the server is stored. Other servers keep no
        such buffer here, and give nothing.
        """
        data = _take_gunicorn_buffer(self._stream)[: max(self._remaining, 0)]
        self._remaining -= len(data)
        return data


def _take_gunicorn_buffer(stream: Any) -> bytes:
    """What a gunicorn request body of known length holds in its buffers, emptied."""
    reader = getattr(stream, "reader", None)
    unreader = getattr(reader, "unreader", None)
    body_buffer = getattr(stream, "buf", None)
    read_buffer = getattr(unreader, "buf", None)
    if type(reader).__name__ != "LengthReader" or not isinstance(body_buffer, io.BytesIO):
        return b""
    if not isinstance(read_buffer, io.BytesIO):
        return b""
    data = body_buffer.getvalue() + read_buffer.getvalue()
    stream.buf = io.BytesIO()
    unreader.buf = io.BytesIO()
    return data


def request_body(request: HttpRequest) -> tuple[Readable, int | None]:
    """The body as a stream, and its length when the client announced one.

    Django sees an empty body when there is no Content-Length, so a chunked
    body (which the WSGI server de-chunks and terminates) is read from
    ``wsgi.input`` directly.
    """
    meta = request.META
    if meta.get("CONTENT_LENGTH"):
        try:
            length = parse_uint("Content-Length", meta["CONTENT_LENGTH"])
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc)) from None
        if getattr(request, "_read_started", False) or "wsgi.input" not in meta:
            return request, length  # something already read from it through Django
        return BodyReader(meta["wsgi.input"], length), length
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower() and meta.get("wsgi.input_terminated"):
        return meta["wsgi.input"], None
    return io.BytesIO(), 0


@contextmanager
def polling_reads(request: HttpRequest, interval: float) -> Iterator[None]:
    """Let body reads time out every ``interval`` seconds while the body streams.

    A read that times out raises TimeoutError, which the upload service takes
    as a moment to hear release requests and to notice a silent client; the
    next read carries on where the last one stopped. That is only safe where
    the server's body reader keeps partial reads across a timeout: gunicorn's
    reader for bodies with a Content-Length does (it exposes the socket as
    ``gunicorn.socket``), its chunked reader does not, and other servers do
    not expose a socket at all. Everywhere else reads simply block.
    """
    sock = request.META.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or not request.META.get("CONTENT_LENGTH"):
        yield
        return
    previous = sock.gettimeout()
    sock.settimeout(interval)
    try:
        yield
    finally:
        # The response is written with the server's own timeout, not ours.
        sock.settimeout(previous)
