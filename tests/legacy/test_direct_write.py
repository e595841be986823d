"""One write per byte: a chunk whose fields come first streams straight into the upload's data file.

With FILE_UPLOAD_MAX_MEMORY_SIZE = 0 Django would spool every file part to a
temporary file in FILE_UPLOAD_TEMP_DIR. A probe view looks into that
directory from ``pre_save``, while the request's file part is still open: a
direct chunk leaves it empty; a part sent before the fields (so its place in
the upload is not known yet) goes through exactly one temporary file and
still lands correctly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests import legacy_urls
from tests.support.data import payload
from tests.support.legacy import body_of, content_range, post_chunk
from tests.support.tus import data_of

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

PROBE = "/variant/temp_probe/"
BOUNDARY = "----jqfuBoundary7MA4YWxkTrZu0gW"


@pytest.fixture
def temp_dir(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """An empty FILE_UPLOAD_TEMP_DIR, and no file part kept in memory."""
    directory = tmp_path / "django-tmp"
    directory.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(directory)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0
    legacy_urls.TEMP_FILES_SEEN.clear()
    yield directory
    legacy_urls.TEMP_FILES_SEEN.clear()


def file_first_body(data: bytes, fields: dict[str, str], filename: str = "late.bin") -> bytes:
    """A multipart body with the file part BEFORE the form fields (not how jQuery-File-Upload sends it)."""
    parts = [
        (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    ]
    for name, value in fields.items():
        parts.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


def test_chunks_with_fields_first_use_no_temporary_file(client_logged_in: Client, temp_dir: Path) -> None:
    """First and later chunks (fields first) never touch FILE_UPLOAD_TEMP_DIR, and the bytes are exact."""
    data = payload(600_000)
    upload_id = None
    for start in range(0, len(data), 200_000):
        response = post_chunk(
            client_logged_in,
            data[start : start + 200_000],
            url=PROBE,
            start=start,
            total=len(data),
            upload_id=upload_id,
        )
        assert response.status_code == 200, response.content
        upload_id = body_of(response)["upload_id"]
    assert legacy_urls.TEMP_FILES_SEEN == [[], [], []]
    assert list(temp_dir.iterdir()) == []
    assert data_of(upload_id or "") == data


def test_file_part_before_the_fields_goes_through_one_temporary_file(client_logged_in: Client, temp_dir: Path) -> None:
    """A later chunk whose ``upload_id`` comes after the file: spooled once, appended correctly."""
    data = payload(300_000, seed=9)
    first = post_chunk(client_logged_in, data[:100_000], url=PROBE, total=len(data))
    upload_id = body_of(first)["upload_id"]
    body = file_first_body(data[100_000:200_000], {"upload_id": upload_id})
    response = client_logged_in.post(
        PROBE,
        body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_CONTENT_RANGE=content_range(100_000, 100_000, len(data)),
    )
    assert response.status_code == 200, response.content
    body_json = body_of(response)
    assert body_json["upload_id"] == upload_id and body_json["offset"] == 200_000
    direct, spooled = legacy_urls.TEMP_FILES_SEEN
    assert direct == []
    assert len(spooled) == 1
    assert list(temp_dir.iterdir()) == []  # the temporary file is gone after the request
    assert data_of(upload_id) == data[:200_000]
    last = post_chunk(client_logged_in, data[200_000:], url=PROBE, start=200_000, total=len(data), upload_id=upload_id)
    assert last.status_code == 200
    assert data_of(upload_id) == data


def test_file_first_chunk_at_a_wrong_offset_changes_nothing(client_logged_in: Client, temp_dir: Path) -> None:
    """The spooled path checks the offset as well: 400 with the offset, data unchanged."""
    data = payload(30_000)
    upload_id = body_of(post_chunk(client_logged_in, data[:10_000], url=PROBE, total=len(data)))["upload_id"]
    body = file_first_body(data[:10_000], {"upload_id": upload_id})
    response = client_logged_in.post(
        PROBE,
        body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_CONTENT_RANGE=content_range(0, 10_000, len(data)),
    )
    assert response.status_code == 400
    assert body_of(response) == {"detail": "Offsets do not match", "offset": 10_000}
    assert data_of(upload_id) == data[:10_000]


def test_whole_file_without_content_range_uses_at_most_one_temporary_file(
    client_logged_in: Client, temp_dir: Path
) -> None:
    """A small file without a header (place unknown while streaming) is stored correctly via one temp file at most."""
    data = payload(50_000)
    response = post_chunk(client_logged_in, data, url=PROBE, start=None)
    assert response.status_code == 200, response.content
    (seen,) = legacy_urls.TEMP_FILES_SEEN
    assert len(seen) <= 1
    assert data_of(body_of(response)["upload_id"]) == data
