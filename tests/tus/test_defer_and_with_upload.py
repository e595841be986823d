"""The creation-defer-length and creation-with-upload extensions.

In-process tests use Django's test client against the private Redis and a real
upload directory; two live tests send creation-with-upload bodies larger than
one read (TUSBRIDGE_READ_SIZE) and chunked through gunicorn. Refused requests
are checked to have changed nothing on Redis and on disk.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from django.test import Client

from tests.support.data import file_sha256, payload, sha256, upload_id_of
from tests.support.live import OFFSET_CT, auth, data_path, head_offset, record_of
from tests.support.live import data_of as live_data_of
from tests.support.servers import GunicornServer
from tests.support.tus import COLLECTION, Tus, data_of, file_size, imf_fixdate, record_key, snapshot, tus

pytestmark = pytest.mark.django_db


def field(client: redis.Redis, upload_id: str, name: str) -> str | None:
    value = client.hget(record_key(upload_id), name)
    return None if value is None else value.decode()


def test_options_advertises_both_extensions(client: Client) -> None:
    """OPTIONS announces creation-defer-length and creation-with-upload (with creation)."""
    response = tus(client, version=None).options(COLLECTION)
    extensions = [e.strip() for e in response["Tus-Extension"].split(",")]
    assert "creation-defer-length" in extensions
    assert "creation-with-upload" in extensions
    assert "creation" in extensions  # creation-with-upload depends on it


# creation-defer-length -------------------------------------------------------------


def test_deferred_creation_and_head(t: Tus, redis_client: redis.Redis) -> None:
    """``Upload-Defer-Length: 1`` creates an upload without a length; HEAD says so and has no Upload-Length."""
    response = t.create(None, defer=True)
    assert response.status_code == 201
    url = response["Location"]
    head = t.head(url)
    assert head.status_code == 200
    assert head["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head
    assert head["Upload-Offset"] == "0"
    assert field(redis_client, upload_id_of(url), "length") == ""


@pytest.mark.parametrize("value", ["0", "2", "true", "yes", "01", " 1", "1 ", "1,1", ""])
def test_defer_length_other_than_1_is_400(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """Any Upload-Defer-Length value other than ``1``: 400, nothing created."""
    before = snapshot(redis_client)
    response = t.create(None, defer=value) if value else t.create(None, HTTP_UPLOAD_DEFER_LENGTH="")
    assert response.status_code == 400, response.content
    assert snapshot(redis_client) == before


def test_defer_length_with_upload_length_is_400(t: Tus, redis_client: redis.Redis) -> None:
    """Upload-Length and Upload-Defer-Length together: 400, nothing created."""
    before = snapshot(redis_client)
    assert t.create(10, defer=True).status_code == 400
    assert snapshot(redis_client) == before


def test_creation_without_length_or_defer_is_400(t: Tus, redis_client: redis.Redis) -> None:
    """Neither Upload-Length nor Upload-Defer-Length: 400, nothing created."""
    before = snapshot(redis_client)
    assert t.create(None).status_code == 400
    assert snapshot(redis_client) == before


def test_defer_header_stays_until_length_is_known(t: Tus, redis_client: redis.Redis) -> None:
    """PATCHes without Upload-Length keep the length deferred; HEAD keeps saying Upload-Defer-Length: 1."""
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0).status_code == 204
    assert t.patch(url, b"defg", 3).status_code == 204
    head = t.head(url)
    assert head["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head
    assert head["Upload-Offset"] == "7"
    assert data_of(upload_id_of(url)) == b"abcdefg"
    assert field(redis_client, upload_id_of(url), "state") == "uploading"


def test_first_patch_with_upload_length_sets_it(t: Tus, redis_client: redis.Redis) -> None:
    """The PATCH that carries Upload-Length fixes the length; HEAD then has Upload-Length and no defer header."""
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = t.patch(url, b"de", 3, HTTP_UPLOAD_LENGTH="10")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "5"
    head = t.head(url)
    assert head["Upload-Length"] == "10"
    assert "Upload-Defer-Length" not in head
    assert field(redis_client, upload_id_of(url), "length") == "10"
    # The length now bounds the upload: more than fits is refused.
    assert t.patch(url, b"x" * 6, 5).status_code == 413
    assert data_of(upload_id_of(url)) == b"abcde"
    done = t.patch(url, b"fghij", 5)
    assert done.status_code == 204
    assert field(redis_client, upload_id_of(url), "state") == "complete"
    assert data_of(upload_id_of(url)) == b"abcdefghij"


def test_length_set_on_the_very_first_patch(t: Tus, redis_client: redis.Redis) -> None:
    """Upload-Length on the first PATCH (offset 0) with the whole body completes the upload."""
    url = t.new_upload(None)
    response = t.patch(url, b"hello", 0, HTTP_UPLOAD_LENGTH="5")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "5"
    assert field(redis_client, upload_id_of(url), "state") == "complete"
    head = t.head(url)
    assert head["Upload-Length"] == head["Upload-Offset"] == "5"


def test_length_equal_to_offset_completes_with_an_empty_patch(t: Tus, redis_client: redis.Redis) -> None:
    """Announcing a length equal to the bytes already sent (empty body) completes the upload."""
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = t.patch(url, b"", 3, HTTP_UPLOAD_LENGTH="3")
    assert response.status_code == 204
    assert field(redis_client, upload_id_of(url), "state") == "complete"
    assert t.head(url)["Upload-Length"] == "3"


def test_a_different_length_later_is_400(t: Tus, redis_client: redis.Redis) -> None:
    """Once set the length MUST NOT be changed: a later different Upload-Length is 400 and writes nothing."""
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="10").status_code == 204
    before = snapshot(redis_client)
    for other in ("11", "9", "3", "0"):
        response = t.patch(url, b"de", 3, HTTP_UPLOAD_LENGTH=other)
        assert response.status_code == 400, (other, response.status_code)
        assert snapshot(redis_client) == before
    assert t.head(url)["Upload-Length"] == "10"
    assert data_of(upload_id_of(url)) == b"abc"


def test_the_same_length_again_is_accepted(t: Tus, redis_client: redis.Redis) -> None:
    """Repeating the length already set is fine."""
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="6").status_code == 204
    response = t.patch(url, b"def", 3, HTTP_UPLOAD_LENGTH="6")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "6"
    assert data_of(upload_id_of(url)) == b"abcdef"


def test_same_length_on_an_upload_created_with_a_length(t: Tus) -> None:
    """Upload-Length on a PATCH equal to the creation length is accepted; a different one is 400."""
    url = t.new_upload(6)
    assert t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="7").status_code == 400
    assert t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="6").status_code == 204
    assert data_of(upload_id_of(url)) == b"abc"


@pytest.mark.parametrize("length", ["4", "0", "6"])
def test_length_smaller_than_offset_is_400(t: Tus, redis_client: redis.Redis, length: str) -> None:
    """A length below the bytes already stored: 400, the length stays deferred, nothing written."""
    url = t.new_upload(None)
    assert t.patch(url, b"0123456", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"", 7, HTTP_UPLOAD_LENGTH=length)
    assert response.status_code == 400
    assert snapshot(redis_client) == before
    head = t.head(url)
    assert head["Upload-Defer-Length"] == "1"
    assert head["Upload-Offset"] == "7"


REFUSED_PATCHES: dict[str, tuple[int, dict[str, str], int]] = {
    # name: (offset sent, extra headers, expected status)
    "wrong-offset": (0, {}, 409),
    "checksum-mismatch": (
        3,
        {"HTTP_UPLOAD_CHECKSUM": "sha1 " + base64.b64encode(hashlib.sha1(b"x").digest()).decode()},
        460,
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_PATCHES))
def test_refused_patch_does_not_set_the_deferred_length(t: Tus, redis_client: redis.Redis, case: str) -> None:
    """A PATCH refused with 409 or 460 must not modify the upload - its Upload-Length included.

    Spec: 409 "without modifying the upload resource"; 460 "the upload and its
    offset MUST NOT be updated". The length stays deferred for the retry.
    """
    offset, extra, status = REFUSED_PATCHES[case]
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"defg", offset, HTTP_UPLOAD_LENGTH="7", **extra)
    assert response.status_code == status
    head = t.head(url)
    assert head["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head
    assert snapshot(redis_client) == before


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "99999999999999999999"])
def test_malformed_upload_length_on_patch_is_400(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """A malformed Upload-Length on PATCH: 400, nothing changes."""
    url = t.new_upload(None)
    assert t.patch(url, b"ab", 0).status_code == 204
    before = snapshot(redis_client)
    assert t.patch(url, b"cd", 2, HTTP_UPLOAD_LENGTH=value).status_code == 400
    assert snapshot(redis_client) == before


def test_deferred_upload_above_max_size(t: Tus, settings: Any) -> None:
    """A deferred upload is bounded by TUSBRIDGE_MAX_SIZE: bytes or a length past it are 413."""
    settings.TUSBRIDGE_MAX_SIZE = 10
    url = t.new_upload(None)
    assert t.patch(url, b"0123456", 0).status_code == 204
    assert t.patch(url, b"abcd", 7).status_code == 413
    assert t.patch(url, b"", 7, HTTP_UPLOAD_LENGTH="11").status_code == 413
    assert data_of(upload_id_of(url)) == b"0123456"
    assert t.head(url)["Upload-Defer-Length"] == "1"


# creation-with-upload ---------------------------------------------------------------


def test_creation_with_upload_stores_the_body(t: Tus, redis_client: redis.Redis) -> None:
    """POST with application/offset+octet-stream and a body: 201, Location, Upload-Offset, Upload-Expires."""
    before = time.time()
    response = t.create(100, body=b"hello")
    assert response.status_code == 201, response.content
    url = response["Location"]
    assert response["Upload-Offset"] == "5"
    expires = imf_fixdate(response["Upload-Expires"])
    assert expires > before
    upload_id = upload_id_of(url)
    assert data_of(upload_id) == b"hello"
    assert field(redis_client, upload_id, "offset") == "5"
    assert t.offset(url) == 5
    follow = t.patch(url, b" world", 5)
    assert follow.status_code == 204
    assert data_of(upload_id) == b"hello world"


def test_creation_with_the_whole_upload_completes(t: Tus, redis_client: redis.Redis) -> None:
    """A POST carrying every byte completes the upload at once."""
    data = payload(70_000, seed=1, kind="random")
    response = t.create(len(data), body=data, HTTP_UPLOAD_METADATA="filename d2hvbGUuYmlu")
    assert response.status_code == 201
    assert response["Upload-Offset"] == str(len(data))
    upload_id = upload_id_of(response["Location"])
    assert data_of(upload_id) == data
    assert field(redis_client, upload_id, "state") == "complete"
    assert field(redis_client, upload_id, "filename") == "whole.bin"
    head = t.head(response["Location"])
    assert head["Upload-Offset"] == head["Upload-Length"] == str(len(data))


def test_creation_with_upload_and_deferred_length(t: Tus) -> None:
    """creation-with-upload combines with creation-defer-length."""
    response = t.create(None, defer=True, body=b"abc")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "3"
    head = t.head(response["Location"])
    assert head["Upload-Defer-Length"] == "1"
    assert head["Upload-Offset"] == "3"
    assert data_of(upload_id_of(response["Location"])) == b"abc"


def test_creation_with_upload_with_an_empty_body(t: Tus) -> None:
    """The offset content type and no bytes: 201 with Upload-Offset: 0."""
    response = t.create(10, body=b"")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "0"
    assert file_size(upload_id_of(response["Location"])) == 0


@pytest.mark.parametrize("extra", [1, 1000])
def test_creation_body_longer_than_length_stores_nothing(t: Tus, redis_client: redis.Redis, extra: int) -> None:
    """A body longer than Upload-Length is refused (413) and nothing is created or stored."""
    before = snapshot(redis_client)
    response = t.create(10, body=b"x" * (10 + extra))
    assert response.status_code == 413
    assert "Location" not in response
    assert snapshot(redis_client) == before


def test_creation_body_above_max_size_stores_nothing(t: Tus, redis_client: redis.Redis, settings: Any) -> None:
    """A deferred creation whose body exceeds TUSBRIDGE_MAX_SIZE stores none of it."""
    settings.TUSBRIDGE_MAX_SIZE = 8
    before_files = snapshot(redis_client).files
    response = t.create(None, defer=True, body=b"x" * 9)
    assert response.status_code == 413
    if "Location" in response:
        assert data_of(upload_id_of(response["Location"])) == b""
        assert t.offset(response["Location"]) == 0
    else:
        assert snapshot(redis_client).files == before_files


@pytest.mark.parametrize(
    "content_type",
    ["application/octet-stream", "text/plain", "multipart/form-data; boundary=x", "application/offset+octet"],
)
def test_creation_with_a_body_of_another_type_stores_nothing(
    t: Tus, redis_client: redis.Redis, content_type: str
) -> None:
    """A body with another Content-Type is not upload data: 201 without Upload-Offset, offset 0, empty file."""
    response = t.create(100, body=b"not upload data", content_type=content_type)
    assert response.status_code == 201, response.content
    assert "Upload-Offset" not in response
    upload_id = upload_id_of(response["Location"])
    assert file_size(upload_id) == 0
    assert field(redis_client, upload_id, "offset") == "0"
    assert t.offset(response["Location"]) == 0


def test_creation_with_upload_content_type_parameters(t: Tus) -> None:
    """Parameters on the offset content type do not stop the body from being stored."""
    response = t.create(10, body=b"abc", content_type="application/offset+octet-stream; charset=binary")
    assert response.status_code == 201
    assert response["Upload-Offset"] == "3"
    assert data_of(upload_id_of(response["Location"])) == b"abc"


# Live: larger and chunked creation bodies -----------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_creation_with_a_large_body_live(
    gunicorn_server: GunicornServer, session: requests.Session, framing: str
) -> None:
    """A multi-MiB creation-with-upload body through gunicorn is stored whole (Content-Length or chunked)."""
    server = gunicorn_server
    data = payload(3 * 1024 * 1024 + 4321, seed=2, kind="random")
    body: bytes | Iterator[bytes] = data
    if framing == "chunked":
        body = iter([data[i : i + 400_000] for i in range(0, len(data), 400_000)])
    headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Length": str(len(data) + 5)})
    response = requests.post(server.files_url, data=body, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == str(len(data))
    url = response.headers["Location"]
    upload_id = upload_id_of(url)
    assert file_sha256(data_path(server, upload_id)) == sha256(data)
    assert head_offset(server, session, url) == len(data)
    assert record_of(server, upload_id)["offset"] == str(len(data))


def test_chunked_creation_body_longer_than_length_live(
    gunicorn_server: GunicornServer, session: requests.Session
) -> None:
    """A chunked creation body that runs past Upload-Length is refused and none of its bytes are stored."""
    server = gunicorn_server
    data = payload(300_000, seed=3, kind="random")
    headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Length": "200000"})
    response = requests.post(server.files_url, data=iter([data[:150_000], data[150_000:]]), headers=headers, timeout=60)
    assert response.status_code == 413
    if "Location" in response.headers:
        url = response.headers["Location"]
        assert live_data_of(server, upload_id_of(url)) == b""
        assert head_offset(server, session, url) == 0
