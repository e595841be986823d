"""tus 1.0 core protocol: OPTIONS, Tus-Resumable, HEAD, PATCH and X-HTTP-Method-Override.

Driven through Django's test client against the private Redis and a real
upload directory; every "nothing changed" claim is checked on Redis and disk.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from django.http import HttpResponse
from django.test import Client

from tests.support.data import sha256, upload_id_of
from tests.support.servers import free_port
from tests.support.tus import (
    ALL_EXTENSIONS,
    COLLECTION,
    COVERED_EXTENSIONS,
    OFFSET_CT,
    TUS_VERSION,
    Tus,
    data_of,
    data_path,
    file_size,
    leftovers,
    record_store,
    snapshot,
    tus,
)

pytestmark = pytest.mark.django_db

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def extensions_of(response: HttpResponse) -> list[str]:
    return [part.strip() for part in response["Tus-Extension"].split(",")]


# OPTIONS --------------------------------------------------------------------


@pytest.mark.parametrize("path", [COLLECTION, f"{COLLECTION}{UNKNOWN_ID}"])
def test_options_needs_no_tus_resumable(client: Client, path: str) -> None:
    """OPTIONS without Tus-Resumable answers with Tus-Version and the implemented extensions."""
    response = tus(client, version=None).options(path)
    assert response.status_code in (200, 204)
    assert response["Tus-Version"] == TUS_VERSION
    extensions = extensions_of(response)
    assert len(extensions) == len(set(extensions))
    assert set(extensions) == ALL_EXTENSIONS
    assert COVERED_EXTENSIONS <= set(extensions)
    # checksum-trailer needs request trailers, which WSGI cannot deliver.
    assert "checksum-trailer" not in extensions
    # Advertising checksum obliges the server to name its algorithms, sha1 among them.
    algorithms = [a.strip() for a in response["Tus-Checksum-Algorithm"].split(",")]
    assert "sha1" in algorithms
    assert "Tus-Max-Size" not in response  # TUSBRIDGE_MAX_SIZE defaults to 0: no limit


@pytest.mark.parametrize("version", ["0.2.2", "2.0.0", "garbage"])
def test_options_ignores_a_wrong_tus_resumable(client_logged_in: Client, version: str) -> None:
    """The Server MUST ignore Tus-Resumable on OPTIONS: no 412."""
    response = tus(client_logged_in, version=None).options(HTTP_TUS_RESUMABLE=version)
    assert response.status_code in (200, 204)
    assert response["Tus-Version"] == TUS_VERSION
    assert set(extensions_of(response)) == ALL_EXTENSIONS


def test_options_advertises_tus_max_size(client: Client, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 1_073_741_824
    response = tus(client, version=None).options()
    assert response.status_code in (200, 204)
    assert response["Tus-Max-Size"] == "1073741824"


def test_options_omits_tus_max_size_when_zero(client: Client, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_SIZE = 0
    response = tus(client, version=None).options()
    assert "Tus-Max-Size" not in response


# Tus-Resumable ----------------------------------------------------------------


def _existing_upload(t: Tus) -> str:
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    return url


REQUESTS: dict[str, Callable[[Tus, str], HttpResponse]] = {
    "POST": lambda t, url: t.create(10),
    "POST-with-upload": lambda t, url: t.create(10, body=b"hello"),
    "HEAD": lambda t, url: t.head(url),
    "PATCH": lambda t, url: t.patch(url, b"defg", 3),
    "DELETE": lambda t, url: t.delete(url),
    "POST-override-PATCH": lambda t, url: t.request(
        "POST", url, b"defg", OFFSET_CT, HTTP_UPLOAD_OFFSET="3", HTTP_X_HTTP_METHOD_OVERRIDE="PATCH"
    ),
}


@pytest.mark.parametrize("version", [None, "0.2.2", "1.0", "2.0.0"])
@pytest.mark.parametrize("kind", list(REQUESTS))
def test_missing_or_unsupported_tus_resumable_is_412_and_changes_nothing(
    client_logged_in: Client, redis_client: redis.Redis, kind: str, version: str | None
) -> None:
    """The Server MUST answer 412 with Tus-Version and MUST NOT process the request."""
    url = _existing_upload(tus(client_logged_in))
    before = snapshot(redis_client)
    response = REQUESTS[kind](tus(client_logged_in, version=version), url)
    assert response.status_code == 412
    assert response["Tus-Version"] == TUS_VERSION
    assert response["Tus-Resumable"] == TUS_VERSION
    assert "Upload-Offset" not in response
    assert "Location" not in response
    assert snapshot(redis_client) == before
    assert data_of(upload_id_of(url)) == b"abc"


def test_csrf_exempt_post_without_tus_resumable_is_refused(user: Any, redis_client: redis.Redis) -> None:
    """A cross-site form POST (no custom header possible) never creates an upload."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    before = snapshot(redis_client)
    form = client.post(COLLECTION, {"a": "b"}, HTTP_UPLOAD_LENGTH="10")
    assert form.status_code == 412
    assert form["Tus-Version"] == TUS_VERSION
    urlencoded = client.post(
        COLLECTION, "a=b", content_type="application/x-www-form-urlencoded", HTTP_UPLOAD_LENGTH="3"
    )
    assert urlencoded.status_code == 412
    plain = client.post(COLLECTION, b"hello", content_type="text/plain", HTTP_UPLOAD_LENGTH="5")
    assert plain.status_code == 412
    with_upload = client.post(
        COLLECTION, b"hello", content_type=OFFSET_CT, HTTP_UPLOAD_LENGTH="5", HTTP_TUS_RESUMABLE="0.2.2"
    )
    assert with_upload.status_code == 412
    assert snapshot(redis_client) == before
    # The same client with the tus header gets through (the view itself is CSRF-exempt).
    assert tus(client).create(10).status_code == 201


