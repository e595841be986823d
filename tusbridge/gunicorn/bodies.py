"""Reading a request body under gunicorn straight from its socket, and with read timeouts.

Plugged into ``tusbridge.bodies.hooks`` by ``tusbridge.gunicorn.install``.
These rely on gunicorn's parser internals (``Body``, ``LengthReader``,
``SocketUnreader`` and their buffers), checked by name and shape before
use: anything that does not look exactly as expected is left to the
ordinary ``wsgi.input``.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.http import HttpRequest

from ..appending import FLUSH_INTERVAL

# The longest a read from gunicorn's socket gathers pieces after the first (see SocketBody).
GATHER_FOR = FLUSH_INTERVAL


class SocketBody:
    """A gunicorn request body of known length, read with ``recv_into`` from the socket.

    gunicorn's own reader copies every piece through two buffers of its own;
    reading from the socket into the caller's buffer copies each byte once.
    What gunicorn already read past the headers is taken from its buffers
    first, and its reader is told how much of the body is left, so that it
    finds the request fully read afterwards and the connection can serve the
    next request as usual.
    """

    def __init__(self, body: Any, sock: socket.socket, leftover: bytes) -> None:
        self._body = body
        self._reader = body.reader
        self._socket = sock
        self._leftover = memoryview(leftover)

    @classmethod
    def attach(cls, stream: Any, length: int) -> SocketBody | None:
        parts = _length_body_parts(stream)
        if parts is None:
            return None
        reader, unreader = parts
        sock = getattr(unreader, "sock", None)
        if (
            type(stream).__name__ != "Body"
            or type(unreader).__name__ != "SocketUnreader"
            or not isinstance(sock, socket.socket)
            or len(stream.buf.getvalue()) + reader.length != length
        ):
            return None
        return cls(stream, sock, take_buffered(stream, length))

    def abandon(self) -> None:
        self._body.failed = True  # gunicorn must not reuse the connection

    def readinto(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes; raises TimeoutError only when none arrived in time.

        Pieces are gathered until ``view`` is full, but for no longer than
        ``GATHER_FOR`` seconds after the first: a slow client's bytes are
        then stored (and the lock renewed, release requests heard) at least
        that often, however large the buffer.
        """
        if self._leftover:
            n = min(len(view), len(self._leftover))
            view[:n] = self._leftover[:n]
            self._leftover = self._leftover[n:]
            return n
        want = min(len(view), self._reader.length)
        got = 0
        started = 0.0
        while got < want:
            if got:
                if not started:
                    started = time.monotonic()
                elif time.monotonic() - started >= GATHER_FOR:
                    break
            try:
                n = self._socket.recv_into(view[got:want])
            except TimeoutError:
                if got:
                    break
                raise
            except OSError:
                self._body.failed = True  # gunicorn must not reuse the connection
                if got:
                    break
                raise
            if not n:
                self._body.failed = True
                break
            got += n
            self._reader.length -= n
        return got


def _length_body_parts(stream: Any) -> tuple[Any, Any] | None:
    """gunicorn's ``LengthReader`` and its unreader behind ``stream``, when both have the buffers we know."""
    reader = getattr(stream, "reader", None)
    unreader = getattr(reader, "unreader", None)
    if (
        type(reader).__name__ != "LengthReader"
        or not isinstance(getattr(reader, "length", None), int)
        or not isinstance(getattr(stream, "buf", None), io.BytesIO)
        or not isinstance(getattr(unreader, "buf", None), io.BytesIO)
    ):
        return None
    return reader, unreader


def take_buffered(stream: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes that a gunicorn request body of known length holds in its buffers, taken out.

    Anything past ``limit`` in the socket buffer belongs to the next request
    on the connection, and stays.
    """
    parts = _length_body_parts(stream)
    if parts is None:
        return b""
    reader, unreader = parts
    held = stream.buf.getvalue()
    stream.buf = io.BytesIO()
    # The socket buffer may run past this body; the reader's length says where it ends.
    pending = unreader.buf.getvalue()
    own = min(len(pending), reader.length, max(limit - len(held), 0))
    unreader.buf = io.BytesIO()
    unreader.buf.write(pending[own:])
    reader.length -= own
    return (held + pending[:own])[:limit]


@contextmanager
def timed_reads(request: HttpRequest, interval: float) -> Iterator[None]:
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
