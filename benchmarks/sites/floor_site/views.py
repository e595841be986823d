"""The least a Django view does for a legacy chunk: Django's own multipart parsing and one write.

No lock, no record, no checksum, no check of the range or of who sends it:
not an upload server, but the floor under any Django app that accepts the
legacy protocol on the same gunicorn set-up. What tusbridge costs above it
is the price of its locking, records and running MD5.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, JsonResponse

_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def chunk(request: HttpRequest) -> JsonResponse:
    upload = request.FILES["file"]  # Django's MultiPartParser with its default upload handlers
    match = _RANGE.fullmatch(request.headers.get("Content-Range", ""))
    if match is None:
        return JsonResponse({"detail": "Content-Range missing"}, status=400)
    position = int(match[1])
    upload_id = request.POST.get("upload_id") or uuid.uuid4().hex
    fd = os.open(Path(settings.FLOOR_UPLOAD_DIR) / upload_id, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for piece in upload.chunks():
            view = memoryview(piece)
            while view:
                written = os.pwrite(fd, view, position)
                position, view = position + written, view[written:]
    finally:
        os.close(fd)
    return JsonResponse({"upload_id": upload_id, "offset": position, "expires": None})


def complete(request: HttpRequest) -> JsonResponse:
    """Answers at once: the floor does not verify the md5."""
    return JsonResponse({"upload_id": request.POST.get("upload_id", "")})
