"""The ``CHUNKED_UPLOAD_*`` settings, read each time they are used.

Module attributes (``settings.MAX_BYTES``...) are looked up on access, so an
override in a test or a running site takes effect at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.files.storage import Storage, default_storage
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.module_loading import import_string


def upload_path() -> str:
    return getattr(django_settings, "CHUNKED_UPLOAD_PATH", "chunked_uploads/%Y/%m/%d")


def generate_filename(instance: Any, filename: str) -> str:
    """Where a finished legacy upload is stored: ``<CHUNKED_UPLOAD_PATH>/<upload_id>.part``."""
    return time.strftime(os.path.join(upload_path(), f"{instance.upload_id}.part"))


def _default_encode(obj: Any) -> str:
    return DjangoJSONEncoder().encode(obj)


_DEFAULTS: dict[str, Callable[[], Any]] = {
    "EXPIRATION_DELTA": lambda: timedelta(days=1),
    "UPLOAD_PATH": upload_path,
    "UPLOAD_TO": lambda: generate_filename,
    "STORAGE": lambda: None,
    "ENCODER": lambda: _default_encode,
    "CONTENT_TYPE": lambda: "application/json",
    "MAX_BYTES": lambda: None,
    "MODEL_USER_FIELD_NULL": lambda: True,
    "MODEL_USER_FIELD_BLANK": lambda: True,
}

_SETTING_NAMES = {
    "EXPIRATION_DELTA": "CHUNKED_UPLOAD_EXPIRATION_DELTA",
    "UPLOAD_PATH": "CHUNKED_UPLOAD_PATH",
    "UPLOAD_TO": "CHUNKED_UPLOAD_TO",
    "STORAGE": "CHUNKED_UPLOAD_STORAGE_CLASS",
    "ENCODER": "CHUNKED_UPLOAD_ENCODER",
    "CONTENT_TYPE": "CHUNKED_UPLOAD_CONTENT_TYPE",
    "MAX_BYTES": "CHUNKED_UPLOAD_MAX_BYTES",
    "MODEL_USER_FIELD_NULL": "CHUNKED_UPLOAD_MODEL_USER_FIELD_NULL",
    "MODEL_USER_FIELD_BLANK": "CHUNKED_UPLOAD_MODEL_USER_FIELD_BLANK",
}


def get(name: str) -> Any:
    """The current value of ``CHUNKED_UPLOAD_<name>`` (with the library's defaults)."""
    setting = _SETTING_NAMES[name]
    if hasattr(django_settings, setting):
        value = getattr(django_settings, setting)
        if name == "STORAGE":
            # Like the original: a Storage class (or any callable) is called; a
            # dotted path is imported first; an instance is used as it is.
            if isinstance(value, str):
                value = import_string(value)
            return value() if callable(value) else value
        return value
    return _DEFAULTS[name]()


def is_set(*names: str) -> bool:
    """Whether any of these settings is configured explicitly."""
    return any(hasattr(django_settings, _SETTING_NAMES[n]) for n in names)


def storage() -> Storage:
    """The Storage finished legacy uploads go to: CHUNKED_UPLOAD_STORAGE_CLASS or the default."""
    return get("STORAGE") or default_storage


def __getattr__(name: str) -> Any:
    if name in _SETTING_NAMES:
        return get(name)
    raise AttributeError(name)
