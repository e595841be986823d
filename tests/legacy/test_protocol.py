"""The legacy wire protocol, one test (or more) per row of the spec's tables.

Chunk and completion requests go through Django's test client to the legacy
views at ``api/chunked_upload/`` and ``api/chunked_upload_complete/`` (as
django-chunked-upload's demo mounts them) and, for a few rows, through the
main endpoint ``files/`` + ``files/complete/``. Every response is checked for
status, exact JSON body and exact content type ``application/json``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.test import Client
from django.test.client import encode_multipart

from tests.support.data import md5, payload
from tests.support.legacy import (
    API_CHUNK,
    API_COMPLETE,
    FILES,
    FILES_COMPLETE,
    UNKNOWN_ID,
    UPLOAD_ID,
    assert_error,
    body_of,
    complete,
    get_record,
    parse_expires,
    post_chunk,
    upload_chunks,
    uploads_on_disk,
)
from tests.support.tus import data_of, move_expiry, redis_keys
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

BOTH_ENDPOINTS = pytest.mark.parametrize(
    ("chunk_url", "complete_url"),
    [(API_CHUNK, API_COMPLETE), (FILES, FILES_COMPLETE)],
    ids=["api", "files"],
)

NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided"}
NO_CHUNK = {"detail": "No chunk file was submitted"}
EXPIRED = {"detail": "Upload has expired"}
ALREADY_COMPLETE = {"detail": 'Upload has already been marked as "complete"'}
BAD_HEADERS = {"detail": "Error in request headers"}
SIZE_MISMATCH = {"detail": "File size doesn't match headers"}
BOTH_REQUIRED = {"detail": "Both 'upload_id' and 'md5' are required"}
ID_REQUIRED = {"detail": "'upload_id' is required"}
MD5_MISMATCH = {"detail": "md5 checksum does not match"}


def offsets_mismatch(offset: int) -> dict[str, object]:
    return {"detail": "Offsets do not match", "offset": offset}


def assert_not_found(response: object) -> None:
    """404 as JSON ``{"detail": ...}`` (the original answered Django's HTML page)."""
    assert response.status_code == 404, response.content  # type: ignore[attr-defined]
    body = body_of(response)  # type: ignore[arg-type]
    assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]


def started(client: Client, data: bytes, first: int, url: str = API_CHUNK) -> str:
    """An upload of ``data`` whose first ``first`` bytes arrived; returns its id."""
    response = post_chunk(client, data[:first], url=url, total=len(data))
    assert response.status_code == 200, response.content
    return str(response.json()["upload_id"])