@dataclass
class Ctx:
    t: Tus
    anonymous: Tus
    settings: Any
    redis: redis.Redis


def _locked_patch(ctx: Ctx) -> HttpResponse:
    url = ctx.t.new_upload(10)
    ctx.settings.TUSBRIDGE_LOCK_WAIT = 0
    assert record_store(ctx.redis).acquire_lock(upload_id_of(url), 30) is not None
    return ctx.t.patch(url, b"abc", 0)


def _deleted_head(ctx: Ctx) -> HttpResponse:
    url = ctx.t.new_upload(10)
    assert ctx.t.delete(url).status_code == 204
    return ctx.t.head(url)


def _too_large(ctx: Ctx) -> HttpResponse:
    ctx.settings.TUSBRIDGE_MAX_SIZE = 10
    return ctx.t.create(11)


def _redis_down(ctx: Ctx) -> HttpResponse:
    ctx.settings.TUSBRIDGE_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    return ctx.t.head(f"{COLLECTION}{UNKNOWN_ID}")


SCENARIOS: dict[int, Callable[[Ctx], HttpResponse]] = {
    200: lambda ctx: ctx.t.head(ctx.t.new_upload(10)),
    201: lambda ctx: ctx.t.create(10),
    204: lambda ctx: ctx.t.patch(ctx.t.new_upload(10), b"abc", 0),
    400: lambda ctx: ctx.t.create(None),
    403: lambda ctx: ctx.anonymous.create(10),
    404: lambda ctx: ctx.t.head(f"{COLLECTION}{UNKNOWN_ID}"),
    405: lambda ctx: ctx.t.request("GET", COLLECTION),
    409: lambda ctx: ctx.t.patch(ctx.t.new_upload(10), b"abc", 5),
    410: _deleted_head,
    412: lambda ctx: Tus(ctx.t.client, version="0.2.2").create(10),
    413: _too_large,
    415: lambda ctx: ctx.t.patch(ctx.t.new_upload(10), b"abc", 0, content_type="text/plain"),
    423: _locked_patch,
    503: _redis_down,
}


@pytest.mark.parametrize("status", list(SCENARIOS))
def test_every_non_options_response_carries_tus_resumable(
    client_logged_in: Client, client: Client, settings: Any, redis_client: redis.Redis, status: int
) -> None:
    """Tus-Resumable MUST be in every response except to OPTIONS, errors included."""
    anonymous = tus(Client())
    ctx = Ctx(tus(client_logged_in), anonymous, settings, redis_client)
    response = SCENARIOS[status](ctx)
    assert response.status_code == status, response.content
    assert response["Tus-Resumable"] == TUS_VERSION


