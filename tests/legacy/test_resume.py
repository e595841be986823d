"""Resume for old clients: the ``Range`` response header and the offset-mismatch body.

jQuery-File-Upload reads ``Range: bytes=0-N`` from each chunk response and
sends the next chunk from ``N + 1``; when a request fails it can resume from
``data.uploadedBytes``. ``JQueryFileUploadClient`` replays that logic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
import redis
from django.http import HttpResponse
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import (
    API_CHUNK,
    API_COMPLETE,
    FILES,
    FILES_COMPLETE,
    assert_error,
    body_of,
    complete,
    get_record,
    post_chunk,
)
from tests.support.tus import data_of
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

BOTH_ENDPOINTS = pytest.mark.parametrize(
    ("chunk_url", "complete_url"),
    [(API_CHUNK, API_COMPLETE), (FILES, FILES_COMPLETE)],
    ids=["api", "files"],
)
RANGE = re.compile(r"bytes=0-(\d+)")


def range_end(response: HttpResponse) -> int:
    """N of ``Range: bytes=0-N``."""
    match = RANGE.fullmatch(response["Range"])
    assert match, response["Range"]
    return int(match.group(1))


@dataclass
class JQueryFileUploadClient:
    """The chunking loop of jQuery-File-Upload with the demo's completion call."""

    client: Client
    data: bytes
    chunk_url: str
    complete_url: str
    max_chunk_size: int = 100_000
    upload_id: str | None = None
    uploaded_bytes: int = 0
    sent: list[tuple[int, int]] = field(default_factory=list)

    def send_chunk(self) -> HttpResponse:
        start = self.uploaded_bytes
        piece = self.data[start : start + self.max_chunk_size]
        self.sent.append((start, len(piece)))
        return post_chunk(
            self.client,
            piece,
            url=self.chunk_url,
            start=start,
            total=len(self.data),
            upload_id=self.upload_id,
            filename="video.mp4",
            HTTP_CONTENT_DISPOSITION='attachment; filename="video.mp4"',
        )

    def handle(self, response: HttpResponse) -> None:
        """What the client does with a chunk response it did see."""
        if response.status_code == 200:
            self.upload_id = body_of(response)["upload_id"]
            # jQuery-File-Upload: next chunk starts after the Range the server reports.
            self.uploaded_bytes = range_end(response) + 1 if response.has_header("Range") else self.uploaded_bytes
        else:
            body = body_of(response)
            assert response.status_code == 400 and body["detail"] == "Offsets do not match", body
            # The resume path: continue from the server's offset.
            self.uploaded_bytes = body["offset"]

    def finish(self) -> HttpResponse:
        while self.uploaded_bytes < len(self.data):
            self.handle(self.send_chunk())
        return complete(self.client, self.upload_id, md5(self.data), url=self.complete_url)


@BOTH_ENDPOINTS
def test_every_successful_chunk_carries_range(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """``Range: bytes=0-<offset-1>`` on the first and on later chunks."""
    data = payload(250_000)
    offset = 0
    upload_id = None
    while offset < len(data):
        piece = data[offset : offset + 100_000]
        response = post_chunk(
            client_logged_in, piece, url=chunk_url, start=offset, total=len(data), upload_id=upload_id
        )
        assert response.status_code == 200, response.content
        offset += len(piece)
        upload_id = body_of(response)["upload_id"]
        assert response["Range"] == f"bytes=0-{offset - 1}"
        assert body_of(response)["offset"] == offset


def test_whole_file_response_carries_range(client_logged_in: Client) -> None:
    """A small file without Content-Range also answers its Range."""
    response = post_chunk(client_logged_in, b"abcdef", start=None)
    assert response.status_code == 200
    assert response["Range"] == "bytes=0-5"


@BOTH_ENDPOINTS
def test_offset_mismatch_tells_the_offset(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """A chunk from the wrong place: 400 with the server's offset (the only hint an old client reads)."""
    data = payload(300)
    upload_id = body_of(post_chunk(client_logged_in, data[:100], url=chunk_url, total=300))["upload_id"]
    for wrong in (0, 50, 200):
        response = post_chunk(
            client_logged_in, data[wrong : wrong + 100], url=chunk_url, start=wrong, total=300, upload_id=upload_id
        )
        assert_error(response, 400, {"detail": "Offsets do not match", "offset": 100})
    assert data_of(upload_id) == data[:100]


@BOTH_ENDPOINTS
def test_lost_response_is_resumed_from_the_server_offset(
    client_logged_in: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """Chunk 2's response is lost; the client re-sends chunk 2, learns the offset, and finishes with the right md5."""
    data = payload(450_000, seed=11)
    uploader = JQueryFileUploadClient(client_logged_in, data, chunk_url, complete_url)
    uploader.handle(uploader.send_chunk())  # chunk 1: 0-99999
    assert uploader.uploaded_bytes == 100_000
    lost = uploader.send_chunk()  # chunk 2 reached the server...
    assert lost.status_code == 200  # ...but the client never sees this answer.

    resent = uploader.send_chunk()  # so it sends chunk 2 again
    assert_error(resent, 400, {"detail": "Offsets do not match", "offset": 200_000})
    assert range_end(resent) == 199_999
    uploader.handle(resent)
    assert uploader.uploaded_bytes == 200_000

    done = uploader.finish()
    assert done.status_code == 200, done.content
    assert body_of(done) == {}
    assert uploader.sent == [
        (0, 100_000),
        (100_000, 100_000),
        (100_000, 100_000),
        (200_000, 100_000),
        (300_000, 100_000),
        (400_000, 50_000),
    ]
    assert data_of(uploader.upload_id or "") == data
    record = get_record(redis_client, uploader.upload_id or "")
    assert record is not None and record.state is State.COMPLETE and record.offset == len(data)


def test_client_resuming_from_its_uploaded_bytes_guess(client_logged_in: Client) -> None:
    """A client that restarts from a stale ``uploadedBytes`` (0) is steered to the server offset."""
    data = payload(350_000, seed=5)
    first = JQueryFileUploadClient(client_logged_in, data, API_CHUNK, API_COMPLETE)
    for _ in range(2):
        first.handle(first.send_chunk())
    # A new page load: same upload id (kept by the app), but uploadedBytes starts at 0.
    again = JQueryFileUploadClient(client_logged_in, data, API_CHUNK, API_COMPLETE, upload_id=first.upload_id)
    done = again.finish()
    assert done.status_code == 200, done.content
    assert again.sent[:2] == [(0, 100_000), (200_000, 100_000)]
    assert data_of(first.upload_id or "") == data