def finished(client: Client, data: bytes, chunk_url: str = API_CHUNK, complete_url: str = API_COMPLETE) -> str:
    """A completed upload of ``data``; returns its id."""
    upload_id = upload_chunks(client, data, max(1, len(data) // 2), url=chunk_url)
    response = complete(client, upload_id, md5(data), url=complete_url)
    assert response.status_code == 200, response.content
    return upload_id


# Chunk request: not authenticated ----------------------------------------------


@BOTH_ENDPOINTS
def test_anonymous_chunk_is_403_and_leaves_nothing(
    client: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """Row 1: the default permission check refuses anonymous users with the spec's JSON."""
    response = post_chunk(client, b"x" * 10, url=chunk_url)
    assert_error(response, 403, NOT_AUTHENTICATED)
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_permission_is_checked_before_the_file_part(client: Client) -> None:
    """Order: not authenticated wins over a missing file part."""
    response = client.post(API_CHUNK, {"upload_id": UNKNOWN_ID})
    assert_error(response, 403, NOT_AUTHENTICATED)


# Chunk request: no file part ---------------------------------------------------


@BOTH_ENDPOINTS
def test_no_file_part_is_400(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """Row 2: a multipart POST without ``file`` is refused."""
    response = client_logged_in.post(chunk_url, {"something": "else"}, HTTP_CONTENT_RANGE="bytes 0-9/10")
    assert_error(response, 400, NO_CHUNK)


def test_file_under_another_field_name_is_400(client_logged_in: Client) -> None:
    """The part must be under ``field_name``: ``file`` by default."""
    response = post_chunk(client_logged_in, b"0123456789", field_name="the_file")
    assert_error(response, 400, NO_CHUNK)


def test_field_name_of_a_subclass(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A view with ``field_name = "the_file"`` (the demo) takes that part, and only that one."""
    refused = post_chunk(client_logged_in, b"0123456789", url="/variant/the_file/", field_name="file")
    assert_error(refused, 400, NO_CHUNK)
    accepted = post_chunk(client_logged_in, b"0123456789", url="/variant/the_file/", field_name="the_file")
    assert accepted.status_code == 200, accepted.content
    assert data_of(accepted.json()["upload_id"]) == b"0123456789"


def test_missing_file_part_is_reported_before_an_unknown_id(client_logged_in: Client) -> None:
    """Order: no file part (400) comes before looking the upload up (404)."""
    response = client_logged_in.post(API_CHUNK, {"upload_id": UNKNOWN_ID}, HTTP_CONTENT_RANGE="bytes 0-9/10")
    assert_error(response, 400, NO_CHUNK)


# Chunk request: unknown / another user's upload ------------------------------------


@BOTH_ENDPOINTS
def test_unknown_upload_id_is_json_404(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """Row 3: an unknown id answers 404 as JSON ``{"detail": ...}``."""
    response = post_chunk(client_logged_in, b"0123456789", url=chunk_url, upload_id=UNKNOWN_ID)
    assert_not_found(response)
    assert uploads_on_disk() == []


@BOTH_ENDPOINTS
def test_other_users_upload_id_is_404_on_chunk(
    client_logged_in: Client, other_client: Client, chunk_url: str, complete_url: str
) -> None:
    """Row 3: another user's upload is not found, and its bytes are untouched."""
    data = payload(20)
    upload_id = started(client_logged_in, data, 10, url=chunk_url)
    response = post_chunk(other_client, data[10:], url=chunk_url, start=10, total=20, upload_id=upload_id)
    assert_not_found(response)
    assert data_of(upload_id) == data[:10]


def test_unknown_id_is_reported_before_a_bad_header(client_logged_in: Client) -> None:
    """Order: 404 before the header check of ``fail_if_no_header``."""
    response = post_chunk(client_logged_in, b"0123456789", url="/variant/strict/", upload_id=UNKNOWN_ID, start=None)
    assert_not_found(response)


# Chunk request: expired ---------------------------------------------------------


def test_expired_upload_is_410(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Row 4: a chunk for an upload past its expiry time answers 410, nothing is written."""
    data = payload(20)
    upload_id = started(client_logged_in, data, 10)
    move_expiry(redis_client, upload_id, time.time() - 1)
    response = post_chunk(client_logged_in, data[10:], start=10, total=20, upload_id=upload_id)
    assert_error(response, 410, EXPIRED)
    assert data_of(upload_id) == data[:10]


def test_expired_is_reported_before_an_offset_mismatch(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Order: 410 comes before the offset check."""
    data = payload(20)
    upload_id = started(client_logged_in, data, 10)
    move_expiry(redis_client, upload_id, time.time() - 1)
    response = post_chunk(client_logged_in, data[5:], start=5, total=20, upload_id=upload_id)
    assert_error(response, 410, EXPIRED)


def test_expired_is_reported_before_already_complete(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Order: a complete upload past its expiry time is 410 (expired is checked first)."""
    data = payload(20)
    upload_id = finished(client_logged_in, data)
    move_expiry(redis_client, upload_id, time.time() - 1, index=False)
    response = post_chunk(client_logged_in, b"x", start=20, total=21, upload_id=upload_id)
    assert_error(response, 410, EXPIRED)


# Chunk request: already complete ------------------------------------------------


@BOTH_ENDPOINTS
def test_chunk_for_a_complete_upload_is_400(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """Row 5: a finished upload takes no more chunks, and its file is unchanged."""
    data = payload(20)
    upload_id = finished(client_logged_in, data, chunk_url, complete_url)
    response = post_chunk(client_logged_in, b"more", url=chunk_url, start=20, total=24, upload_id=upload_id)
    assert_error(response, 400, ALREADY_COMPLETE)
    assert data_of(upload_id) == data


def test_already_complete_is_reported_before_an_offset_mismatch(client_logged_in: Client) -> None:
    """Order: "already complete" before the offset check."""
    data = payload(20)
    upload_id = finished(client_logged_in, data)
    response = post_chunk(client_logged_in, data[:5], start=0, total=20, upload_id=upload_id)
    assert_error(response, 400, ALREADY_COMPLETE)


def test_already_complete_is_reported_before_a_bad_header(client_logged_in: Client) -> None:
    """Order: "already complete" before the header check of ``fail_if_no_header``."""
    data = payload(20)
    upload_id = finished(client_logged_in, data)
    response = post_chunk(client_logged_in, b"x", url="/variant/strict/", upload_id=upload_id, start=None)
    assert_error(response, 400, ALREADY_COMPLETE)


# Chunk request: headers -------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "bytes 0-9", "bytes=0-9/10", "bytes 0-9/*", "items 0-9/10"])
def test_fail_if_no_header_refuses_a_missing_or_bad_header(
    client_logged_in: Client, redis_client: redis.Redis, header: str | None
) -> None:
    """Row 6: with ``fail_if_no_header = True`` a missing/non-matching Content-Range is 400; nothing stays."""
    response = post_chunk(client_logged_in, b"0123456789", url="/variant/strict/", start=None, range_header=header)
    assert_error(response, 400, BAD_HEADERS)
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_fail_if_no_header_accepts_a_valid_header(client_logged_in: Client) -> None:
    """The strict view still takes a proper chunk."""
    response = post_chunk(client_logged_in, b"0123456789", url="/variant/strict/", start=0, total=10)
    assert response.status_code == 200, response.content
    assert body_of(response)["offset"] == 10


@BOTH_ENDPOINTS
@pytest.mark.parametrize("header", [None, "bytes=0-9/10", "garbage"])
def test_small_file_without_content_range_is_the_whole_upload(
    client_logged_in: Client, chunk_url: str, complete_url: str, header: str | None
) -> None:
    """No (or a non-matching) header by default: the part is the whole file ``0..size-1/size``."""
    data = payload(777)
    response = post_chunk(client_logged_in, data, url=chunk_url, start=None, range_header=header, filename="small.txt")
    assert response.status_code == 200, response.content
    body = body_of(response)
    assert body["offset"] == 777
    upload_id = body["upload_id"]
    assert data_of(upload_id) == data
    done = complete(client_logged_in, upload_id, md5(data), url=complete_url)
    assert done.status_code == 200, done.content
    assert body_of(done) == {}


def test_small_file_upload_is_complete_in_size_so_no_more_chunks_fit(client_logged_in: Client) -> None:
    """The whole-file request fixed the total: a following chunk past it is refused."""
    response = post_chunk(client_logged_in, b"abc", start=None)
    upload_id = response.json()["upload_id"]
    more = post_chunk(client_logged_in, b"def", start=3, total=6, upload_id=upload_id)
    assert more.status_code == 400
    assert data_of(upload_id) == b"abc"


# Chunk request: max bytes -----------------------------------------------------------


def test_total_over_max_bytes_is_400(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Row 7: TOTAL > ``max_bytes`` (class attribute) is refused with the limit in the message."""
    response = post_chunk(client_logged_in, b"x" * 10, url="/variant/limited/", start=0, total=1001)
    assert_error(response, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_total_at_max_bytes_is_accepted(client_logged_in: Client) -> None:
    """TOTAL == ``max_bytes`` is fine."""
    response = post_chunk(client_logged_in, b"x" * 10, url="/variant/limited/", start=0, total=1000)
    assert response.status_code == 200, response.content


def test_whole_file_over_max_bytes_is_400(client_logged_in: Client) -> None:
    """Without a header the part's size is the total and is checked against the limit."""
    response = post_chunk(client_logged_in, b"x" * 1001, url="/variant/limited/", start=None)
    assert_error(response, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})
    assert uploads_on_disk() == []


def test_max_bytes_is_reported_before_an_offset_mismatch(client_logged_in: Client) -> None:
    """Order: the size limit before the offset check."""
    response = post_chunk(client_logged_in, b"x" * 10, url="/variant/limited/", start=5, total=2000)
    assert_error(response, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})


# Chunk request: offsets -----------------------------------------------------------------


@BOTH_ENDPOINTS
def test_offset_mismatch_is_400_with_the_server_offset(
    client_logged_in: Client, chunk_url: str, complete_url: str
) -> None:
    """Row 8: START != server offset answers the offset; the data is untouched."""
    data = payload(30)
    upload_id = started(client_logged_in, data, 10, url=chunk_url)
    response = post_chunk(client_logged_in, data[15:25], url=chunk_url, start=15, total=30, upload_id=upload_id)
    assert_error(response, 400, offsets_mismatch(10))
    assert data_of(upload_id) == data[:10]


def test_first_chunk_not_at_zero_is_an_offset_mismatch(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A new upload starts at 0: a first chunk at 10 answers offset 0 and creates nothing."""
    response = post_chunk(client_logged_in, b"x" * 10, start=10, total=30)
    assert_error(response, 400, offsets_mismatch(0))
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_offset_mismatch_is_reported_before_a_size_mismatch(client_logged_in: Client) -> None:
    """Order: offsets before the part size."""
    data = payload(30)
    upload_id = started(client_logged_in, data, 10)
    response = post_chunk(client_logged_in, b"x" * 3, range_header="bytes 20-29/30", upload_id=upload_id)
    assert_error(response, 400, offsets_mismatch(10))


# Chunk request: part size -------------------------------------------------------------


@pytest.mark.parametrize("size", [9, 11])
def test_part_size_not_matching_the_header_is_400(
    client_logged_in: Client, redis_client: redis.Redis, size: int
) -> None:
    """Row 9: a part shorter or longer than END-START+1 is refused and nothing is kept."""
    data = payload(30)
    upload_id = started(client_logged_in, data, 10)
    response = post_chunk(client_logged_in, b"y" * size, range_header="bytes 10-19/30", upload_id=upload_id)
    assert_error(response, 400, SIZE_MISMATCH)
    assert data_of(upload_id) == data[:10]
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == 10


# Chunk request: success --------------------------------------------------------------------


@BOTH_ENDPOINTS
def test_successful_chunks_answer_id_offset_and_fixed_expiry(
    client_logged_in: Client, redis_client: redis.Redis, settings: object, chunk_url: str, complete_url: str
) -> None:
    """Row 10: exact keys, 32-hex id, offset, ``expires`` = creation + delta in milliseconds + Z, not sliding."""
    data = payload(300)
    before = datetime.now(UTC)
    first = post_chunk(client_logged_in, data[:100], url=chunk_url, total=300)
    after = datetime.now(UTC)
    assert first.status_code == 200, first.content
    body = body_of(first)
    assert set(body) == {"upload_id", "offset", "expires"}
    assert UPLOAD_ID.fullmatch(body["upload_id"])
    assert body["offset"] == 100
    expires = parse_expires(body["expires"])
    delta = timedelta(days=1)  # CHUNKED_UPLOAD_EXPIRATION_DELTA's default
    # DjangoJSONEncoder truncates to milliseconds.
    assert before + delta - timedelta(milliseconds=1) <= expires <= after + delta
    record = get_record(redis_client, body["upload_id"])
    assert record is not None and record.state is State.UPLOADING and record.offset == 100

    second = post_chunk(
        client_logged_in, data[100:200], url=chunk_url, start=100, total=300, upload_id=body["upload_id"]
    )
    assert second.status_code == 200, second.content
    assert body_of(second) == {"upload_id": body["upload_id"], "offset": 200, "expires": body["expires"]}
    assert data_of(body["upload_id"]) == data[:200]


def test_first_chunk_filename_becomes_the_upload_filename(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """The first chunk's multipart filename is the upload's ``filename``; later names do not change it."""
    data = payload(20)
    first = post_chunk(client_logged_in, data[:10], total=20, filename="report 2024.pdf")
    upload_id = first.json()["upload_id"]
    post_chunk(client_logged_in, data[10:], start=10, total=20, upload_id=upload_id, filename="blob")
    record = get_record(redis_client, upload_id)
    assert record is not None and record.filename == "report 2024.pdf"


# Other methods ----------------------------------------------------------------------------


@pytest.mark.parametrize("url", [API_CHUNK, API_COMPLETE, FILES_COMPLETE])
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_other_methods_are_405(client_logged_in: Client, url: str, method: str) -> None:
    """Both legacy URLs are POST-only."""
    response = getattr(client_logged_in, method)(url)
    assert response.status_code == 405
    assert response["Allow"] == "POST"


# Completion request ----------------------------------------------------------------------------


@BOTH_ENDPOINTS
@pytest.mark.parametrize("fields", [{}, {"upload_id": "x"}, {"md5": "x"}, {"upload_id": "", "md5": ""}])
def test_completion_needs_both_fields(
    client_logged_in: Client, chunk_url: str, complete_url: str, fields: dict[str, str]
) -> None:
    """Missing ``upload_id`` or ``md5``: 400 with the spec's message."""
    response = client_logged_in.post(complete_url, fields)
    assert_error(response, 400, BOTH_REQUIRED)


def test_completion_fields_may_be_multipart(client_logged_in: Client) -> None:
    """The completion POST may be multipart as well as urlencoded."""
    data = payload(50)
    upload_id = upload_chunks(client_logged_in, data, 20)
    body = encode_multipart("BoUnDaRy", {"upload_id": upload_id, "md5": md5(data)})
    response = client_logged_in.post(API_COMPLETE, body, content_type="multipart/form-data; boundary=BoUnDaRy")
    assert response.status_code == 200, response.content
    assert body_of(response) == {}


@pytest.mark.parametrize("fields", [{}, {"md5": "abc"}, {"upload_id": ""}])
def test_completion_without_md5_check_needs_only_the_id(client_logged_in: Client, fields: dict[str, str]) -> None:
    """``do_md5_check = False``: only ``upload_id`` is required, with its own message."""
    response = client_logged_in.post("/variant/nomd5/", fields)
    assert_error(response, 400, ID_REQUIRED)


def test_completion_without_md5_check_completes(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """``do_md5_check = False`` completes on the id alone, even with a wrong md5."""
    data = payload(50)
    upload_id = upload_chunks(client_logged_in, data, 20)
    response = client_logged_in.post("/variant/nomd5/", {"upload_id": upload_id, "md5": "not-checked"})
    assert response.status_code == 200, response.content
    assert body_of(response) == {}
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.COMPLETE


@BOTH_ENDPOINTS
def test_completion_of_unknown_id_is_json_404(client_logged_in: Client, chunk_url: str, complete_url: str) -> None:
    """An unknown id: 404 as JSON."""
    assert_not_found(complete(client_logged_in, UNKNOWN_ID, md5(b""), url=complete_url))


@BOTH_ENDPOINTS
def test_completion_of_other_users_upload_is_404(
    client_logged_in: Client, other_client: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """Another user's upload: 404, and it stays incomplete."""
    data = payload(40)
    upload_id = upload_chunks(client_logged_in, data, 40, url=chunk_url)
    assert_not_found(complete(other_client, upload_id, md5(data), url=complete_url))
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.UPLOADING


@BOTH_ENDPOINTS
def test_md5_mismatch_is_400_and_a_correct_retry_completes(
    client_logged_in: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """A wrong md5 is refused (upload stays incomplete); the right one then completes with ``{}``."""
    data = payload(1000)
    upload_id = upload_chunks(client_logged_in, data, 300, url=chunk_url)
    wrong = complete(client_logged_in, upload_id, md5(data + b"x"), url=complete_url)
    assert_error(wrong, 400, MD5_MISMATCH)
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.UPLOADING
    right = complete(client_logged_in, upload_id, md5(data), url=complete_url)
    assert right.status_code == 200, right.content
    assert body_of(right) == {}
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.COMPLETE and record.offset == 1000
    assert data_of(upload_id) == data


def test_md5_is_compared_as_lowercase_hex(client_logged_in: Client) -> None:
    """The md5 is lowercase hex: the uppercase form does not match."""
    data = payload(64)
    upload_id = upload_chunks(client_logged_in, data, 64)
    response = complete(client_logged_in, upload_id, md5(data).upper())
    assert_error(response, 400, MD5_MISMATCH)


@BOTH_ENDPOINTS
def test_anonymous_completion_is_403(client: Client, chunk_url: str, complete_url: str) -> None:
    """The permission check runs for completion too, before anything else."""
    response = client.post(complete_url, {})
    assert_error(response, 403, NOT_AUTHENTICATED)
