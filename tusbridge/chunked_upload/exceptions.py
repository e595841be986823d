"""The error a legacy view raises to answer with a status and a JSON body."""

from __future__ import annotations

from typing import Any


class ChunkedUploadError(Exception):
    """``ChunkedUploadError(status, detail=..., **more)`` becomes the response ``{detail, **more}``.

    ``retry_after`` (seconds), when set, is sent as the Retry-After header.
    """

    retry_after: int | None = None

    def __init__(self, status: int, **data: Any) -> None:
        super().__init__(status, data)
        self.status_code = status
        self.data = data
