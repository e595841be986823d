"""Who may use an upload: owners only, anonymous only when allowed, and the TUSBRIDGE_PERMISSION hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.http import HttpRequest
from django.test import Client

from tests.support.data import upload_id_of
from tests.support.tus import TUS_VERSION, Tus, data_of, snapshot, tus
from tusbridge.record import UploadRecord

pytestmark = pytest.mark.django_db

#: (action, upload id or None) for every call of ``recording_permission``.
CALLS: list[tuple[str, str | None]] = []


def deny_all(request: HttpRequest, action: str, upload: UploadRecord | None) -> bool:
    """A TUSBRIDGE_PERMISSION hook that refuses everything."""
    return False


def recording_permission(request: HttpRequest, action: str, upload: UploadRecord | None) -> bool:
    """Records each call; refuses the actions listed in settings.TUSBRIDGE_TESTS_DENIED."""
    CALLS.append((action, upload.id if upload is not None else None))
    return action not in getattr(django_settings, "TUSBRIDGE_TESTS_DENIED", ())


@pytest.fixture(autouse=True)
def _fresh_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


@pytest.fixture
def url(t: Tus) -> str:
    """An upload of the logged-in user with 3 of 10 bytes stored."""
    location = t.new_upload(10)
    assert t.patch(location, b"abc", 0).status_code == 204
    return location


# Ownership ----------------------------------------------------------------------------


def test_another_user_cannot_see_the_upload(other_client: Client, url: str) -> None:
    response = tus(other_client).head(url)
    assert response.status_code == 404
    assert "Upload-Offset" not in response
    assert response["Tus-Resumable"] == TUS_VERSION


def test_another_user_cannot_write_the_upload(
    t: Tus, other_client: Client, url: str, redis_client: redis.Redis
) -> None:
    before = snapshot(redis_client)
    response = tus(other_client).patch(url, b"EVIL", 3)
    assert response.status_code == 404
    assert snapshot(redis_client) == before
    assert data_of(upload_id_of(url)) == b"abc"
    assert t.offset(url) == 3


def test_another_user_cannot_delete_the_upload(
    t: Tus, other_client: Client, url: str, redis_client: redis.Redis
) -> None:
    before = snapshot(redis_client)
    response = tus(other_client).delete(url)
    assert response.status_code == 404
    assert snapshot(redis_client) == before
    assert t.head(url).status_code == 200
    assert data_of(upload_id_of(url)) == b"abc"


def test_an_anonymous_client_cannot_see_a_users_upload(url: str) -> None:
    anonymous = tus(Client())  # not the ``client`` fixture: client_logged_in logged that one in
    response = anonymous.head(url)
    assert response.status_code in (403, 404)
    assert "Upload-Offset" not in response
    assert anonymous.patch(url, b"def", 3).status_code in (403, 404)
    assert anonymous.delete(url).status_code in (403, 404)
    assert data_of(upload_id_of(url)) == b"abc"


def test_anonymous_post_is_403_by_default(redis_client: redis.Redis) -> None:
    response = tus(Client()).create(10)
    assert response.status_code == 403
    assert response["Tus-Resumable"] == TUS_VERSION
    assert "Location" not in response
    state = snapshot(redis_client)
    assert state.keys == {} and state.files == {}


def test_anonymous_uploads_when_allowed(settings: Any) -> None:
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    t = tus(Client())
    response = t.create(5)
    assert response.status_code == 201
    location = response["Location"]
    assert t.patch(location, b"hello", 0).status_code == 204
    assert t.head(location)["Upload-Offset"] == "5"
    assert data_of(upload_id_of(location)) == b"hello"
    assert t.delete(location).status_code == 204


# The permission hook -----------------------------------------------------------------


def test_a_denying_permission_hook_refuses_creation(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    settings.TUSBRIDGE_PERMISSION = f"{__name__}.deny_all"
    response = t.create(10)
    assert response.status_code == 403
    assert response["Tus-Resumable"] == TUS_VERSION
    state = snapshot(redis_client)
    assert state.keys == {} and state.files == {}
    with_body = t.create(5, body=b"hello")
    assert with_body.status_code == 403
    assert snapshot(redis_client).files == {}


def test_a_denying_permission_hook_refuses_everything_else(
    t: Tus, settings: Any, url: str, redis_client: redis.Redis
) -> None:
    settings.TUSBRIDGE_PERMISSION = f"{__name__}.deny_all"
    before = snapshot(redis_client)
    assert t.head(url).status_code == 403
    assert t.patch(url, b"def", 3).status_code == 403
    assert t.delete(url).status_code == 403
    assert snapshot(redis_client) == before
    assert data_of(upload_id_of(url)) == b"abc"


def test_the_hook_is_asked_with_the_action_and_upload(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_PERMISSION = f"{__name__}.recording_permission"
    location = t.new_upload(6)
    upload_id = upload_id_of(location)
    assert t.head(location).status_code == 200
    assert t.patch(location, b"abc", 0).status_code == 204
    assert t.delete(location).status_code == 204
    assert ("create", None) in CALLS
    assert ("read", upload_id) in CALLS
    assert ("write", upload_id) in CALLS
    assert ("delete", upload_id) in CALLS


@pytest.mark.parametrize("denied", ["write", "delete", "read"])
def test_the_hook_can_refuse_one_action(
    t: Tus, settings: Any, url: str, redis_client: redis.Redis, denied: str
) -> None:
    settings.TUSBRIDGE_PERMISSION = f"{__name__}.recording_permission"
    settings.TUSBRIDGE_TESTS_DENIED = (denied,)
    before = snapshot(redis_client)
    requests = {
        "read": lambda: t.head(url),
        "write": lambda: t.patch(url, b"def", 3),
        "delete": lambda: t.delete(url),
    }
    assert requests[denied]().status_code == 403
    assert snapshot(redis_client) == before
    assert data_of(upload_id_of(url)) == b"abc"
    settings.TUSBRIDGE_TESTS_DENIED = ()
    assert t.offset(url) == 3
