"""Serving tusbridge from an ASGI server (uvicorn, Daphne, Hypercorn).

Use it in place of Django's ``get_asgi_application`` in your ``asgi.py``::

    from tusbridge.asgi import get_asgi_application
    application = get_asgi_application()

Django's own ASGI handler reads a whole request body into a temporary file
before any view runs. For an upload that would hold the bytes of a slow
client for minutes without counting any of them, take the upload's lock
only after the last byte, and copy every byte twice. This handler leaves
the body of a tus PATCH or creation-with-upload where it is and gives the
view a stream of it (``request.upload_body``): the view takes the lock
first and writes the bytes as they arrive, holding no thread while it waits
for them (see ``UploadService.append_async``). Every other request, a legacy
chunk included, is served exactly as Django serves it.
"""

from __future__ import annotations

import asyncio
import io
from contextvars import ContextVar
from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest
from django.urls import Resolver404, ResolverMatch, get_resolver

from .. import shutdown
from .body import ASGIBody

__all__ = ["ASGIBody", "UploadASGIHandler", "get_asgi_application"]

_OFFSET_CONTENT_TYPE = b"application/offset+octet-stream"

# The streamed body of the request this task serves, if it is streamed.
_streamed: ContextVar[ASGIBody | None] = ContextVar("tusbridge_streamed_body", default=None)


def get_asgi_application() -> UploadASGIHandler:
    """Django's ``get_asgi_application`` with tusbridge's handler."""
    django.setup(set_prefix=False)
    return UploadASGIHandler()


class UploadASGIHandler(ASGIHandler):
    """Django's ASGI handler, streaming the bodies of tusbridge's upload requests to their view."""

    _signals_chained = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self._signals_chained:
            # By now the server has its own stop handlers: uploads in flight stop with it.
            shutdown.on_signals()
            self._signals_chained = True
        if scope["type"] != "http" or not _streams(scope):
            await super().__call__(scope, receive, send)
            return
        body = ASGIBody(receive)
        token = _streamed.set(body)
        try:
            # Without Django's per-request ThreadSensitiveContext, which would
            # keep a thread for each upload in flight: the few synchronous
            # calls of these requests (middleware, reading the user) share
            # the process's one thread for them instead.
            await self.handle(scope, receive, send)
        finally:
            body.close()
            _streamed.reset(token)

    async def read_body(self, receive: Any) -> Any:
        if _streamed.get() is not None:
            return io.BytesIO()  # the view reads the body itself
        return await super().read_body(receive)

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[HttpRequest | None, Any]:
        request, error_response = super().create_request(scope, body_file)
        body = _streamed.get()
        if request is not None and body is not None:
            request.upload_body = body  # type: ignore[attr-defined]
        return request, error_response

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        match = super().resolve_request(request)
        if getattr(request, "upload_body", None) is None:
            return match
        streaming = getattr(match.func, "streaming_view", None)
        if streaming is None:
            # The URL resolved differently here than before the request was
            # built (a middleware set request.urlconf): nobody would read the body.
            raise RuntimeError(f"{request.path} streams an upload body, but its view {match.func!r} cannot read one")
        match.func = streaming  # a match of this request alone: resolving makes a new one each time
        return match

    async def listen_for_disconnect(self, receive: Any) -> None:
        if _streamed.get() is not None:
            # The view reads the request's messages; a disconnect shows there
            # and ends the upload cleanly. Stopping the view here instead
            # would cut it off between its bytes and their count.
            await asyncio.Event().wait()
        await super().listen_for_disconnect(receive)


def _streams(scope: dict[str, Any]) -> bool:
    """Whether the request carries an upload body for a view that can stream it."""
    content_type = next((value for name, value in scope.get("headers", ()) if name == b"content-type"), b"")
    if content_type.split(b";", 1)[0].strip().lower() != _OFFSET_CONTENT_TYPE:
        return False
    path, prefix = scope.get("path", ""), settings.FORCE_SCRIPT_NAME or scope.get("root_path", "")
    path_info = path.removeprefix(prefix) if prefix else path  # as ASGIRequest finds it
    try:
        match = get_resolver().resolve(path_info or "/")
    except Resolver404:
        return False
    return getattr(match.func, "streaming_view", None) is not None
