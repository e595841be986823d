"""Reading a tus request body from the WSGI server."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from django.http import HttpRequest

from .. import errors
from ..appending import Readable
from ..bodies import reader_for
from .headers import parse_uint


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
        return reader_for(request, length), length
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
