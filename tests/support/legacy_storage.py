"""A Storage class for CHUNKED_UPLOAD_STORAGE_CLASS tests: files go to settings.LEGACY_TEST_STORAGE_ROOT."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.storage import FileSystemStorage


class LegacyTestStorage(FileSystemStorage):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(location=settings.LEGACY_TEST_STORAGE_ROOT, **kwargs)
