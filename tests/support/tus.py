"""Helpers for the in-process tus tests (Django test client, real Redis, real files).

``tus(client)`` wraps a Django test client so that every request carries
``Tus-Resumable: 1.0.0`` unless a test says otherwise. The fixtures built on
these (``t``, ``redis_client``, ``completions``, ``other_client``) are in
``tests/conftest.py``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from django.conf import settings as django_settings
from django.http import HttpResponse
from django.test import Client
from django.utils.http import parse_http_date

from tests.support.servers import upload_keys
from tusbridge.data import InfoKeeper
from tusbridge.data.filesystem import FileSystemDataStore
from tusbridge.record import UploadRecord, new_upload_id
from tusbridge.records.redis import RedisRecordStore
from tusbridge.service import get_service

TUS_VERSION = "1.0.0"
OFFSET_CT = "application/offset+octet-stream"
COLLECTION = "/files/"
# The extensions this suite covers; the server MUST advertise each of them.
COVERED_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "termination",
}
# Everything the app implements (with the filesystem data store): the covered
# extensions plus checksum and concatenation, which other modules test.
ALL_EXTENSIONS = COVERED_EXTENSIONS | {"checksum", "concatenation", "concatenation-unfinished"}

# RFC 9110 section 5.6.7: the preferred format, IMF-fixdate.
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


def imf_fixdate(value: str) -> int:
    """Parse an IMF-fixdate header value into epoch seconds; fail on any other format."""
    assert IMF_FIXDATE.fullmatch(value), f"not an IMF-fixdate: {value!r}"
    return parse_http_date(value)


def upload_dir() -> Path:
    return Path(django_settings.TUSBRIDGE_UPLOAD_DIR)


def data_path(upload_id: str) -> Path:
    """Where the filesystem data store keeps the bytes of ``upload_id``."""
    return upload_dir() / upload_id


def data_of(upload_id: str) -> bytes | None:
    """The stored bytes of an upload, or None when it has no data (read through the configured data store)."""
    data = get_service().data
    if data.size(upload_id) is None:
        return None
    with data.open(upload_id) as fh:
        return fh.read()


def prefix() -> str:
    return str(django_settings.TUSBRIDGE_KEY_PREFIX)


def record_key(upload_id: str) -> str:
    return f"{prefix()}:upload:{{{upload_id}}}"


def lock_key(upload_id: str) -> str:
    return f"{prefix()}:lock:{{{upload_id}}}"


def expiry_key() -> str:
    return f"{prefix()}:expiry"


def redis_keys(client: redis.Redis) -> set[str]:
    """Every key under this test's prefix but the processes' heartbeats (``servers.upload_keys``)."""
    return {k.decode() for k in upload_keys(client.scan_iter(match=f"{prefix()}*", count=500))}


@dataclass(frozen=True)
class Snapshot:
    """Everything the app could have changed: Redis keys (serialised) and upload files."""

    keys: dict[str, bytes | None] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


def snapshot(client: redis.Redis) -> Snapshot:
    keys = {key: client.dump(key) for key in sorted(redis_keys(client))}
    directory = upload_dir()
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.exists() else {}
    return Snapshot(keys, files)


def record_store(client: redis.Redis) -> RedisRecordStore:
    """A record store on the test's private Redis under the test's key prefix."""
    return RedisRecordStore(client, prefix())


def make_record(store: RedisRecordStore, length: int | None = 10, expires_in: float = 3600.0) -> UploadRecord:
    """Store a fresh uploading record and return it."""
    now = time.time()
    record = UploadRecord(
        id=new_upload_id(),
        owner="1",
        protocol="tus",
        length=length,
        created_at=now,
        updated_at=now,
        expires_at=now + expires_in,
    )
    store.create(record)
    return record


def move_expiry(client: redis.Redis, upload_id: str, expires_at: float, *, index: bool = True) -> None:
    """Pretend time passed: set the record's expiry time (and its expiry index entry)."""
    client.hset(record_key(upload_id), "expires_at", repr(float(expires_at)))
    if index:
        client.zadd(expiry_key(), {upload_id: expires_at})


