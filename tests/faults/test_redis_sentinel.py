"""Redis behind Sentinel: TUSBRIDGE_REDIS_URL = redis+sentinel://..., and a failover during uploads.

Real processes: a primary, a replica and three sentinels (tests/support/sentinel.py).
The primary is SIGKILLed while tus and legacy uploads are under way; until
the sentinels promote the replica, requests answer 503 with Retry-After
(never 500); then every upload goes on from the offset the new primary
knows and finishes with the right bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import FILES, FILES_COMPLETE, complete, post_chunk
from tests.support.sentinel import SentinelGroup
from tests.support.servers import find_redis_server
from tests.support.tus import Tus, data_of
from tusbridge.records.redis import RedisRecordStore, client_for
from tusbridge.service import get_service

pytestmark = [pytest.mark.django_db, pytest.mark.real_stores]

CHUNK = 50_000


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    binary = find_redis_server()
    assert binary is not None
    group = SentinelGroup(binary, Path(tmp_path_factory.mktemp("sentinel")))
    group.start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def behind_sentinel(settings: Any, sentinel_group: SentinelGroup) -> SentinelGroup:
    settings.TUSBRIDGE_REDIS_URL = sentinel_group.url
    settings.TUSBRIDGE_REDIS_TIMEOUT = 1.0
    return sentinel_group


def test_a_sentinel_url_reaches_the_primary(behind_sentinel: SentinelGroup, t: Tus) -> None:
    store = get_service().records
    assert isinstance(store, RedisRecordStore)
    url = t.new_upload(10)
    assert t.patch(url, b"0123456789", 0).status_code == 204
    primary = behind_sentinel.client(behind_sentinel.primary_port())
    assert primary.exists(store.record_key(url.rstrip("/").rsplit("/", 1)[-1]))


def test_the_settings_dict_form(sentinel_group: SentinelGroup) -> None:
    setting = {
        "sentinels": [("127.0.0.1", port) for port in sentinel_group.sentinel_ports],
        "service": "tusbridge-primary",
    }
    client = client_for(setting, 1.0, 8)
    assert client.ping()
    assert int(client.info("server")["tcp_port"]) == sentinel_group.primary_port()


def _retrying(send: Any, statuses: list[int]) -> Any:
    """Send until the answer is not 503 (the failover); record every status seen."""
    for _ in range(200):
        response = send()
        statuses.append(response.status_code)
        if response.status_code != 503:
            return response
        assert response["Retry-After"]
    raise AssertionError("still 503 after the failover")


def finish_tus(t: Tus, url: str, data: bytes, statuses: list[int]) -> None:
    """HEAD, then PATCH from the offset the server knows, until the upload is whole."""
    while True:
        offset = int(_retrying(lambda: t.head(url), statuses)["Upload-Offset"])
        if offset == len(data):
            return
        piece = data[offset : offset + CHUNK]
        reply = _retrying(lambda: t.patch(url, piece, offset), statuses)  # noqa: B023 - called at once
        assert reply.status_code in (204, 409), reply.content


def test_a_failover_during_uploads(behind_sentinel: SentinelGroup, t: Tus, client_logged_in: Client) -> None:
    tus_data = [payload(400_000, seed=n) for n in range(3)]
    urls = [t.new_upload(len(data)) for data in tus_data]
    legacy_data = payload(400_000, seed=9)
    first = post_chunk(client_logged_in, legacy_data[:CHUNK], url=FILES, start=0, total=len(legacy_data))
    assert first.status_code == 200
    legacy_id = first.json()["upload_id"]
    for url, data in zip(urls, tus_data, strict=True):
        assert t.patch(url, data[:CHUNK], 0).status_code == 204

    old = behind_sentinel.kill_primary()
    statuses: list[int] = []
    # Until a replica is promoted, every request is refused with 503 and Retry-After.
    statuses.append(t.head(urls[0]).status_code)
    assert statuses[-1] == 503
    behind_sentinel.wait_for_new_primary(old)

    for url, data in zip(urls, tus_data, strict=True):
        finish_tus(t, url, data, statuses)
        assert data_of(url.rstrip("/").rsplit("/", 1)[-1]) == data

    offset = CHUNK
    while offset < len(legacy_data):
        piece = legacy_data[offset : offset + CHUNK]
        send = lambda piece=piece, offset=offset: post_chunk(  # noqa: E731
            client_logged_in, piece, url=FILES, start=offset, total=len(legacy_data), upload_id=legacy_id
        )
        reply = _retrying(send, statuses)
        if reply.status_code == 400 and "offset" in reply.json():
            offset = reply.json()["offset"]  # the new primary knew an older offset: resend from there
            continue
        assert reply.status_code == 200, reply.content
        offset = reply.json()["offset"]
    done = _retrying(lambda: complete(client_logged_in, legacy_id, md5(legacy_data), url=FILES_COMPLETE), statuses)
    assert done.status_code == 200, done.content
    assert 500 not in statuses
