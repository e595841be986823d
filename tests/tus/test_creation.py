"""tus creation, creation-with-upload and creation-defer-length, plus Upload-Expires.

Every refused creation is checked to have left nothing behind: no Redis key
under the test's prefix and no file in the upload directory.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.test import Client

from tests.support.data import b64, upload_id_of
from tests.support.tus import (
    COLLECTION,
    OFFSET_CT,
    TUS_VERSION,
    Completion,
    Tus,
    data_of,
    data_path,
    imf_fixdate,
    move_expiry,
    record_store,
    snapshot,
)

pytestmark = pytest.mark.django_db


def assert_nothing_created(client: redis.Redis) -> None:
    """No record, no index entry, no data file."""
    state = snapshot(client)
    assert state.keys == {}
    assert state.files == {}


# POST ------------------------------------------------------------------------------


def test_post_creates_an_upload_with_an_absolute_location(t: Tus, redis_client: redis.Redis) -> None:
    response = t.create(100)
    assert response.status_code == 201
    assert response["Tus-Resumable"] == TUS_VERSION
    location = urlsplit(response["Location"])
    assert location.scheme == "http"
    assert location.netloc == "testserver"
    assert location.path.startswith(COLLECTION)
    upload_id = upload_id_of(response["Location"])
    assert upload_id
    assert data_of(upload_id) == b""
    record = record_store(redis_client).get(upload_id)
    assert record is not None and record.length == 100 and record.offset == 0
    # The new resource has an implicit offset of 0, reachable through the Location.
    head = t.head(response["Location"])
    assert head.status_code == 200
    assert head["Upload-Offset"] == "0"
    assert head["Upload-Length"] == "100"


def test_each_post_gets_its_own_url(t: Tus) -> None:
    urls = {t.new_upload(5) for _ in range(5)}
    assert len(urls) == 5
    ids = {upload_id_of(url) for url in urls}
    assert len(ids) == 5
    assert all(data_of(upload_id) == b"" for upload_id in ids)


def test_post_over_https_answers_an_https_location(client_logged_in: Client) -> None:
    response = client_logged_in.post(COLLECTION, secure=True, HTTP_TUS_RESUMABLE=TUS_VERSION, HTTP_UPLOAD_LENGTH="5")
    assert response.status_code == 201
    assert response["Location"].startswith("https://testserver/files/")


def test_upload_length_above_max_size_is_413_and_creates_nothing(
    t: Tus, settings: Any, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 1000
    response = t.create(1001)
    assert response.status_code == 413
    assert response["Tus-Resumable"] == TUS_VERSION
    assert "Location" not in response
    assert_nothing_created(redis_client)
    assert t.create(1000).status_code == 201


def test_upload_with_body_above_max_size_is_413_and_creates_nothing(
    t: Tus, settings: Any, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 10
    response = t.create(11, body=b"x" * 11)
    assert response.status_code == 413
    assert_nothing_created(redis_client)


def test_zero_length_upload_is_complete_at_once(t: Tus, completions: list[Completion]) -> None:
    """Upload-Length: 0 is an empty file, complete on creation without any PATCH."""
    response = t.create(0)
    assert response.status_code == 201
    url = response["Location"]
    head = t.head(url)
    assert head.status_code == 200
    assert head["Upload-Offset"] == "0"
    assert head["Upload-Length"] == "0"
    assert len(completions) == 1
    assert completions[0].upload.id == upload_id_of(url)
    assert completions[0].content == b""
    # An empty PATCH at the end changes nothing and completes nothing again.
    assert t.patch(url, b"", 0).status_code == 204
    assert t.patch(url, b"x", 0).status_code >= 400
    assert len(completions) == 1


def test_post_without_any_length_header_is_400(t: Tus, redis_client: redis.Redis) -> None:
    response = t.create(None)
    assert response.status_code == 400
    assert response["Tus-Resumable"] == TUS_VERSION
    assert_nothing_created(redis_client)


@pytest.mark.parametrize("length", ["-1", "abc", "1.5", "", "+5", "0x10", "1e3", "99999999999999999999"])
def test_malformed_upload_length_is_400(t: Tus, redis_client: redis.Redis, length: str) -> None:
    """Upload-Length MUST be a non-negative integer."""
    response = t.create(length)
    assert response.status_code == 400
    assert_nothing_created(redis_client)


@pytest.mark.parametrize("value", ["0", "2", "true", "yes", ""])
def test_upload_defer_length_other_than_1_is_400(t: Tus, redis_client: redis.Redis, value: str) -> None:
    response = t.create(None, defer=value)
    assert response.status_code == 400
    assert_nothing_created(redis_client)


def test_upload_length_together_with_defer_length_is_400(t: Tus, redis_client: redis.Redis) -> None:
    response = t.create(10, defer=True)
    assert response.status_code == 400
    assert_nothing_created(redis_client)


# Upload-Metadata -------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential",  # the spec's example
        "is_confidential",
        f"filename {b64('résumé ☃.txt')},filetype {b64('text/plain')}",
        f"blob {b64(bytes(range(256)))}",
        "empty ,flag,other dmFs",
        f"x-key_1.2~ {b64('v')}",
        f"a {b64('1')},b {b64('22')},c {b64('333')},d,e {b64('')}",
    ],
)
def test_metadata_is_echoed_byte_for_byte_on_head(t: Tus, metadata: str) -> None:
    """Responses to HEAD MUST include Upload-Metadata as the Client sent it."""
    url = t.new_upload(10, metadata=metadata)
    head = t.head(url)
    assert head.status_code == 200
    assert head["Upload-Metadata"] == metadata


def test_no_metadata_means_no_upload_metadata_header(t: Tus) -> None:
    assert "Upload-Metadata" not in t.head(t.new_upload(10))


def test_an_empty_metadata_header_carries_no_metadata(t: Tus, redis_client: redis.Redis) -> None:
    """Some clients (tuspy) send an empty Upload-Metadata; it holds no pairs to echo."""
    url = t.new_upload(10, metadata="")
    assert "Upload-Metadata" not in t.head(url)
    record = record_store(redis_client).get(upload_id_of(url))
    assert record is not None and record.metadata == {}


def test_metadata_is_decoded_into_the_record(t: Tus, redis_client: redis.Redis) -> None:
    metadata = f"filename {b64('plan ☃.pdf')},is_confidential,filetype {b64('application/pdf')}"
    url = t.new_upload(10, metadata=metadata)
    record = record_store(redis_client).get(upload_id_of(url))
    assert record is not None
    assert record.metadata_raw == metadata
    assert record.metadata == {"filename": "plan ☃.pdf", "is_confidential": None, "filetype": "application/pdf"}
    assert record.filename == "plan ☃.pdf"


@pytest.mark.parametrize(
    "metadata",
    [
        "filename !!!!",  # not base64 at all
        "filename d29ybGQ",  # unpadded
        "filename d29y bGQ=",  # a space inside the value
        "filename d29ybGQ=x",  # garbage after the padding
        ",filename d29ybGQ=",  # empty key first
        "filename d29ybGQ=,",  # empty key last
        "a dmFs,,b dmFs",  # empty key between
        "a dmFs,a dmFs",  # duplicate key
        "a,a",  # duplicate key without values
        "a dmFs,b,a",  # duplicate key further on
    ],
)
def test_invalid_metadata_is_400_and_creates_nothing(t: Tus, redis_client: redis.Redis, metadata: str) -> None:
    response = t.create(10, metadata=metadata)
    assert response.status_code == 400
    assert response["Tus-Resumable"] == TUS_VERSION
    assert_nothing_created(redis_client)


def test_invalid_metadata_with_a_body_writes_nothing(t: Tus, redis_client: redis.Redis) -> None:
    response = t.create(5, metadata="a dmFs,a dmFs", body=b"hello")
    assert response.status_code == 400
    assert_nothing_created(redis_client)


# Upload-Expires ----------------------------------------------------------------------


def test_post_announces_upload_expires_in_imf_fixdate(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_EXPIRY = timedelta(hours=2)
    before = time.time()
    response = t.create(10)
    after = time.time()
    assert response.status_code == 201
    expires = imf_fixdate(response["Upload-Expires"])
    assert before + 7200 - 1 <= expires <= after + 7200 + 1


def test_post_with_upload_announces_upload_expires(t: Tus) -> None:
    response = t.create(10, body=b"abc")
    assert response.status_code == 201
    imf_fixdate(response["Upload-Expires"])


def test_every_patch_announces_upload_expires(t: Tus, settings: Any) -> None:
    """Upload-Expires MUST be in every PATCH response while the upload is going to expire."""
    settings.TUSBRIDGE_EXPIRY = timedelta(hours=3)
    url = t.new_upload(12)
    for offset in range(0, 12, 4):
        if offset + 4 == 12:
            break
        before = time.time()
        response = t.patch(url, b"abcd", offset)
        after = time.time()
        assert response.status_code == 204
        expires = imf_fixdate(response["Upload-Expires"])
        assert before + 3 * 3600 - 1 <= expires <= after + 3 * 3600 + 1
    head = t.head(url)
    imf_fixdate(head["Upload-Expires"])


def test_patch_reports_the_expiry_it_just_set(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    """A PATCH extends the expiry; its Upload-Expires must say the new time, as HEAD does after."""
    settings.TUSBRIDGE_EXPIRY = timedelta(days=1)
    url = t.new_upload(10)
    # The upload has been idle for most of its lifetime: 100 s are left.
    move_expiry(redis_client, upload_id_of(url), time.time() + 100)
    before = time.time()
    response = t.patch(url, b"abc", 0)
    assert response.status_code == 204
    head = t.head(url)
    stored = record_store(redis_client).get(upload_id_of(url))
    assert stored is not None and stored.expires_at >= before + 86400 - 1  # the expiry did move
    assert imf_fixdate(response["Upload-Expires"]) == imf_fixdate(head["Upload-Expires"])
    assert imf_fixdate(response["Upload-Expires"]) >= int(before) + 86400 - 1


# creation-with-upload --------------------------------------------------------------


def test_post_with_a_first_chunk(t: Tus) -> None:
    response = t.create(11, body=b"hello")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "5"
    url = response["Location"]
    assert data_of(upload_id_of(url)) == b"hello"
    assert t.offset(url) == 5
    patch = t.patch(url, b" world", 5)
    assert patch.status_code == 204
    assert data_of(upload_id_of(url)) == b"hello world"


def test_post_with_the_whole_upload_completes_it(t: Tus, completions: list[Completion]) -> None:
    response = t.create(5, body=b"hello")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "5"
    assert len(completions) == 1
    assert completions[0].content == b"hello"
    head = t.head(response["Location"])
    assert head["Upload-Offset"] == "5"
    assert head["Upload-Length"] == "5"


def test_post_with_a_body_longer_than_the_length_creates_nothing(t: Tus, redis_client: redis.Redis) -> None:
    response = t.create(3, body=b"hello")
    assert response.status_code == 413
    assert_nothing_created(redis_client)


def test_post_with_a_first_chunk_of_a_deferred_upload(t: Tus) -> None:
    response = t.create(None, defer=True, body=b"hello")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "5"
    head = t.head(response["Location"])
    assert head["Upload-Offset"] == "5"
    assert head["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head


def test_post_with_an_empty_offset_body(t: Tus) -> None:
    response = t.create(10, body=b"", content_type=OFFSET_CT)
    assert response.status_code == 201
    assert response["Upload-Offset"] == "0"


def test_post_body_without_the_offset_content_type_is_not_stored(t: Tus) -> None:
    """Only application/offset+octet-stream bodies are upload data."""
    response = t.create(10, body=b"hello", content_type="text/plain")
    assert response.status_code == 201
    url = response["Location"]
    assert data_of(upload_id_of(url)) == b""
    assert t.offset(url) == 0


# creation-defer-length ------------------------------------------------------------


def test_deferred_length_is_set_by_the_first_patch_that_sends_it(t: Tus) -> None:
    url = t.new_upload(None)
    assert t.head(url)["Upload-Defer-Length"] == "1"
    response = t.patch(url, b"hello", 0, HTTP_UPLOAD_LENGTH="11")
    assert response.status_code == 204
    head = t.head(url)
    assert head["Upload-Length"] == "11"
    assert "Upload-Defer-Length" not in head
    assert head["Upload-Offset"] == "5"


def test_deferred_length_cannot_change_once_set(t: Tus) -> None:
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0, HTTP_UPLOAD_LENGTH="11").status_code == 204
    response = t.patch(url, b" world", 5, HTTP_UPLOAD_LENGTH="12")
    assert response.status_code == 400
    assert data_of(upload_id_of(url)) == b"hello"
    assert t.head(url)["Upload-Length"] == "11"
    # Repeating the same value is fine.
    assert t.patch(url, b" world", 5, HTTP_UPLOAD_LENGTH="11").status_code == 204
    assert data_of(upload_id_of(url)) == b"hello world"


def test_deferred_upload_takes_chunks_then_its_length(t: Tus, completions: list[Completion]) -> None:
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0).status_code == 204
    assert t.patch(url, b" wor", 5).status_code == 204
    head = t.head(url)
    assert head["Upload-Offset"] == "9"
    assert head["Upload-Defer-Length"] == "1"
    assert completions == []
    final = t.patch(url, b"ld", 9, HTTP_UPLOAD_LENGTH="11")
    assert final.status_code == 204
    assert final["Upload-Offset"] == "11"
    assert len(completions) == 1
    assert completions[0].content == b"hello world"


def test_deferred_length_equal_to_the_offset_completes_with_an_empty_patch(
    t: Tus, completions: list[Completion]
) -> None:
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0).status_code == 204
    response = t.patch(url, b"", 5, HTTP_UPLOAD_LENGTH="5")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "5"
    assert t.head(url)["Upload-Length"] == "5"
    assert len(completions) == 1


def test_deferred_length_below_the_offset_is_400(t: Tus) -> None:
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0).status_code == 204
    response = t.patch(url, b"", 5, HTTP_UPLOAD_LENGTH="3")
    assert response.status_code == 400
    head = t.head(url)
    assert head["Upload-Defer-Length"] == "1"
    assert head["Upload-Offset"] == "5"


def test_deferred_length_above_max_size_is_413(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 100
    url = t.new_upload(None)
    response = t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="101")
    assert response.status_code == 413
    assert data_of(upload_id_of(url)) == b""
    assert t.head(url)["Upload-Defer-Length"] == "1"


def test_deferred_upload_cannot_grow_past_max_size(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 8
    url = t.new_upload(None)
    assert t.patch(url, b"12345", 0).status_code == 204
    response = t.patch(url, b"6789", 5)
    assert response.status_code == 413
    assert data_of(upload_id_of(url)) == b"12345"
    assert t.offset(url) == 5


def test_refused_patch_at_the_wrong_offset_does_not_fix_the_length(t: Tus, redis_client: redis.Redis) -> None:
    """On an offset mismatch the Server MUST answer 409 without modifying the upload: not even its length."""
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"world", 3, HTTP_UPLOAD_LENGTH="10")
    assert response.status_code == 409
    assert response["Upload-Offset"] == "5"
    head = t.head(url)
    assert head["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head
    assert snapshot(redis_client).keys == before.keys


@pytest.mark.real_stores  # looks at the files in the upload directory
def test_deferred_creation_leaves_the_data_file_empty(t: Tus) -> None:
    url = t.new_upload(None)
    assert data_path(upload_id_of(url)).stat().st_size == 0


def test_refused_overlong_patch_does_not_strand_a_deferred_upload(t: Tus, completions: list[Completion]) -> None:
    """A PATCH refused for running past its own Upload-Length must not leave the length behind.

    Otherwise HEAD shows Upload-Offset == Upload-Length, the client takes the
    upload for finished, and it never completes (no signal; it expires).
    """
    url = t.new_upload(None)
    assert t.patch(url, b"hello", 0).status_code == 204
    response = t.patch(url, b"xyz", 5, HTTP_UPLOAD_LENGTH="5")
    assert response.status_code == 413
    head = t.head(url)
    stranded = head.get("Upload-Length") == head["Upload-Offset"] and not completions
    assert not stranded, "the upload looks finished to a client but was never completed"
    assert head["Upload-Defer-Length"] == "1"
    assert data_of(upload_id_of(url)) == b"hello"
