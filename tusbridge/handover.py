"""Handing a finished file to a Django Storage (TUSBRIDGE_STORAGE)."""

from __future__ import annotations

import time

from django.core.files import File
from django.core.files.storage import Storage, default_storage
from django.utils.module_loading import import_string

from . import conf
from .filenames import safe_filename
from .record import UploadRecord


def configured_storage() -> Storage | None:
    """The Storage named by TUSBRIDGE_STORAGE, or None to keep files in the upload directory."""
    setting = conf.get("STORAGE")
    if not setting:
        return None
    if isinstance(setting, Storage):
        return setting
    if setting == "default":
        return default_storage
    return import_string(setting)()


def storage_name(record: UploadRecord) -> str:
    """Where in the Storage the file goes, from TUSBRIDGE_STORAGE_PATH."""
    pattern = time.strftime(conf.get("STORAGE_PATH"), time.gmtime(record.completed_at or time.time()))
    return pattern.format(id=record.id, filename=safe_filename(record.filename))


def hand_over(record: UploadRecord, file: File, storage: Storage, name: str | None = None) -> str:
    """Save ``file`` into ``storage`` under ``name`` (else TUSBRIDGE_STORAGE_PATH); return the name used."""
    return storage.save(name or storage_name(record), file)
