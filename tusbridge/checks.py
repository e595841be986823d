"""System checks for the TUSBRIDGE_* settings (``manage.py check``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import conf, stores


@register("tusbridge")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    messages += _check_stores()
    messages += _check_numbers()
    messages += _check_imports()
    messages += _check_cors()
    return messages


def _check_stores() -> list[CheckMessage]:
    """Each store setting names a store class, whose own checks then run."""
    messages: list[CheckMessage] = []
    for load, error_id in (
        (stores.record_store_class, "tusbridge.E013"),
        (stores.data_store_class, "tusbridge.E014"),
    ):
        try:
            store_class = load()
        except ImproperlyConfigured as exc:
            messages.append(Error(str(exc), id=error_id))
        else:
            messages += store_class.check()
    return messages


def _check_numbers() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    max_size = conf.get("MAX_SIZE")
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 0:
        messages.append(Error("TUSBRIDGE_MAX_SIZE must be a non-negative integer (0: no limit).", id="tusbridge.E003"))
    for name in ("EXPIRY", "RETENTION"):
        value = conf.get(name)
        if not isinstance(value, (timedelta, int, float)) or isinstance(value, bool) or conf.seconds(value) <= 0:
            messages.append(
                Error(f"TUSBRIDGE_{name} must be a positive timedelta or number of seconds.", id="tusbridge.E004")
            )
    for name in ("LOCK_TTL", "LOCK_WAIT", "REDIS_TIMEOUT", "PROGRESS_INTERVAL"):
        value = conf.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            messages.append(Error(f"TUSBRIDGE_{name} must be a positive number of seconds.", id="tusbridge.E005"))
    max_connections = conf.get("REDIS_MAX_CONNECTIONS")
    if not isinstance(max_connections, int) or isinstance(max_connections, bool) or max_connections < 4:
        messages.append(Error("TUSBRIDGE_REDIS_MAX_CONNECTIONS must be an integer of at least 4.", id="tusbridge.E011"))
    threads = conf.get("ASYNC_THREADS")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        messages.append(Error("TUSBRIDGE_ASYNC_THREADS must be a positive integer.", id="tusbridge.E012"))
    progress_bytes = conf.get("PROGRESS_BYTES")
    if not isinstance(progress_bytes, int) or isinstance(progress_bytes, bool) or progress_bytes < 65536:
        messages.append(Error("TUSBRIDGE_PROGRESS_BYTES must be an integer of at least 65536.", id="tusbridge.E015"))
    read_size = conf.get("READ_SIZE")
    if not isinstance(read_size, int) or not 4096 <= read_size <= 1024 * 1024:
        messages.append(Error("TUSBRIDGE_READ_SIZE must be an integer from 4096 to 1048576.", id="tusbridge.E006"))
    linger = conf.get("KEEPALIVE_LINGER")
    if not isinstance(linger, (int, float)) or isinstance(linger, bool) or linger < 0:
        messages.append(
            Error("TUSBRIDGE_KEEPALIVE_LINGER must be a non-negative number of seconds.", id="tusbridge.E010")
        )
    return messages


def _check_imports() -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    permission = conf.get("PERMISSION")
    try:
        hook = import_string(permission)
    except ImportError as exc:
        messages.append(Error(f"TUSBRIDGE_PERMISSION {permission!r} cannot be imported: {exc}", id="tusbridge.E007"))
    else:
        if not callable(hook):
            messages.append(Error(f"TUSBRIDGE_PERMISSION {permission!r} is not callable.", id="tusbridge.E007"))
    storage = conf.get("STORAGE")
    if isinstance(storage, str) and storage != "default":
        try:
            import_string(storage)
        except ImportError as exc:
            messages.append(Error(f"TUSBRIDGE_STORAGE {storage!r} cannot be imported: {exc}", id="tusbridge.E008"))
    return messages


def _cors_headers_defaults() -> tuple[str, ...]:
    """django-cors-headers' own header list, which applies when CORS_ALLOW_HEADERS is not set."""
    try:
        from corsheaders.defaults import default_headers
    except ImportError:
        return ()
    return tuple(default_headers)


def _check_cors() -> list[CheckMessage]:
    from django.conf import settings

    from .tus import cors

    origins = conf.get("CORS_ALLOWED_ORIGINS")
    if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
        return [Error('TUSBRIDGE_CORS_ALLOWED_ORIGINS must be a list of origins (or ["*"]).', id="tusbridge.E009")]
    if not cors.cors_headers_active():
        return []
    messages: list[CheckMessage] = []
    allowed = {h.lower() for h in getattr(settings, "CORS_ALLOW_HEADERS", _cors_headers_defaults())}
    missing = [h for h in cors.REQUEST_HEADERS if h.lower() not in allowed]
    if missing:
        messages.append(
            Warning(
                "django-cors-headers does not allow the tus request headers " + ", ".join(missing) + ".",
                hint="CORS_ALLOW_HEADERS = (*default_headers, *tusbridge.tus.cors.REQUEST_HEADERS)",
                id="tusbridge.W003",
            )
        )
    exposed = {h.lower() for h in getattr(settings, "CORS_EXPOSE_HEADERS", ())}
    missing = [h for h in cors.EXPOSE_HEADERS if h.lower() not in exposed]
    if exposed and missing:
        messages.append(
            Warning(
                "CORS_EXPOSE_HEADERS replaces the tus headers tusbridge exposes; missing: " + ", ".join(missing) + ".",
                hint="Add tusbridge.tus.cors.EXPOSE_HEADERS to CORS_EXPOSE_HEADERS.",
                id="tusbridge.W004",
            )
        )
    return messages
