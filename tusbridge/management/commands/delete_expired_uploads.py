"""django-chunked-upload's cleanup command, on tusbridge's records.

Deletes every upload (complete or not) created longer ago than
CHUNKED_UPLOAD_EXPIRATION_DELTA, with its data, as the original did.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...chunked_upload import settings as legacy_settings
from ...chunked_upload.constants import COMPLETE, UPLOADING
from ...chunked_upload.models import ChunkedUpload
from ...service import get_service


class Command(BaseCommand):
    help = "Deletes uploads created longer ago than CHUNKED_UPLOAD_EXPIRATION_DELTA (complete or not)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interactive",
            action="store_true",
            default=False,
            help="Ask before deleting each upload.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        service = get_service()
        cutoff = time.time() - legacy_settings.get("EXPIRATION_DELTA").total_seconds()
        deleted = {UPLOADING: 0, COMPLETE: 0}
        declined: set[str] = set()
        while True:
            ids = [i for i in service.records.created_before(cutoff, 500 + len(declined)) if i not in declined]
            if not ids:
                break
            for upload_id in ids:
                record = service.records.get(upload_id)
                if record is None:
                    service.records.delete(upload_id)  # drops a stale index entry
                    continue
                upload = ChunkedUpload(record=record, service=service)
                if options["interactive"] and not self.confirm(upload):
                    declined.add(upload_id)
                    continue
                deleted[upload.status] += 1
                upload.delete()
        self.stdout.write(f"{deleted[COMPLETE]} complete uploads were deleted.")
        self.stdout.write(f"{deleted[UPLOADING]} incomplete uploads were deleted.")

    def confirm(self, upload: ChunkedUpload) -> bool:
        while True:
            answer = input(f"Do you want to delete {upload}? (y/n): ").strip().lower()
            if answer in ("y", "n"):
                return answer == "y"
