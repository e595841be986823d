"""A lock held by a process on another host is freed once that process stops saying it is alive.

Another host's process cannot be looked up in /proc. Every process that takes
locks keeps a short-lived key in Redis while it holds any
(``records.redis.Heartbeat``); a waiter that finds the key of a lock's
process gone removes the lock instead of waiting out its TTL. Here the other
host is a token made in another PID namespace, and its key is set or deleted
by hand.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from tusbridge import errors, locking
from tusbridge.holders import process_of, this_process
from tusbridge.records.redis import Heartbeat, RedisRecordStore
from tusbridge.service import get_service

pytestmark = [pytest.mark.django_db, pytest.mark.real_stores]

OTHER_HOST_TOKEN = "0b6c3f2e-1111-2222-3333-444455556666.4026531836:4242:abcdef"


@pytest.fixture
def store(settings: Any) -> RedisRecordStore:
    settings.TUSBRIDGE_LOCK_TTL = 600
    store = get_service().records
    assert isinstance(store, RedisRecordStore)
    return store


def lock_by_other_host(store: RedisRecordStore, redis_client: redis.Redis, upload_id: str, *, alive: bool) -> None:
    redis_client.set(store.lock_key(upload_id), OTHER_HOST_TOKEN, px=600_000)
    if alive:
        redis_client.set(store.alive_key(process_of(OTHER_HOST_TOKEN)), "1", px=60_000)


def test_a_dead_hosts_lock_is_freed_at_once(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = get_service().create(owner="7", protocol="tus", length=10)
    lock_by_other_host(store, redis_client, record.id, alive=False)
    lock, _ = locking.lock_for_write(store, record.id, ttl=30, wait=1.0)  # Locked after 1 s if not freed
    assert lock.token != OTHER_HOST_TOKEN
    lock.release()


def test_a_live_hosts_lock_is_waited_for(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = get_service().create(owner="7", protocol="tus", length=10)
    lock_by_other_host(store, redis_client, record.id, alive=True)
    with pytest.raises(errors.Locked):
        locking.lock_for_write(store, record.id, ttl=30, wait=0.6)
    assert redis_client.get(store.lock_key(record.id)) == OTHER_HOST_TOKEN.encode()
    redis_client.delete(store.alive_key(process_of(OTHER_HOST_TOKEN)))  # the host dies
    lock, _ = locking.lock_for_write(store, record.id, ttl=30, wait=1.0)
    lock.release()


def test_a_process_that_holds_a_lock_keeps_its_key(
    store: RedisRecordStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Heartbeat, "TTL", 0.4)
    monkeypatch.setattr(Heartbeat, "EVERY", 0.1)
    record = get_service().create(owner="7", protocol="tus", length=10)
    key = store.alive_key(this_process())
    lock, _ = locking.lock_for_write(store, record.id, ttl=30, wait=1.0)
    time.sleep(1.0)  # more than twice the key's TTL: only renewals keep it
    assert redis_client.exists(key)
    assert not store.holder_gone(lock.token)
    lock.release()
    time.sleep(1.0)
    assert not redis_client.exists(key)  # no lock held: the key lapses
