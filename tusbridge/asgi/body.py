"""A request body read from the ASGI server piece by piece, as the view asks for it."""

from __future__ import annotations

import asyncio
from typing import Any


class ASGIBody:
    """The ``http.request`` messages of one request, as ``AsyncReadable`` (see ``appending``).

    A read that times out leaves its ``receive`` call waiting, and the next
    read takes its message: no piece is lost to a timeout. The server stops
    reading the socket while a message waits (uvicorn's flow control), so a
    body that arrives faster than it is stored costs no more memory.
    """

    def __init__(self, receive: Any) -> None:
        self._receive = receive
        self._next: asyncio.Future[Any] | None = None
        self._held = b""
        self._more = True
        self.disconnected = False

    async def read(self, size: int, timeout: float, /) -> bytes:
        if self._held:
            data, self._held = self._held[:size], self._held[size:]
            return data
        if not self._more:
            return b""
        if self._next is None:
            self._next = asyncio.ensure_future(self._receive())
        done, _ = await asyncio.wait((self._next,), timeout=timeout)
        if not done:
            raise TimeoutError(f"No part of the body arrived within {timeout:g} s")
        message = self._next.result()
        self._next = None
        if message["type"] == "http.disconnect":
            self._more = False
            self.disconnected = True
            raise ConnectionResetError("The client went away before the end of the body")
        self._more = bool(message.get("more_body", False))
        data = message.get("body", b"")
        if len(data) > size:
            data, self._held = data[:size], data[size:]
        return data

    def close(self) -> None:
        """Stop waiting for a message that nobody will read."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