class Tus:
    """A Django test client speaking tus: adds ``Tus-Resumable`` to every non-OPTIONS request."""

    def __init__(self, client: Client, version: str | None = TUS_VERSION) -> None:
        self.client = client
        self.version = version

    def _extra(self, extra: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        if self.version is not None:
            merged["HTTP_TUS_RESUMABLE"] = self.version
        merged.update(extra)
        return {k: v for k, v in merged.items() if v is not None}

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = None,
        **extra: Any,
    ) -> HttpResponse:
        """Any method; ``content_type`` is sent even for an empty body."""
        meta = self._extra(extra)
        if content_type is not None:
            meta.setdefault("CONTENT_TYPE", content_type)
        return self.client.generic(method, path, body, content_type=content_type or "", **meta)

    def options(self, path: str = COLLECTION, **extra: Any) -> HttpResponse:
        return self.client.options(path, **{k: v for k, v in extra.items() if v is not None})

    def create(
        self,
        length: int | str | None = None,
        *,
        defer: bool | str = False,
        metadata: str | None = None,
        body: bytes | None = None,
        path: str = COLLECTION,
        **extra: Any,
    ) -> HttpResponse:
        """POST to the collection; ``body`` makes it a creation-with-upload request."""
        headers: dict[str, Any] = dict(extra)
        if length is not None:
            headers["HTTP_UPLOAD_LENGTH"] = str(length)
        if defer:
            headers["HTTP_UPLOAD_DEFER_LENGTH"] = "1" if defer is True else defer
        if metadata is not None:
            headers["HTTP_UPLOAD_METADATA"] = metadata
        if body is None:
            return self.request("POST", path, **headers)
        return self.request("POST", path, body, headers.pop("content_type", OFFSET_CT), **headers)

    def head(self, url: str, **extra: Any) -> HttpResponse:
        return self.client.head(url, **self._extra(extra))

    def patch(
        self,
        url: str,
        body: bytes,
        offset: int | str | None,
        *,
        content_type: str | None = OFFSET_CT,
        **extra: Any,
    ) -> HttpResponse:
        if offset is not None:
            extra["HTTP_UPLOAD_OFFSET"] = str(offset)
        return self.request("PATCH", url, body, content_type, **extra)

    def delete(self, url: str, **extra: Any) -> HttpResponse:
        return self.request("DELETE", url, **extra)

    # Conveniences -------------------------------------------------------------

    def new_upload(self, length: int | None, **kwargs: Any) -> str:
        """Create an upload (deferred when ``length`` is None) and return its URL."""
        response = self.create(length, defer=length is None, **kwargs)
        assert response.status_code == 201, response.content
        return response["Location"]

    def upload(self, data: bytes, **kwargs: Any) -> str:
        """Create and fully upload ``data`` in one PATCH; return the URL."""
        url = self.new_upload(len(data), **kwargs)
        if data:
            response = self.patch(url, data, 0)
            assert response.status_code == 204, response.content
        return url

    def offset(self, url: str) -> int:
        response = self.head(url)
        assert response.status_code == 200, response.content
        return int(response["Upload-Offset"])


def tus(client: Client, version: str | None = TUS_VERSION) -> Tus:
    """Wrap ``client`` so every tus request carries ``Tus-Resumable``."""
    return Tus(client, version)


@dataclass
class Completion:
    """One ``upload_completed`` signal as a receiver saw it."""

    upload: Any
    content: bytes
    file_name: str
    was_closed: bool
    sender: Any


def file_size(upload_id: str) -> int | None:
    return get_service().data.size(upload_id)


def leftovers(upload_id: str) -> list[str]:
    """What the data store keeps of ``upload_id``: every file of it in the upload directory
    (data and side files), or in another store its data and its record copy."""
    data = get_service().data
    if not isinstance(data, FileSystemDataStore):
        kept = [upload_id] if data.size(upload_id) is not None else []
        if isinstance(data, InfoKeeper) and data.read_info(upload_id) is not None:
            kept.append(f"{upload_id}.info")
        return kept
    directory = upload_dir()
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(upload_id))