def test_unsupported_method_is_405_with_allow(t: Tus) -> None:
    response = t.request("PUT", t.new_upload(10), b"x", OFFSET_CT)
    assert response.status_code == 405
    assert {m.strip() for m in response["Allow"].split(",")} >= {"HEAD", "PATCH", "DELETE"}


# HEAD -------------------------------------------------------------------------


def test_head_of_a_new_upload_reports_offset_zero(t: Tus) -> None:
    response = t.head(t.new_upload(100))
    assert response.status_code in (200, 204)
    assert response["Upload-Offset"] == "0"
    assert response["Upload-Length"] == "100"
    assert "Upload-Defer-Length" not in response
    assert response["Cache-Control"] == "no-store"
    assert response["Tus-Resumable"] == TUS_VERSION


def test_head_reports_the_offset_after_each_patch(t: Tus) -> None:
    url = t.new_upload(100)
    assert t.patch(url, b"x" * 70, 0).status_code == 204
    response = t.head(url)
    assert response["Upload-Offset"] == "70"
    assert response["Upload-Length"] == "100"
    assert response["Cache-Control"] == "no-store"


def test_head_of_a_complete_upload_still_has_upload_offset(t: Tus) -> None:
    url = t.upload(b"0123456789")
    response = t.head(url)
    assert response.status_code in (200, 204)
    assert response["Upload-Offset"] == "10"
    assert response["Upload-Length"] == "10"
    assert response["Cache-Control"] == "no-store"


def test_head_of_a_deferred_upload_has_upload_defer_length(t: Tus) -> None:
    url = t.new_upload(None)
    response = t.head(url)
    assert response["Upload-Offset"] == "0"
    assert response["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in response
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("upload_id", [UNKNOWN_ID, "nope", "a" * 64])
def test_head_of_an_unknown_upload_is_404_without_offset(t: Tus, upload_id: str) -> None:
    response = t.head(f"{COLLECTION}{upload_id}")
    assert response.status_code == 404
    assert "Upload-Offset" not in response
    assert response["Tus-Resumable"] == TUS_VERSION


# PATCH --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_patch_without_offset_content_type_is_415(t: Tus, content_type: str | None) -> None:
    url = t.new_upload(10)
    response = t.patch(url, b"abc", 0, content_type=content_type)
    assert response.status_code == 415
    assert data_of(upload_id_of(url)) == b""
    assert t.offset(url) == 0


def test_patch_accepts_content_type_parameters(t: Tus) -> None:
    url = t.new_upload(3)
    response = t.patch(url, b"abc", 0, content_type=f"{OFFSET_CT}; charset=binary")
    assert response.status_code == 204
    assert data_of(upload_id_of(url)) == b"abc"


@pytest.mark.parametrize("offset", [None, "", "-1", "abc", "1.5", "+0", "0x0", "1e1", "99999999999999999999"])
def test_patch_with_missing_or_malformed_offset_is_400(t: Tus, offset: str | None) -> None:
    """Upload-Offset MUST be a non-negative integer."""
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = t.patch(url, b"def", offset)
    assert response.status_code == 400
    assert response["Tus-Resumable"] == TUS_VERSION
    assert data_of(upload_id_of(url)) == b"abc"
    assert t.offset(url) == 3


@pytest.mark.parametrize("offset", [0, 2, 4, 10])
def test_patch_at_the_wrong_offset_is_409_and_changes_nothing(t: Tus, redis_client: redis.Redis, offset: int) -> None:
    """Mismatched offsets: 409 Conflict with the current offset, upload untouched."""
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"XYZ", offset)
    assert response.status_code == 409
    assert response["Upload-Offset"] == "3"
    assert snapshot(redis_client) == before
    assert data_of(upload_id_of(url)) == b"abc"


