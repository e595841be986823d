"""The record store and the data store the settings name.

``TUSBRIDGE_RECORD_STORE`` and ``TUSBRIDGE_DATA_STORE`` are dotted paths of
store classes, as Django's ``SESSION_ENGINE`` names a session backend; each
class builds itself from the settings (``from_settings``) and brings its own
system checks (``check``).
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import conf
from .data import DataStore
from .records import RecordStore


def record_store_class() -> type[RecordStore]:
    return _store_class("RECORD_STORE", RecordStore)  # type: ignore[return-value]


def data_store_class() -> type[DataStore]:
    return _store_class("DATA_STORE", DataStore)  # type: ignore[return-value]


def configured_record_store() -> RecordStore:
    return record_store_class().from_settings()


def configured_data_store() -> DataStore:
    return data_store_class().from_settings()


def _store_class(setting: str, base: type) -> type:
    path = conf.get(setting)
    try:
        cls = import_string(path) if isinstance(path, str) else path
    except ImportError as exc:
        raise ImproperlyConfigured(f"TUSBRIDGE_{setting} {path!r} cannot be imported: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ImproperlyConfigured(f"TUSBRIDGE_{setting} {path!r} is not a {base.__name__} subclass")
    return cls
