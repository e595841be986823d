"""tusbridge on a three-node Redis Cluster (TUSBRIDGE_REDIS_URL = redis+cluster://...).

Every key of one upload carries its id as hash tag, so the Lua scripts touch
one slot; the expiry index and the quotas live in keys of their own. The
store contract runs on the Cluster too (test_store_contract.py); here both
protocols run through it, with uploads spread over the nodes.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.test import Client

from tests.support.cluster import RedisClusterGroup
from tests.support.data import md5, payload, upload_id_of
from tests.support.legacy import FILES, FILES_COMPLETE, complete, post_chunk
from tests.support.tus import Tus, data_of
from tusbridge.records.redis import RedisRecordStore
from tusbridge.service import get_service

pytestmark = [pytest.mark.django_db, pytest.mark.real_stores]


@pytest.fixture
def on_cluster(settings: Any, redis_cluster: RedisClusterGroup) -> RedisClusterGroup:
    settings.TUSBRIDGE_REDIS_URL = redis_cluster.url
    return redis_cluster


def owner_of(cluster: RedisClusterGroup, key: str) -> int:
    """The port of the node that holds ``key`` (the others answer MOVED)."""
    for port in cluster.ports:
        try:
            if cluster.node(port).exists(key):
                return port
        except redis.exceptions.MovedError:
            continue
    raise AssertionError(f"no node holds {key}")


def test_tus_uploads_spread_over_the_nodes(on_cluster: RedisClusterGroup, t: Tus) -> None:
    store = get_service().records
    assert isinstance(store, RedisRecordStore)
    holders = set()
    for seed in range(12):
        data = payload(30_000, seed=seed)
        url = t.new_upload(len(data))
        assert t.patch(url, data[:10_000], 0).status_code == 204
        assert t.head(url)["Upload-Offset"] == "10000"
        assert t.patch(url, data[10_000:], 10_000).status_code == 204
        assert data_of(upload_id_of(url)) == data
        holders.add(owner_of(on_cluster, store.record_key(upload_id_of(url))))
    assert len(holders) > 1  # the records live on more than one node


def test_a_legacy_upload_and_a_termination(on_cluster: RedisClusterGroup, t: Tus, client_logged_in: Client) -> None:
    data = payload(90_000, seed=40)
    first = post_chunk(client_logged_in, data[:30_000], url=FILES, start=0, total=len(data))
    assert first.status_code == 200, first.content
    upload_id = first.json()["upload_id"]
    for start in (30_000, 60_000):
        reply = post_chunk(
            client_logged_in, data[start : start + 30_000], url=FILES, start=start, total=len(data), upload_id=upload_id
        )
        assert reply.status_code == 200, reply.content
    assert complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE).status_code == 200
    url = t.new_upload(10)
    assert t.delete(url).status_code == 204
    assert t.head(url).status_code in (404, 410)