def test_patch_appends_and_reports_the_new_offset(t: Tus) -> None:
    """204 No Content with Upload-Offset = previous offset + bytes stored."""
    url = t.new_upload(11)
    first = t.patch(url, b"hello", 0)
    assert first.status_code == 204
    assert first["Upload-Offset"] == "5"
    assert first.content == b""
    second = t.patch(url, b" world", 5)
    assert second.status_code == 204
    assert second["Upload-Offset"] == "11"
    assert data_of(upload_id_of(url)) == b"hello world"
    assert t.offset(url) == 11


def test_empty_patch_keeps_the_offset(t: Tus) -> None:
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = t.patch(url, b"", 3)
    assert response.status_code == 204
    assert response["Upload-Offset"] == "3"
    assert data_of(upload_id_of(url)) == b"abc"


@pytest.mark.parametrize("already", [0, 4])
def test_bytes_past_the_length_are_refused_unwritten(t: Tus, already: int) -> None:
    """A body longer than the remaining length is refused and nothing of it is stored."""
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    if already:
        assert t.patch(url, b"a" * already, 0).status_code == 204
    response = t.patch(url, b"b" * (10 - already + 1), already)
    assert response.status_code == 413
    assert file_size(upload_id) == already
    assert t.offset(url) == already
    # The upload goes on normally afterwards.
    assert t.patch(url, b"c" * (10 - already), already).status_code == 204
    assert data_of(upload_id) == b"a" * already + b"c" * (10 - already)


def _chunked_patch(t: Tus, url: str, body: bytes, offset: int) -> HttpResponse:
    """A PATCH whose body has no Content-Length (as a de-chunking WSGI server passes it on)."""
    return t.request(
        "PATCH",
        url,
        content_type=OFFSET_CT,
        HTTP_UPLOAD_OFFSET=str(offset),
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True},
    )


def test_chunked_patch_is_stored(t: Tus) -> None:
    url = t.new_upload(10)
    response = _chunked_patch(t, url, b"0123456", 0)
    assert response.status_code == 204
    assert response["Upload-Offset"] == "7"
    assert data_of(upload_id_of(url)) == b"0123456"


def test_chunked_patch_past_the_length_is_refused_unwritten(t: Tus) -> None:
    """Without a Content-Length the overflow is only seen while reading; nothing may stay."""
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = _chunked_patch(t, url, b"x" * 8, 3)
    assert response.status_code == 413
    assert data_of(upload_id_of(url)) == b"abc"
    assert t.offset(url) == 3


def test_patch_on_a_complete_upload(t: Tus) -> None:
    """A finished upload takes no more bytes; an empty PATCH at its end is harmless."""
    url = t.upload(b"done!")
    upload_id = upload_id_of(url)
    more = t.patch(url, b"extra", 5)
    assert 400 <= more.status_code < 500
    assert more.status_code != 404
    again = t.patch(url, b"XXXXX", 0)
    assert again.status_code == 409
    assert again["Upload-Offset"] == "5"
    empty = t.patch(url, b"", 5)
    assert empty.status_code == 204
    assert empty["Upload-Offset"] == "5"
    assert data_of(upload_id) == b"done!"
    assert t.offset(url) == 5


def test_patch_on_an_unknown_upload_is_404(t: Tus) -> None:
    response = t.patch(f"{COLLECTION}{UNKNOWN_ID}", b"abc", 0)
    assert response.status_code == 404
    assert leftovers(UNKNOWN_ID) == []


def test_upload_length_on_patch_of_a_known_length(t: Tus) -> None:
    """Repeating the length is fine; changing it is refused and nothing is written."""
    url = t.new_upload(6)
    assert t.patch(url, b"abc", 0, HTTP_UPLOAD_LENGTH="6").status_code == 204
    response = t.patch(url, b"def", 3, HTTP_UPLOAD_LENGTH="7")
    assert response.status_code == 400
    assert data_of(upload_id_of(url)) == b"abc"
    head = t.head(url)
    assert head["Upload-Length"] == "6"
    assert head["Upload-Offset"] == "3"


