"""Per-user limits: TUSBRIDGE_MAX_UPLOADS_PER_USER and TUSBRIDGE_MAX_BYTES_PER_USER.

The upload that would go past a limit is refused with 429 and a message that
says which limit; completing or deleting an upload frees its share at once;
limits are per user; a legacy first chunk is refused the same way and leaves
nothing behind; and no way of uploading (deferred length, a refused chunk)
gets around them.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import FILES, FILES_COMPLETE, complete, post_chunk, uploads_on_disk
from tests.support.tus import Tus, snapshot, tus

pytestmark = pytest.mark.django_db


def refused_for_count(response: Any, limit: int) -> None:
    assert response.status_code == 429, (response.status_code, response.content)
    text = response.content.decode()
    assert f"{limit} uploads in progress" in text and "finish or delete" in text, text


def refused_for_bytes(response: Any, limit: int) -> None:
    assert response.status_code == 429, (response.status_code, response.content)
    text = response.content.decode()
    assert f"{limit} bytes" in text and "finish or delete" in text, text


# Number of uploads ----------------------------------------------------------------------------


def test_the_upload_past_the_count_is_429_and_creates_nothing(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 3
    for _ in range(3):
        t.new_upload(10)
    before = snapshot(redis_client)
    for attempt in (t.create(10), t.create(None, defer=True), t.create(5, body=b"hello")):
        refused_for_count(attempt, 3)
        assert "Location" not in attempt
    assert snapshot(redis_client) == before


def test_completing_or_deleting_frees_a_slot(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 2
    first, second = t.new_upload(3), t.new_upload(3)
    refused_for_count(t.create(3), 2)
    assert t.patch(first, b"abc", 0).status_code == 204  # complete
    third = t.new_upload(3)
    refused_for_count(t.create(3), 2)
    assert t.delete(second).status_code == 204
    t.new_upload(3)
    refused_for_count(t.create(3), 2)
    assert t.delete(third).status_code == 204
    assert t.create(3).status_code == 201


def test_the_count_is_per_user(t: Tus, other_client: Client, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 1
    t.new_upload(3)
    refused_for_count(t.create(3), 1)
    other = tus(other_client)
    other.new_upload(3)  # mallory has her own slot
    refused_for_count(other.create(3), 1)
    refused_for_count(t.create(3), 1)


def test_a_legacy_first_chunk_past_the_count_is_429_and_leaves_nothing(
    t: Tus, client_logged_in: Client, settings: Any, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 1
    t.new_upload(10)
    before = snapshot(redis_client)
    for start in (0, None):  # a chunk, and a whole small file without Content-Range
        response = post_chunk(client_logged_in, payload(500), url=FILES, start=start, total=1000)
        refused_for_count(response, 1)
        assert response["Content-Type"] == "application/json"
        assert snapshot(redis_client) == before
    # A legacy upload counts like a tus one, and completing it frees its slot.
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 2
    data = payload(300)
    upload_id = post_chunk(client_logged_in, data[:100], url=FILES, start=0, total=300).json()["upload_id"]
    refused_for_count(t.create(3), 2)
    assert (
        post_chunk(client_logged_in, data[100:], url=FILES, start=100, total=300, upload_id=upload_id).status_code
        == 200
    )
    refused_for_count(t.create(3), 2)  # all bytes in, but not completed yet
    assert complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE).status_code == 200
    assert t.create(3).status_code == 201


# Bytes ----------------------------------------------------------------------------------------


def test_the_upload_past_the_byte_budget_is_429(t: Tus, other_client: Client, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_BYTES_PER_USER = 100
    first = t.new_upload(60)
    refused_for_bytes(t.create(41), 100)
    second = t.new_upload(40)
    refused_for_bytes(t.create(1), 100)
    tus(other_client).new_upload(100)  # per user
    assert t.patch(first, b"x" * 60, 0).status_code == 204  # completing frees its 60 bytes
    t.new_upload(60)
    refused_for_bytes(t.create(1), 100)
    assert t.delete(second).status_code == 204
    assert t.create(40).status_code == 201


def test_a_legacy_first_chunk_past_the_byte_budget_is_429_and_leaves_nothing(
    t: Tus, client_logged_in: Client, settings: Any, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_MAX_BYTES_PER_USER = 1000
    t.new_upload(600)
    before = snapshot(redis_client)
    refused_for_bytes(post_chunk(client_logged_in, payload(100), url=FILES, start=0, total=500), 1000)
    refused_for_bytes(post_chunk(client_logged_in, payload(500), url=FILES, start=None), 1000)
    assert snapshot(redis_client) == before
    assert post_chunk(client_logged_in, payload(100), url=FILES, start=0, total=400).status_code == 200


def _in_progress_bytes(redis_client: redis.Redis) -> int:
    """Bytes stored for the user's unfinished uploads (every data file in the upload dir)."""
    from tests.support.tus import upload_dir

    return sum(p.stat().st_size for p in upload_dir().iterdir() if "." not in p.name)


def test_a_deferred_length_upload_cannot_exceed_the_byte_budget(
    t: Tus, settings: Any, redis_client: redis.Redis
) -> None:
    """A deferred upload has no length to reserve, but its bytes count against the budget all the same."""
    settings.TUSBRIDGE_MAX_SIZE = 100_000
    settings.TUSBRIDGE_MAX_BYTES_PER_USER = 1000
    created = t.create(None, defer=True)
    if created.status_code == 429:
        return  # refusing deferred uploads outright keeps the budget too
    assert created.status_code == 201
    url = created["Location"]
    response = t.patch(url, payload(5000), 0)
    assert response.status_code in (204, 413, 429), response.content
    assert _in_progress_bytes(redis_client) <= 1000, (
        f"{_in_progress_bytes(redis_client)} bytes stored for a user whose uploads in progress may hold 1000"
    )
    # Nor by fixing the length afterwards.
    response = t.patch(url, b"", int(t.head(url)["Upload-Offset"]), HTTP_UPLOAD_LENGTH="50000")
    assert response.status_code in (400, 413, 429), response.status_code


# A refused chunk must not use up the user's share ---------------------------------------------


def _broken_first_chunk(client: Client) -> Any:
    """A first chunk whose base64-encoded file part turns out broken after some of it was stored."""
    boundary = "XxBoundaryxX"
    data = base64.b64encode(payload(3000)) + b"A"  # one character too many: "Incorrect padding" at the end
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.bin"\r\n'
            "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    sender = Client(raise_request_exception=False)
    sender.cookies = client.cookies
    return sender.post(
        FILES, body, content_type=f"multipart/form-data; boundary={boundary}", HTTP_CONTENT_RANGE="bytes 0-2999/3000"
    )


def test_a_refused_legacy_chunk_does_not_use_up_a_slot(
    client_logged_in: Client, settings: Any, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 1
    before = snapshot(redis_client)
    response = _broken_first_chunk(client_logged_in)
    assert 400 <= response.status_code < 500, response.status_code
    assert uploads_on_disk() == [], "the refused chunk's data file was left behind"
    assert snapshot(redis_client) == before, "the refused chunk left a lock or a reservation"
    # The user's only slot is still free.
    ok = post_chunk(client_logged_in, payload(10), url=FILES, start=None)
    assert ok.status_code == 200, ok.content
    assert get_user_model().objects.filter(username="alice").exists()
