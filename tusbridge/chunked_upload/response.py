"""JSON responses encoded and typed as CHUNKED_UPLOAD_ENCODER and CHUNKED_UPLOAD_CONTENT_TYPE say."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse

from . import settings


class Response(HttpResponse):
    def __init__(self, content: Any, status: int | None = None, **kwargs: Any) -> None:
        super().__init__(
            content=settings.get("ENCODER")(content),
            content_type=settings.get("CONTENT_TYPE"),
            status=status,
            **kwargs,
        )