def test_busy_upload_answers_423_and_is_not_written(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    """While another request holds the upload's lock, a PATCH waits LOCK_WAIT and gives up."""
    settings.TUSBRIDGE_LOCK_WAIT = 0
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    store = record_store(redis_client)
    token = store.acquire_lock(upload_id, 30)
    assert token is not None
    response = t.patch(url, b"abc", 0)
    assert response.status_code == 423
    assert data_of(upload_id) == b""
    store.release_lock(upload_id, token)
    assert t.patch(url, b"abc", 0).status_code == 204


# Data store ----------------------------------------------------------------------


def test_bytes_left_past_the_offset_by_a_crash_are_cut_off(t: Tus) -> None:
    """Bytes on disk beyond the recorded offset were never acknowledged and must not survive."""
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    assert t.patch(url, b"hello", 0).status_code == 204
    with open(data_path(upload_id), "ab") as fh:  # a crash between write and offset advance
        fh.write(b"JUNKJUNKJUNK")
    assert t.offset(url) == 5
    response = t.patch(url, b"world", 5)
    assert response.status_code == 204
    assert response["Upload-Offset"] == "10"
    assert data_of(upload_id) == b"helloworld"


class RecordingBody(io.BytesIO):
    """A request body that remembers the size of every read the server made."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.reads.append(len(chunk))
        return chunk


def test_a_large_body_is_written_in_pieces(t: Tus, settings: Any) -> None:
    """A body several times READ_SIZE is read in bounded pieces and stored byte for byte."""
    read_size = 64 * 1024
    settings.TUSBRIDGE_READ_SIZE = read_size
    data = os.urandom(3 * 1024 * 1024 + 12345)
    url = t.new_upload(len(data))
    body = RecordingBody(data)
    response = t.request(
        "PATCH",
        url,
        content_type=OFFSET_CT,
        HTTP_UPLOAD_OFFSET="0",
        CONTENT_LENGTH=str(len(data)),
        **{"wsgi.input": body},
    )
    assert response.status_code == 204
    assert response["Upload-Offset"] == str(len(data))
    pieces = [n for n in body.reads if n]
    assert sum(pieces) == len(data)
    assert max(pieces) <= read_size
    assert len(pieces) >= math.ceil(len(data) / read_size)
    stored = data_of(upload_id_of(url))
    assert stored is not None and sha256(stored) == sha256(data)


def test_a_large_body_through_the_test_client_is_stored_exactly(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_READ_SIZE = 4096
    data = os.urandom(2 * 1024 * 1024 + 7)
    url = t.new_upload(len(data) + 100)
    assert t.patch(url, data, 0).status_code == 204
    assert t.patch(url, b"t" * 100, len(data)).status_code == 204
    stored = data_of(upload_id_of(url))
    assert stored is not None and sha256(stored) == sha256(data + b"t" * 100)


# X-HTTP-Method-Override ------------------------------------------------------------


def test_post_overridden_to_patch(t: Tus) -> None:
    url = t.new_upload(5)
    response = t.request("POST", url, b"hello", OFFSET_CT, HTTP_UPLOAD_OFFSET="0", HTTP_X_HTTP_METHOD_OVERRIDE="PATCH")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "5"
    assert data_of(upload_id_of(url)) == b"hello"


def test_post_overridden_to_delete(t: Tus) -> None:
    url = t.new_upload(5)
    response = t.request("POST", url, HTTP_X_HTTP_METHOD_OVERRIDE="DELETE")
    assert response.status_code == 204
    assert t.head(url).status_code == 410
    assert leftovers(upload_id_of(url)) == []


def test_post_overridden_to_head(t: Tus) -> None:
    url = t.new_upload(5)
    assert t.patch(url, b"ab", 0).status_code == 204
    response = t.request("POST", url, HTTP_X_HTTP_METHOD_OVERRIDE="HEAD")
    assert response.status_code in (200, 204)
    assert response["Upload-Offset"] == "2"
    assert response["Upload-Length"] == "5"
    assert response["Cache-Control"] == "no-store"


def test_override_replaces_the_real_method(t: Tus) -> None:
    """The actual method MUST be ignored: a PATCH overridden to HEAD writes nothing."""
    url = t.new_upload(5)
    response = t.request("PATCH", url, b"hello", OFFSET_CT, HTTP_UPLOAD_OFFSET="0", HTTP_X_HTTP_METHOD_OVERRIDE="HEAD")
    assert response.status_code in (200, 204)
    assert response["Upload-Offset"] == "0"
    assert data_of(upload_id_of(url)) == b""
