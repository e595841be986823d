"""Record every finished upload: name, size and sha256 as the server reads the file back."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.dispatch import receiver

from tusbridge.signals import upload_completed

from .middleware import current_request
from .models import FinishedUpload

logger = logging.getLogger(__name__)


def finishing_protocol() -> str:
    """Which protocol completed the upload: "tus" for a tus request, else "legacy"."""
    request = current_request.get()
    if request is None:
        return ""
    return "tus" if "Tus-Resumable" in request.headers else "legacy"


@receiver(upload_completed, dispatch_uid="example_site.record_finished_upload")
def record_finished_upload(sender: Any, upload: Any, file: Any, **kwargs: Any) -> None:
    # Reading the file back costs one pass over it; fine for a demo, and it is
    # what proves the bytes on disk are the bytes the browser had.
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    # One plain INSERT (the signal comes once per upload): no read-then-write
    # transaction, which SQLite would refuse at once when the other worker writes.
    FinishedUpload.objects.create(
        upload_id=upload.id,
        user_id=upload.owner or None,
        name=(upload.filename or upload.id)[:255],
        size=size,
        sha256=digest.hexdigest(),
        protocol=upload.protocol,
        finished_with=finishing_protocol(),
    )
    logger.info("finished upload %s: %s, %d bytes", upload.id, upload.filename, size)
