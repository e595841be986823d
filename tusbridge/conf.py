"""Settings, read when first used rather than at import.

Every setting is ``TUSBRIDGE_<NAME>`` in the Django settings module; the
defaults below apply when it is absent. A value is kept once read, and
forgotten whenever Django announces a settings change (``override_settings``,
pytest-django's ``settings``), as Django keeps its own settings: an absent
setting would otherwise cost a failed attribute lookup on every request.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # The record store and the data store, as dotted paths of their classes.
    "RECORD_STORE": "tusbridge.records.redis.RedisRecordStore",
    "DATA_STORE": "tusbridge.data.filesystem.FileSystemDataStore",
    # Where upload records live (the Redis record store).
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # Seconds a Redis command may take before the request answers 503.
    "REDIS_TIMEOUT": 5.0,
    # Connections to Redis one process opens at most, however many requests
    # are in flight; a request that finds them all busy waits (up to the timeout).
    "REDIS_MAX_CONNECTIONS": 16,
    # Prefix of every Redis key, so that several sites can share one server.
    "KEY_PREFIX": "tusbridge",
    # Directory that holds the data files of unfinished uploads (the filesystem data store).
    "UPLOAD_DIR": None,
    # Largest upload accepted, in bytes (advertised as Tus-Max-Size); 0 = no limit.
    "MAX_SIZE": 0,
    # Per logged-in user: uploads in progress at once, and their total length (0 = no limit).
    "MAX_UPLOADS_PER_USER": 0,
    "MAX_BYTES_PER_USER": 0,
    # Per client address, for uploads without a logged-in user: uploads in
    # progress at once, their total length, and creations per minute (0 = no limit).
    "MAX_UPLOADS_PER_ADDRESS": 20,
    "MAX_BYTES_PER_ADDRESS": 10 * 1024**3,
    "CREATIONS_PER_MINUTE": 60,
    # Proxies in front of the server that append the client's address to
    # X-Forwarded-For; 0 takes the address of the connection (REMOTE_ADDR).
    "TRUSTED_PROXY_COUNT": 0,
    # How long an unfinished upload may sit idle before it expires.
    "EXPIRY": timedelta(days=1),
    # How long an expired or terminated upload answers 410 before it is forgotten.
    "RETENTION": timedelta(days=1),
    # Whether uploads may be made without a logged-in Django user.
    "ALLOW_ANONYMOUS": False,
    # Dotted path of ``callable(request, action, upload) -> bool`` deciding who may upload.
    "PERMISSION": "tusbridge.permissions.default_permission",
    # Where a finished file goes: None keeps it in UPLOAD_DIR, "default" uses
    # Django's default storage, anything else is a dotted Storage class path.
    "STORAGE": None,
    # Name pattern (strftime, then ``{filename}`` and ``{id}``) inside STORAGE.
    "STORAGE_PATH": "uploads/%Y/%m/%d/{id}/{filename}",
    # Seconds a writer holds the per-upload lock without renewing it.
    "LOCK_TTL": 30.0,
    # Seconds a request waits for a busy upload before answering 423 Locked.
    "LOCK_WAIT": 5.0,
    # Seconds a request body may stay silent before the client counts as gone
    # (needs a WSGI server that exposes the socket, such as gunicorn).
    "IDLE_TIMEOUT": 60.0,
    # Seconds between checks for release requests while a body is silent.
    "POLL_INTERVAL": 0.25,
    # A tus PATCH without Upload-Checksum counts its bytes while its body
    # streams, at least this often (seconds) and after this many bytes, so a
    # worker killed mid-PATCH loses at most that much.
    "PROGRESS_INTERVAL": 1.0,
    "PROGRESS_BYTES": 64 * 1024 * 1024,
    # fsync the data file before the offset is advanced (durable, slower).
    "FSYNC": False,
    # Origins whose pages may use the tus endpoint ("*" for any), when
    # django-cors-headers is not installed.
    "CORS_ALLOWED_ORIGINS": (),
    # Let cross-origin pages send cookies (session authentication).
    "CORS_ALLOW_CREDENTIALS": False,
    # The legacy views that serve legacy requests on the tus URLs (a project's
    # own subclasses of tusbridge.chunked_upload.views may be named here).
    "LEGACY_CHUNK_VIEW": "tusbridge.chunked_upload.views.ChunkedUploadView",
    "LEGACY_COMPLETE_VIEW": "tusbridge.chunked_upload.views.ChunkedUploadCompleteView",
    # Threads per process for the blocking calls of requests served on an
    # event loop (ASGI): Redis, the data store. Uploads in flight do not add any.
    "ASYNC_THREADS": 8,
    # Largest piece read from a request body at once.
    "READ_SIZE": 1024 * 1024,
    # Seconds a thread of tusbridge.gunicorn.workers.ThreadWorker waits on a kept-alive
    # connection for its next request before handing it back (0: never waits;
    # never longer than gunicorn's --keep-alive).
    "KEEPALIVE_LINGER": 0.002,
    # The S3 data store (DATA_STORE "tusbridge.data.s3.S3DataStore"; credentials from
    # boto3's usual chain): its bucket, the prefix of its keys, an endpoint for
    # S3-compatible services (MinIO, Cloudflare R2, moto) and the region.
    "S3_BUCKET": "",
    "S3_KEY_PREFIX": "tusbridge/",
    "S3_ENDPOINT_URL": None,
    "S3_REGION": None,
    # Bytes per multipart part (S3's minimum is 5 MiB; an upload has at most
    # 10,000 parts), and parts one writer uploads at once while a body streams:
    # a writer holds at most part size x (parts in flight + 1) in memory.
    "S3_PART_SIZE": 8 * 1024 * 1024,
    "S3_PARTS_IN_FLIGHT": 2,
    # Every part but the last of one size (Cloudflare R2 requires it): a
    # concatenation then copies partials inside S3 only when they allow it.
    "S3_EQUAL_PARTS": False,
}


_values: dict[str, Any] = {}


def get(name: str) -> Any:
    """Return the current value of ``TUSBRIDGE_<name>``."""
    try:
        return _values[name]
    except KeyError:
        value = _values[name] = getattr(settings, f"TUSBRIDGE_{name}", DEFAULTS[name])
        return value


def _forget_values(**kwargs: Any) -> None:
    _values.clear()


# Any setting may matter (MEDIA_ROOT, for one), and changes are rare: forget them all.
setting_changed.connect(_forget_values, dispatch_uid="tusbridge.conf")


def upload_dir() -> str:
    """The data directory: the setting, else ``MEDIA_ROOT/tusbridge``, else a temp dir."""
    configured = get("UPLOAD_DIR")
    if configured:
        return os.fspath(configured)
    media_root = getattr(settings, "MEDIA_ROOT", "")
    if media_root:
        return os.path.join(os.fspath(media_root), "tusbridge")
    return os.path.join(tempfile.gettempdir(), "tusbridge")


def seconds(value: timedelta | int | float) -> float:
    """Accept a timedelta or a number of seconds for the duration settings."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)
