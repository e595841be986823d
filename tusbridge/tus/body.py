"""Reading a tus request body from the WSGI server."""

from __future__ import annotations

import io

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
