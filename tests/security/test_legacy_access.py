"""Who may do what with legacy uploads: authentication, ownership and CSRF."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.test.client import encode_multipart

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
    uploads_on_disk,
)
from tests.support.tus import data_of, redis_keys, snapshot
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

BOTH_ENDPOINTS = pytest.mark.parametrize(
    ("chunk_url", "complete_url"),
    [(API_CHUNK, API_COMPLETE), (FILES, FILES_COMPLETE)],
    ids=["api", "files"],
)
NOT_AUTHENTICATED = {"detail": "Authentication credentials were not provided"}


@BOTH_ENDPOINTS
@pytest.mark.parametrize("start", [0, None], ids=["chunk", "whole-file"])
def test_anonymous_users_are_refused_by_default(
    client: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str, start: int | None
) -> None:
    """Without TUSBRIDGE_ALLOW_ANONYMOUS: 403 with the spec's JSON body; nothing is stored."""
    response = post_chunk(client, payload(5000), url=chunk_url, start=start)
    assert_error(response, 403, NOT_AUTHENTICATED)
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []
    assert_error(complete(client, "0" * 32, md5(b""), url=complete_url), 403, NOT_AUTHENTICATED)


@BOTH_ENDPOINTS
def test_anonymous_user_cannot_touch_a_users_upload(
    client_logged_in: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """Even with anonymous uploads allowed, a user's upload is 404 to anonymous requests."""
    data = payload(200)
    upload_id = body_of(post_chunk(client_logged_in, data[:100], url=chunk_url, total=200))["upload_id"]
    with override_settings(TUSBRIDGE_ALLOW_ANONYMOUS=True):
        anonymous = Client()
        chunk = post_chunk(anonymous, data[100:], url=chunk_url, start=100, total=200, upload_id=upload_id)
        assert chunk.status_code == 404 and set(body_of(chunk)) == {"detail"}
        done = complete(anonymous, upload_id, md5(data[:100]), url=complete_url)
        assert done.status_code == 404 and set(body_of(done)) == {"detail"}
    assert data_of(upload_id) == data[:100]


@BOTH_ENDPOINTS
def test_other_users_upload_is_404_and_untouched(
    client_logged_in: Client, other_client: Client, redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """Chunk (at the right offset) and completion by another user: 404, Redis and files unchanged."""
    data = payload(300)
    upload_id = body_of(post_chunk(client_logged_in, data[:200], url=chunk_url, total=300))["upload_id"]
    before = snapshot(redis_client)
    chunk = post_chunk(other_client, data[200:], url=chunk_url, start=200, total=300, upload_id=upload_id)
    assert chunk.status_code == 404 and set(body_of(chunk)) == {"detail"}
    # The whole file from the other user, too.
    done = complete(other_client, upload_id, md5(data[:200]), url=complete_url)
    assert done.status_code == 404 and set(body_of(done)) == {"detail"}
    assert snapshot(redis_client) == before
    # The owner still finishes.
    assert (
        post_chunk(client_logged_in, data[200:], url=chunk_url, start=200, total=300, upload_id=upload_id).status_code
        == 200
    )
    assert complete(client_logged_in, upload_id, md5(data), url=complete_url).status_code == 200


# CSRF ---------------------------------------------------------------------------------------


def csrf_client(username: str = "carol") -> tuple[Client, str]:
    """A client that enforces CSRF, logged in through /test-login/; returns it and its csrftoken cookie."""
    client = Client(enforce_csrf_checks=True)
    response = client.post("/test-login/", {"username": username})
    assert response.status_code == 200, response.content
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    assert token
    return client, token


@BOTH_ENDPOINTS
@pytest.mark.parametrize("start", [0, None], ids=["chunk", "whole-file"])
def test_chunk_without_csrf_token_is_403_and_writes_nothing(
    redis_client: redis.Redis, chunk_url: str, complete_url: str, start: int | None
) -> None:
    """A logged-in chunk POST without the token is refused by CSRF and leaves no file or key."""
    client, _ = csrf_client()
    response = post_chunk(client, payload(50_000), url=chunk_url, start=start)
    assert response.status_code == 403
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_chunk_with_a_wrong_csrf_token_is_403(redis_client: redis.Redis) -> None:
    """A token that does not match the cookie is refused too."""
    client, token = csrf_client()
    wrong = ("a" if token[0] != "a" else "b") + token[1:]
    response = post_chunk(client, payload(1000), fields={"csrfmiddlewaretoken": wrong})
    assert response.status_code == 403
    assert redis_keys(redis_client) == set() and uploads_on_disk() == []


@BOTH_ENDPOINTS
def test_chunks_with_the_csrf_form_field_first_succeed(
    redis_client: redis.Redis, chunk_url: str, complete_url: str
) -> None:
    """jQuery-File-Upload sends ``csrfmiddlewaretoken`` as the first form field of every request."""
    client, token = csrf_client()
    data = payload(250_000)
    upload_id = None
    for start in range(0, len(data), 100_000):
        response = post_chunk(
            client,
            data[start : start + 100_000],
            url=chunk_url,
            start=start,
            total=len(data),
            upload_id=upload_id,
            fields={"csrfmiddlewaretoken": token},
        )
        assert response.status_code == 200, response.content
        upload_id = body_of(response)["upload_id"]
    refused = client.post(complete_url, {"upload_id": upload_id, "md5": md5(data)})
    assert refused.status_code == 403
    record = get_record(redis_client, upload_id or "")
    assert record is not None and record.state is State.UPLOADING
    done = client.post(complete_url, {"csrfmiddlewaretoken": token, "upload_id": upload_id, "md5": md5(data)})
    assert done.status_code == 200, done.content
    assert data_of(upload_id or "") == data


def test_csrf_header_is_accepted(redis_client: redis.Redis) -> None:
    """The X-CSRFToken header works as well as the form field."""
    client, token = csrf_client()
    response = post_chunk(client, payload(1000), start=None, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content


def test_csrf_token_after_the_file_part_still_checked(redis_client: redis.Redis) -> None:
    """The token as the last field (after the file) is found; without it nothing is left behind."""
    client, token = csrf_client()
    data = payload(10_000)
    boundary = "XxBoundaryxX"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="late.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Disposition: form-data; name="csrfmiddlewaretoken"\r\n\r\n'
            f"{token}\r\n--{boundary}--\r\n"
        ).encode()
    )
    response = client.post(
        API_CHUNK,
        body,
        content_type=f"multipart/form-data; boundary={boundary}",
        HTTP_CONTENT_RANGE=f"bytes 0-{len(data) - 1}/{len(data)}",
    )
    assert response.status_code == 200, response.content
    assert data_of(body_of(response)["upload_id"]) == data
    before = uploads_on_disk()
    unsigned = encode_multipart(boundary, {"file": SimpleUploadedFile("late.bin", data)})
    refused = client.post(
        API_CHUNK,
        unsigned,
        content_type=f"multipart/form-data; boundary={boundary}",
        HTTP_CONTENT_RANGE=f"bytes 0-{len(data) - 1}/{len(data)}",
    )
    assert refused.status_code == 403
    assert uploads_on_disk() == before


def test_view_with_csrf_disabled_takes_chunks_without_token() -> None:
    """``enforce_csrf = False`` on a subclass serves clients that cannot send the token."""
    client, _ = csrf_client()
    response = post_chunk(client, payload(1000), url="/variant/nocsrf/", start=None)
    assert response.status_code == 200, response.content
