"""Redis connections per process are bounded by configuration, never by the number of requests in flight."""

from __future__ import annotations

import functools
import gc
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.together import run_together
from tests.support.tus import make_record, prefix
from tusbridge import locking
from tusbridge.errors import StoreUnavailable
from tusbridge.records.redis import RedisRecordStore, ReleaseRequests, client_for


@pytest.fixture
def name() -> str:
    return f"conn-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def watcher(redis_server) -> Iterator[redis.Redis]:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


def connections_named(watcher: redis.Redis, name: str) -> list[dict]:
    return [c for c in watcher.client_list() if c.get("name") == name]


def store_with(redis_server, name: str, max_connections: int, timeout: float = 5.0) -> RedisRecordStore:
    client = client_for(f"{redis_server.url}?client_name={name}", timeout, max_connections)
    return RedisRecordStore(client, prefix())


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_every_holder_of_a_process_hears_release_requests_over_one_subscription(
    redis_server, watcher: redis.Redis, name: str
) -> None:
    store = store_with(redis_server, name, 16)
    records = [make_record(store) for _ in range(50)]
    locks = []
    for record in records:
        token = store.acquire_lock(record.id, 30)
        assert token is not None
        lock = locking.HeldLock(store, record.id, token, 30)
        assert not lock.release_requested()
        locks.append(lock)
    assert store.release_requests.watching == 50
    assert wait_for(lambda: sum(1 for c in connections_named(watcher, name) if c["psub"] != "0") == 1)

    # Ask for one upload: its holder hears it (the asker repeats, as a waiting request does), nobody else does.
    assert wait_for(lambda: store.request_release(records[7].id) or locks[7].release_requested())
    assert [i for i, lock in enumerate(locks) if lock.release_requested()] == [7]
    for lock in locks:
        lock.release()
    assert store.release_requests.watching == 0


def test_the_subscription_closes_when_nobody_listens_and_comes_back(
    redis_server, watcher: redis.Redis, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ReleaseRequests, "LINGER", 0.2)
    monkeypatch.setattr(ReleaseRequests, "POLL", 0.05)
    store = store_with(redis_server, name, 16)
    record = make_record(store)
    watch = store.listen_for_release(record.id)
    assert wait_for(lambda: any(c["psub"] != "0" for c in connections_named(watcher, name)))
    watch.close()
    assert wait_for(lambda: not any(c["psub"] != "0" for c in connections_named(watcher, name)))
    watch = store.listen_for_release(record.id)
    assert wait_for(lambda: store.request_release(record.id) or watch.requested())
    watch.close()


def test_a_subscription_cut_by_redis_subscribes_again(redis_server, watcher: redis.Redis, name: str) -> None:
    store = store_with(redis_server, name, 16)
    record = make_record(store)
    watch = store.listen_for_release(record.id)
    assert wait_for(lambda: any(c["psub"] != "0" for c in connections_named(watcher, name)))
    killed = watcher.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    assert wait_for(lambda: store.request_release(record.id) or watch.requested(), timeout=10)
    watch.close()


def test_many_concurrent_requests_share_a_bounded_set_of_connections(
    redis_server, watcher: redis.Redis, name: str
) -> None:
    store = store_with(redis_server, name, 4)
    records = [make_record(store, length=None) for _ in range(40)]
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(connections_named(watcher, name)))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def writer(index: int) -> None:
        record = records[index]
        offset = 0
        for _ in range(15):
            lock, current = locking.lock_for_write(store, record.id, ttl=30, wait=10)
            assert current is not None and current.offset == offset
            assert not lock.release_requested()
            result = store.advance(
                record.id, expected=offset, new=offset + 1, lock_token=lock.token, now=time.time(),
                expires_at=None, auto_complete=False, release_lock=True,
            )  # fmt: skip
            assert result.ok, result
            lock.released_by_store()
            offset += 1
            assert store.get(record.id).offset == offset

    try:
        run_together([functools.partial(writer, i) for i in range(40)], timeout=30)
    finally:
        done.set()
        sampler.join()
    assert [store.get(r.id).offset for r in records] == [15] * 40
    assert 1 <= peak <= 4


def test_a_lock_request_nobody_reads_gives_its_connection_back(redis_server, name: str) -> None:
    store = store_with(redis_server, name, 4, timeout=2.0)
    record = make_record(store)
    for _ in range(5):  # more than the two direct connections
        attempt = store.request_lock_and_get(record.id, 1)
        del attempt
        gc.collect()
    started = time.monotonic()
    token, current = store.acquire_lock_and_get(make_record(store).id, 30)
    assert token is not None and current is not None
    assert time.monotonic() - started < 1.0  # no wait for a connection that was never given back


def test_a_request_that_finds_every_connection_busy_waits_then_fails_as_redis_unavailable(
    redis_server, name: str
) -> None:
    store = store_with(redis_server, name, 4, timeout=0.5)
    record = make_record(store)
    held = [store.request_lock_and_get(record.id, 1) for _ in range(2)]  # both direct connections lent
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        store.acquire_lock_and_get(record.id, 30)
    assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)
    assert time.monotonic() - started >= 0.5
    for attempt in held:
        attempt()
    assert store.acquire_lock_and_get(record.id, 30)[1] is not None
