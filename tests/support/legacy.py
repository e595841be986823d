"""Helpers for the legacy (django-chunked-upload) protocol tests.

Requests go through Django's test client; the state they leave is read from
the private Redis (under the test's key prefix) and the upload directory.
The multipart bodies put the form fields before the file part, the order
jQuery-File-Upload sends, unless a test builds the body by hand.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpResponse
from django.test import Client

from tests.support.tus import record_key, upload_dir
from tusbridge.record import UploadRecord

# Where the legacy views are mounted in tests/legacy_urls.py.
API_CHUNK = "/api/chunked_upload/"
API_COMPLETE = "/api/chunked_upload_complete/"
# The main endpoint (tusbridge.urls) that serves both protocols.
FILES = "/files/"
FILES_COMPLETE = "/files/complete/"

UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
# DjangoJSONEncoder: ISO 8601 with milliseconds and "Z" for UTC.
EXPIRES = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def content_range(start: int, size: int, total: int) -> str:
    return f"bytes {start}-{start + size - 1}/{total}"


def post_chunk(
    client: Client,
    data: bytes,
    *,
    url: str = API_CHUNK,
    start: int | None = 0,
    total: int | None = None,
    upload_id: str | None = None,
    field_name: str = "file",
    filename: str = "data.bin",
    fields: dict[str, str] | None = None,
    range_header: str | None = None,
    **extra: Any,
) -> HttpResponse:
    """POST one chunk like jQuery-File-Upload: fields first, then the file part.

    ``start=None`` sends no Content-Range (a small file in one request);
    ``range_header`` sends that exact header value instead.
    """
    body: dict[str, Any] = dict(fields or {})
    if upload_id is not None:
        body["upload_id"] = upload_id
    body[field_name] = SimpleUploadedFile(filename, data, content_type="application/octet-stream")
    headers: dict[str, Any] = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest", **extra}
    if range_header is not None:
        headers["HTTP_CONTENT_RANGE"] = range_header
    elif start is not None:
        headers["HTTP_CONTENT_RANGE"] = content_range(start, len(data), len(data) + start if total is None else total)
    return client.post(url, body, **headers)


def complete(
    client: Client, upload_id: str | None, md5sum: str | None, *, url: str = API_COMPLETE, **fields: Any
) -> HttpResponse:
    """The completion POST (urlencoded, as the demo sends it)."""
    data: dict[str, Any] = {}
    if upload_id is not None:
        data["upload_id"] = upload_id
    if md5sum is not None:
        data["md5"] = md5sum
    data.update(fields)
    return client.post(url, data)


def upload_chunks(
    client: Client,
    data: bytes,
    chunk_size: int,
    *,
    url: str = API_CHUNK,
    filename: str = "data.bin",
    upload_id: str | None = None,
    start: int = 0,
) -> str:
    """Send ``data[start:]`` in chunks (a new upload unless ``upload_id``); return the upload id."""
    offset = start
    while offset < len(data):
        piece = data[offset : offset + chunk_size]
        response = post_chunk(
            client, piece, url=url, start=offset, total=len(data), upload_id=upload_id, filename=filename
        )
        assert response.status_code == 200, response.content
        upload_id = response.json()["upload_id"]
        offset += len(piece)
    assert upload_id is not None
    return upload_id


def body_of(response: HttpResponse) -> Any:
    """The JSON body, after checking the content type is exactly application/json."""
    assert response["Content-Type"] == "application/json", response["Content-Type"]
    return json.loads(response.content)


def assert_error(response: HttpResponse, status: int, body: dict[str, Any]) -> None:
    """Status, exact content type and exact JSON body of a legacy error."""
    assert response.status_code == status, (response.status_code, response.content)
    assert body_of(response) == body


def parse_expires(value: str) -> datetime:
    assert EXPIRES.fullmatch(value), f"not a DjangoJSONEncoder datetime: {value!r}"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def get_record(client: Any, upload_id: str) -> UploadRecord | None:
    """The upload's record as stored in Redis (``client`` is a redis-py client)."""
    raw = client.hgetall(record_key(upload_id))
    return UploadRecord.from_redis(raw) if raw else None


def uploads_on_disk() -> list[str]:
    """Names of the files in the upload directory."""
    directory = upload_dir()
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []
