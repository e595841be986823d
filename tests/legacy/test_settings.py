"""CHUNKED_UPLOAD_* settings, read at request time (pytest-django ``settings`` overrides them per test)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.serializers.json import DjangoJSONEncoder
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import (
    API_COMPLETE,
    FILES,
    FILES_COMPLETE,
    assert_error,
    body_of,
    complete,
    get_record,
    parse_expires,
    post_chunk,
    upload_chunks,
    uploads_on_disk,
)
from tests.support.legacy_storage import LegacyTestStorage
from tests.support.tus import data_of, redis_keys, upload_dir
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

RECORDING_COMPLETE = "/variant/recording/"


@pytest.fixture
def media_root(settings: Any, tmp_path: Path) -> Path:
    """An empty MEDIA_ROOT for Django's default storage."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = str(root)
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# EXPIRATION_DELTA ---------------------------------------------------------------------


@pytest.mark.parametrize("delta", [timedelta(hours=2), timedelta(minutes=5), timedelta(days=3)])
def test_expiration_delta_sets_expires(client_logged_in: Client, settings: Any, delta: timedelta) -> None:
    """``expires`` = creation + CHUNKED_UPLOAD_EXPIRATION_DELTA, whatever the setting is for this request."""
    settings.CHUNKED_UPLOAD_EXPIRATION_DELTA = delta
    before = datetime.now(UTC)
    response = post_chunk(client_logged_in, b"x" * 10, total=20)
    after = datetime.now(UTC)
    expires = parse_expires(body_of(response)["expires"])
    assert before + delta - timedelta(milliseconds=1) <= expires <= after + delta


def test_expiration_delta_in_the_past_expires_the_upload(
    client_logged_in: Client, settings: Any, recorded: list[tuple[str, bytes]]
) -> None:
    """A negative delta makes a new upload expired at once: its next chunk and its completion are 410."""
    settings.CHUNKED_UPLOAD_EXPIRATION_DELTA = timedelta(seconds=-60)
    data = payload(20)
    upload_id = body_of(post_chunk(client_logged_in, data[:10], total=20))["upload_id"]
    assert_error(
        post_chunk(client_logged_in, data[10:], start=10, total=20, upload_id=upload_id),
        410,
        {"detail": "Upload has expired"},
    )
    whole = body_of(post_chunk(client_logged_in, data, start=None))["upload_id"]
    assert_error(
        complete(client_logged_in, whole, md5(data), url=RECORDING_COMPLETE), 410, {"detail": "Upload has expired"}
    )
    assert recorded == []


# MAX_BYTES -------------------------------------------------------------------------------


def test_max_bytes_setting_is_read_per_request(
    client_logged_in: Client, settings: Any, redis_client: redis.Redis
) -> None:
    """CHUNKED_UPLOAD_MAX_BYTES limits TOTAL; changing it takes effect on the next request."""
    settings.CHUNKED_UPLOAD_MAX_BYTES = 500
    refused = post_chunk(client_logged_in, b"x" * 100, total=501)
    assert_error(refused, 400, {"detail": "Size of file exceeds the limit (500 bytes)"})
    assert redis_keys(redis_client) == set() and uploads_on_disk() == []
    assert post_chunk(client_logged_in, b"x" * 100, total=500).status_code == 200
    settings.CHUNKED_UPLOAD_MAX_BYTES = 600
    assert post_chunk(client_logged_in, b"x" * 100, total=600).status_code == 200
    settings.CHUNKED_UPLOAD_MAX_BYTES = None
    assert post_chunk(client_logged_in, b"x" * 100, total=10**12).status_code == 200


def test_max_bytes_of_a_subclass_wins_over_the_setting(client_logged_in: Client, settings: Any) -> None:
    """A view's own ``max_bytes`` is used instead of the setting."""
    settings.CHUNKED_UPLOAD_MAX_BYTES = 10
    assert post_chunk(client_logged_in, b"x" * 100, url="/variant/limited/", total=1000).status_code == 200
    refused = post_chunk(client_logged_in, b"x" * 100, url="/variant/limited/", total=1001)
    assert_error(refused, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})


def test_max_bytes_from_an_overriding_hook_refuses_and_leaves_nothing(
    client_logged_in: Client, redis_client: redis.Redis
) -> None:
    """An overriding ``get_max_bytes`` is only asked by the view; a refused chunk still leaves nothing."""
    refused = post_chunk(client_logged_in, b"x" * 100, url="/variant/hook_limited/", total=1001)
    assert_error(refused, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})
    assert redis_keys(redis_client) == set() and uploads_on_disk() == []
    first = post_chunk(client_logged_in, b"x" * 100, url="/variant/hook_limited/", total=1000)
    assert first.status_code == 200
    upload_id = json.loads(first.content)["upload_id"]
    later = post_chunk(
        client_logged_in, b"y" * 100, url="/variant/hook_limited/", start=100, total=1001, upload_id=upload_id
    )
    assert_error(later, 400, {"detail": "Size of file exceeds the limit (1000 bytes)"})
    assert (upload_dir() / upload_id).read_bytes() == b"x" * 100


# ENCODER and CONTENT_TYPE -------------------------------------------------------------------


def wrapping_encoder(data: Any) -> str:
    """A project's encoder: wraps every body."""
    return json.dumps({"data": data}, cls=DjangoJSONEncoder, sort_keys=True)


def test_encoder_encodes_success_and_error_bodies(client_logged_in: Client, settings: Any) -> None:
    """CHUNKED_UPLOAD_ENCODER turns every response dict into the body."""
    settings.CHUNKED_UPLOAD_ENCODER = wrapping_encoder
    ok = post_chunk(client_logged_in, b"x" * 10, total=20)
    assert ok.status_code == 200
    body = json.loads(ok.content)
    assert set(body) == {"data"} and body["data"]["offset"] == 10
    error = post_chunk(client_logged_in, b"x" * 10, start=3, total=20, upload_id=body["data"]["upload_id"])
    assert error.status_code == 400
    assert json.loads(error.content) == {"data": {"detail": "Offsets do not match", "offset": 10}}
    done = complete(client_logged_in, "", "")
    assert json.loads(done.content) == {"data": {"detail": "Both 'upload_id' and 'md5' are required"}}


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "application/vnd.example+json"])
def test_content_type_setting(client_logged_in: Client, settings: Any, content_type: str) -> None:
    """CHUNKED_UPLOAD_CONTENT_TYPE is the Content-Type of success and error responses."""
    settings.CHUNKED_UPLOAD_CONTENT_TYPE = content_type
    ok = post_chunk(client_logged_in, b"x" * 10, total=20)
    assert ok.status_code == 200 and ok["Content-Type"] == content_type
    error = complete(client_logged_in, None, None)
    assert error.status_code == 400 and error["Content-Type"] == content_type
    assert json.loads(error.content) == {"detail": "Both 'upload_id' and 'md5' are required"}


# Where a completed upload lands --------------------------------------------------------------


def test_by_default_a_completed_upload_stays_in_the_upload_dir(
    client_logged_in: Client, media_root: Path, redis_client: redis.Redis
) -> None:
    """Without CHUNKED_UPLOAD_STORAGE_CLASS/PATH/TO the file stays at ``<TUSBRIDGE_UPLOAD_DIR>/<upload id>``."""
    data = payload(3000)
    upload_id = upload_chunks(client_logged_in, data, 1000)
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
    assert data_of(upload_id) == data
    assert files_under(media_root) == {}
    record = get_record(redis_client, upload_id)
    assert record is not None and record.stored_name == ""


@pytest.mark.parametrize("form", ["dotted-path", "class"])
def test_storage_class_receives_the_completed_upload(
    client_logged_in: Client,
    settings: Any,
    tmp_path: Path,
    redis_client: redis.Redis,
    recorded: list[tuple[str, bytes]],
    form: str,
) -> None:
    """CHUNKED_UPLOAD_STORAGE_CLASS (a dotted path or, as the original documents, the class itself).

    The finished file lands in that storage at ``chunked_uploads/%Y/%m/%d/<id>.part``
    (the default CHUNKED_UPLOAD_PATH/TO), leaves the upload directory, and
    ``on_completion`` still reads it.
    """
    store = tmp_path / "store"
    store.mkdir()
    settings.LEGACY_TEST_STORAGE_ROOT = str(store)
    settings.CHUNKED_UPLOAD_STORAGE_CLASS = (
        "tests.support.legacy_storage.LegacyTestStorage" if form == "dotted-path" else LegacyTestStorage
    )
    data = payload(5000)
    upload_id = upload_chunks(client_logged_in, data, 2000, filename="big.iso")
    response = complete(client_logged_in, upload_id, md5(data), url=RECORDING_COMPLETE)
    assert response.status_code == 200, response.content
    stored = files_under(store)
    assert list(stored.values()) == [data]
    (name,) = stored
    parts = name.split("/")
    assert parts[0] == "chunked_uploads" and len(parts) == 5 and parts[-1] == f"{upload_id}.part"
    assert len(parts[1]) == 4 and len(parts[2]) == 2 and len(parts[3]) == 2
    assert data_of(upload_id) is None
    record = get_record(redis_client, upload_id)
    assert record is not None and record.stored_name == name and record.state is State.COMPLETE
    assert recorded == [("big.iso", data)]


