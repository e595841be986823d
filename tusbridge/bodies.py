"""A request body of known length, read from the WSGI server with as few copies as it allows.

Both protocols read their bodies through ``BodyReader``. By default it reads
``wsgi.input``; a server adapter (``tusbridge.gunicorn``) may plug in a
faster reader, a way to take bytes its buffers hold, and reads that time
out now and then (``hooks``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from django.http import HttpRequest

from .appending import Readable


class DirectBody(Protocol):
    """A body read by the server adapter itself (straight from its socket)."""

    def readinto(self, view: memoryview, /) -> int: ...

    def abandon(self) -> None: ...


class BodyHooks:
    """What a server adapter adds to body reading; the defaults read ``wsgi.input`` as it is."""

    def __init__(self) -> None:
        # (wsgi.input, Content-Length) -> a faster reader for it, or None.
        self.direct_body: Callable[[Any, int], DirectBody | None] = lambda stream, length: None
        # (wsgi.input, at most) -> bytes the server received but no read returned yet.
        self.take_buffered: Callable[[Any, int], bytes] = lambda stream, limit: b""
        # (request, interval) -> a context in which body reads time out every interval seconds.
        self.timed_reads: Callable[[HttpRequest, float], AbstractContextManager[None]] = lambda request, interval: (
            contextlib.nullcontext()
        )


hooks = BodyHooks()


def reader_for(request: HttpRequest, length: int) -> Readable:
    """The body of ``request`` (Content-Length ``length``) as a stream; ``request`` itself when it was read from."""
    if getattr(request, "_read_started", False) or "wsgi.input" not in request.META:
        return request
    return BodyReader(request.META["wsgi.input"], length)


def polling_reads(request: HttpRequest, interval: float) -> AbstractContextManager[None]:
    """Let body reads time out every ``interval`` seconds while the body streams, where the server allows it.

    A read that times out raises TimeoutError, which the upload service takes
    as a moment to hear release requests and to notice a silent client; the
    next read carries on where the last one stopped. Elsewhere reads block.
    """
    return hooks.timed_reads(request, interval)


class BodyReader:
    """``wsgi.input`` limited to Content-Length.

    Django's own request stream would do, except that it turns every read
    error into UnreadablePostError, which hides the read timeouts that
    ``polling_reads`` relies on.
    """

    def __init__(self, stream: Readable, length: int) -> None:
        self._stream = stream
        self._remaining = length
        self._direct = hooks.direct_body(stream, length)

    def read(self, size: int = -1, /) -> bytes:
        if self._remaining <= 0:
            return b""
        if size < 0 or size > self._remaining:
            size = self._remaining
        if self._direct is not None:
            buffer = bytearray(size)
            data = bytes(memoryview(buffer)[: self._direct.readinto(memoryview(buffer))])
        else:
            data = self._stream.read(size)
        self._remaining -= len(data)
        return data

    def readinto(self, buffer: memoryview, /) -> int:
        """Fill ``buffer`` (less at the end of the body, or when the client pauses); 0 at the end."""
        if self._remaining <= 0:
            return 0
        view = buffer[: self._remaining]
        if self._direct is not None:
            n = self._direct.readinto(view)
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        self._remaining -= n
        return n

    def abandon(self) -> None:
        """The rest of the body will not be read: have the server close the connection, not drain it."""
        if self._direct is not None:
            self._direct.abandon()

    def drain(self) -> bytes:
        """Bytes that arrived but that no read returned yet, without waiting for more.

        A read that times out may leave what it received so far in the
        server's buffers (the next read would return it). A request that
        stops early (another request wants the upload) takes those bytes too,
        so that every byte that reached the server is stored. A direct reader
        keeps no such buffer.
        """
        if self._direct is not None:
            return b""
        data = hooks.take_buffered(self._stream, self._remaining)
        self._remaining -= len(data)
        return data
