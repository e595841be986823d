"""Limits for uploads without a logged-in user, per client address, on by default.

Anonymous uploads count against their client's address: uploads in progress
(TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS), the bytes they may reach
(TUSBRIDGE_MAX_BYTES_PER_ADDRESS) and creations per minute
(TUSBRIDGE_CREATIONS_PER_MINUTE). Past them: 429 with Retry-After, nothing
created. Completion, termination and expiry free the share. The address is
the connection's unless TUSBRIDGE_TRUSTED_PROXY_COUNT says proxies in front
append it to X-Forwarded-For.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import FILES, FILES_COMPLETE, complete, post_chunk
from tests.support.tus import Tus, tus
from tusbridge import conf
from tusbridge.service import get_service

pytestmark = pytest.mark.django_db


@pytest.fixture
def anonymous(settings: Any) -> Tus:
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    return tus(Client())


def refused(response: Any, *words: str) -> None:
    assert response.status_code == 429, (response.status_code, response.content)
    assert int(response["Retry-After"]) >= 1
    text = response.content.decode()
    assert all(word in text for word in words), text


def test_the_limits_are_on_by_default() -> None:
    assert conf.DEFAULTS["MAX_UPLOADS_PER_ADDRESS"] > 0
    assert conf.DEFAULTS["MAX_BYTES_PER_ADDRESS"] > 0
    assert conf.DEFAULTS["CREATIONS_PER_MINUTE"] > 0


def test_uploads_in_progress_per_address(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 3
    urls = [anonymous.new_upload(5) for _ in range(3)]
    for attempt in (anonymous.create(5), anonymous.create(None, defer=True), anonymous.create(5, body=b"hello")):
        refused(attempt, "3 uploads in progress")
        assert "Location" not in attempt
    # Another address has its own share.
    assert anonymous.create(5, REMOTE_ADDR="198.51.100.20").status_code == 201
    # Completing and terminating free a share each.
    assert anonymous.patch(urls[0], b"hello", 0).status_code == 204
    anonymous.new_upload(5)
    refused(anonymous.create(5), "3 uploads in progress")
    assert anonymous.delete(urls[1]).status_code == 204
    anonymous.new_upload(5)
    refused(anonymous.create(5), "3 uploads in progress")


def test_expiry_frees_the_share(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 1
    url = anonymous.new_upload(5)
    refused(anonymous.create(5), "1 uploads in progress")
    service = get_service()
    record = service.records.get(url.rstrip("/").rsplit("/", 1)[-1])
    service.records.update(record.id, expires_at=0.0)
    service.records.reindex(record.id, 0.0)
    assert service.expire_due() == 1
    assert anonymous.create(5).status_code == 201


def test_bytes_per_address_and_the_deferred_length(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_BYTES_PER_ADDRESS = 1000
    anonymous.new_upload(600)
    refused(anonymous.create(401), "1000 bytes")
    assert anonymous.create(400).status_code == 201
    # A deferred-length upload reserves all it may grow to: nothing is left for one.
    refused(anonymous.create(None, defer=True), "1000 bytes")


def test_creations_per_minute(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_CREATIONS_PER_MINUTE = 5
    for _ in range(5):
        assert anonymous.create(1).status_code == 201
    response = anonymous.create(1)
    refused(response, "5 uploads created from your address in a minute")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert anonymous.create(1, REMOTE_ADDR="198.51.100.21").status_code == 201


def test_a_logged_in_user_is_not_limited_by_the_address(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 1
    settings.TUSBRIDGE_CREATIONS_PER_MINUTE = 1
    for _ in range(3):
        assert t.create(5).status_code == 201


def test_x_forwarded_for_counts_only_behind_trusted_proxies(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 1
    forged = {"HTTP_X_FORWARDED_FOR": "203.0.113.1"}
    assert anonymous.create(5, **forged).status_code == 201
    # Untrusted, the header is the client's own claim: the connection's address counts.
    refused(anonymous.create(5, HTTP_X_FORWARDED_FOR="203.0.113.2"), "1 uploads in progress")
    settings.TUSBRIDGE_TRUSTED_PROXY_COUNT = 1
    # Behind one proxy, its entry (the last) is the client's address; what the client wrote before it is not.
    assert anonymous.create(5, HTTP_X_FORWARDED_FOR="203.0.113.9, 203.0.113.3").status_code == 201
    refused(anonymous.create(5, HTTP_X_FORWARDED_FOR="203.0.113.4, 203.0.113.3"), "1 uploads in progress")


def test_legacy_anonymous_uploads_count_against_the_address(settings: Any) -> None:
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    settings.TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 1
    client = Client()
    data = payload(3000, seed=9)
    first = post_chunk(client, data[:1000], url=FILES, start=0, total=len(data))
    assert first.status_code == 200, first.content
    upload_id = first.json()["upload_id"]
    second = post_chunk(client, data[:1000], url=FILES, start=0, total=len(data))
    assert second.status_code == 429 and int(second["Retry-After"]) >= 1, second.content
    assert "1 uploads in progress" in second.json()["detail"]
    for start in (1000, 2000):
        chunk = data[start : start + 1000]
        reply = post_chunk(client, chunk, url=FILES, start=start, total=len(data), upload_id=upload_id)
        assert reply.status_code == 200, reply.content
    assert complete(client, upload_id, md5(data), url=FILES_COMPLETE).status_code == 200
    assert post_chunk(client, data[:1000], url=FILES, start=0, total=len(data)).status_code == 200  # freed


def test_a_refused_creation_leaves_nothing(anonymous: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_CREATIONS_PER_MINUTE = 2
    urls = [anonymous.new_upload(5) for _ in range(2)]
    service = get_service()
    for _ in range(20):
        refused(anonymous.create(5, body=b"hello"))
    ids = {url.rstrip("/").rsplit("/", 1)[-1] for url in urls}
    assert set(service.records.created_before(10**12, 100)) == ids