def test_upload_path_with_the_default_storage(client_logged_in: Client, settings: Any, media_root: Path) -> None:
    """CHUNKED_UPLOAD_PATH alone: Django's default storage, ``<PATH with strftime>/<id>.part``."""
    settings.CHUNKED_UPLOAD_PATH = "legacy/%Y"
    data = payload(1234)
    upload_id = upload_chunks(client_logged_in, data, 1000)
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
    stored = files_under(media_root)
    (name,) = stored
    assert stored[name] == data
    parts = name.split("/")
    assert parts[0] == "legacy" and len(parts[1]) == 4 and parts[1].isdigit() and parts[2] == f"{upload_id}.part"
    assert data_of(upload_id) is None


def upload_to_by_id(instance: Any, filename: str) -> str:
    """A project's CHUNKED_UPLOAD_TO callable."""
    return f"by-id/{instance.upload_id}/{filename}"


def test_upload_to_callable(client_logged_in: Client, settings: Any, media_root: Path) -> None:
    """CHUNKED_UPLOAD_TO as a callable ``(instance, filename)`` names the stored file."""
    settings.CHUNKED_UPLOAD_TO = upload_to_by_id
    data = payload(800)
    upload_id = upload_chunks(client_logged_in, data, 300, filename="notes.txt")
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
    assert files_under(media_root) == {f"by-id/{upload_id}/notes.txt": data}


def test_upload_to_string(client_logged_in: Client, settings: Any, media_root: Path) -> None:
    """CHUNKED_UPLOAD_TO as a string: a strftime directory like a FileField's ``upload_to``."""
    settings.CHUNKED_UPLOAD_TO = "docs/%Y"
    data = payload(800)
    upload_id = upload_chunks(client_logged_in, data, 300, filename="notes.txt")
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
    stored = files_under(media_root)
    (name,) = stored
    parts = name.split("/")
    assert stored[name] == data and parts[0] == "docs" and parts[1].isdigit() and parts[2] == "notes.txt"


def test_storage_settings_apply_on_the_main_endpoint(client_logged_in: Client, settings: Any, media_root: Path) -> None:
    """The same settings apply to a legacy upload completed through ``files/complete/``."""
    settings.CHUNKED_UPLOAD_TO = upload_to_by_id
    data = payload(700)
    upload_id = upload_chunks(client_logged_in, data, 300, url=FILES, filename="a.bin")
    assert complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE).status_code == 200
    assert files_under(media_root) == {f"by-id/{upload_id}/a.bin": data}


# MODEL_USER_FIELD_NULL -----------------------------------------------------------------------


def test_anonymous_uploads_allowed_when_the_user_field_may_be_null(client: Client, settings: Any) -> None:
    """With TUSBRIDGE_ALLOW_ANONYMOUS and the default MODEL_USER_FIELD_NULL=True anonymous uploads work."""
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    data = payload(100)
    response = post_chunk(client, data, start=None)
    assert response.status_code == 200, response.content
    upload_id = body_of(response)["upload_id"]
    assert complete(client, upload_id, md5(data), url=API_COMPLETE).status_code == 200


def test_user_field_not_null_refuses_anonymous_uploads(
    client_logged_in: Client, settings: Any, redis_client: redis.Redis
) -> None:
    """MODEL_USER_FIELD_NULL=False: an upload needs a user, even where anonymous requests are allowed."""
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    settings.CHUNKED_UPLOAD_MODEL_USER_FIELD_NULL = False
    anonymous = Client()
    for start in (None, 0):  # whole file (Django's handlers) and a chunk (streamed directly)
        response = post_chunk(anonymous, b"x" * 100, start=start, total=100)
        assert response.status_code == 403, response.content
        assert set(body_of(response)) == {"detail"}
        assert redis_keys(redis_client) == set()
        assert uploads_on_disk() == []
    assert post_chunk(client_logged_in, b"x" * 100, start=None).status_code == 200
