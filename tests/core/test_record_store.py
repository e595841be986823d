"""The Redis record store on its own: the Lua offset advance, completion, the lock, the expiry index, key layout."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from django.test import Client
from redis.crc import key_slot

from tests.support.data import upload_id_of
from tests.support.together import run_threads
from tests.support.tus import Tus, expiry_key, lock_key, make_record, prefix, record_key, record_store, redis_keys, tus
from tusbridge import locking
from tusbridge.record import State, new_upload_id
from tusbridge.records.base import AdvanceStatus
from tusbridge.records.redis import RedisRecordStore
from tusbridge.service import get_service


@pytest.fixture
def store(redis_client: redis.Redis) -> RedisRecordStore:
    return record_store(redis_client)


def advance(
    store: RedisRecordStore,
    upload_id: str,
    token: str,
    expected: int,
    new: int,
    *,
    auto_complete: bool = True,
    expires_at: float | None = None,
) -> Any:
    return store.advance(
        upload_id,
        expected=expected,
        new=new,
        lock_token=token,
        now=time.time(),
        expires_at=expires_at,
        auto_complete=auto_complete,
    )


def taken(store: RedisRecordStore, upload_id: str) -> str:
    token = store.acquire_lock(upload_id, 30)
    assert token is not None
    return token


def offset_of(store: RedisRecordStore, upload_id: str) -> int:
    record = store.get(upload_id)
    assert record is not None
    return record.offset


# Keys --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_key_of_an_upload_carries_its_hash_tag(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Record and lock share one cluster slot, so the Lua scripts touch a single slot."""
    t: Tus = tus(client_logged_in)
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    assert t.patch(url, b"abc", 0).status_code == 204
    store = record_store(redis_client)
    token = taken(store, upload_id)
    try:
        keys = redis_keys(redis_client)
        assert record_key(upload_id) in keys
        assert lock_key(upload_id) in keys
        per_upload = {k for k in keys if upload_id in k}
        assert per_upload >= {record_key(upload_id), lock_key(upload_id)}
        for key in per_upload:
            assert f"{{{upload_id}}}" in key
            assert key.count("{") == 1 and key.count("}") == 1
            assert key_slot(key.encode()) == key_slot(record_key(upload_id).encode())
        assert all(k.startswith(f"{prefix()}:") for k in keys)
    finally:
        store.release_lock(upload_id, token)


def test_store_key_names(store: RedisRecordStore) -> None:
    assert store.record_key("abc") == f"{prefix()}:upload:{{abc}}"
    assert store.lock_key("abc") == f"{prefix()}:lock:{{abc}}"
    assert key_slot(store.record_key("abc").encode()) == key_slot(store.lock_key("abc").encode())


# Records -----------------------------------------------------------------------------


def test_create_stores_the_record_and_indexes_its_expiry(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = make_record(store, length=10, expires_in=500)
    stored = store.get(record.id)
    assert stored is not None
    assert (stored.id, stored.length, stored.offset, stored.state) == (record.id, 10, 0, State.UPLOADING)
    assert redis_client.type(expiry_key()) == b"zset"
    assert redis_client.zscore(expiry_key(), record.id) == pytest.approx(record.expires_at)
    assert store.due_for_expiry(record.expires_at - 1, 10) == []
    assert store.due_for_expiry(record.expires_at, 10) == [record.id]


def test_a_deferred_length_survives_the_round_trip(store: RedisRecordStore) -> None:
    record = make_record(store, length=None)
    stored = store.get(record.id)
    assert stored is not None and stored.length is None


def test_get_of_an_unknown_record_is_none(store: RedisRecordStore) -> None:
    assert store.get(new_upload_id()) is None


def test_update_refuses_offset_and_state(store: RedisRecordStore) -> None:
    record = make_record(store)
    with pytest.raises(ValueError):
        store.update(record.id, offset=5)
    with pytest.raises(ValueError):
        store.update(record.id, state=State.COMPLETE)
    store.update(record.id, stored_name="x/y.txt")
    stored = store.get(record.id)
    assert stored is not None and stored.stored_name == "x/y.txt" and stored.offset == 0


def test_retire_leaves_a_tombstone_that_expires(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = make_record(store)
    store.retire(record.id, State.TERMINATED, keep_for=120)
    stored = store.get(record.id)
    assert stored is not None and stored.state is State.TERMINATED
    assert 0 < redis_client.pttl(record_key(record.id)) <= 120_000
    assert redis_client.zscore(expiry_key(), record.id) is None


# advance -------------------------------------------------------------------------------


def test_advance_moves_the_offset_and_the_expiry(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = make_record(store)
    token = taken(store, record.id)
    new_expiry = time.time() + 9999
    result = advance(store, record.id, token, 0, 4, expires_at=new_expiry)
    assert result.status is AdvanceStatus.OK
    assert result.offset == 4
    stored = store.get(record.id)
    assert stored is not None
    assert stored.offset == 4
    assert stored.expires_at == pytest.approx(new_expiry)
    # The index keeps its earlier entry (never later than the record's expiry);
    # cleanup reads the record and moves the entry on instead of expiring it.
    indexed = redis_client.zscore(expiry_key(), record.id)
    assert indexed is not None and indexed <= stored.expires_at
    store.release_lock(record.id, token)
    service = get_service()
    assert service.expire_due(now=indexed + 1) == 0
    assert redis_client.zscore(expiry_key(), record.id) == pytest.approx(new_expiry)
    assert store.get(record.id).state is State.UPLOADING


def test_advance_refuses_a_wrong_expected_offset(store: RedisRecordStore) -> None:
    record = make_record(store)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 4).status is AdvanceStatus.OK
    for expected in (0, 3, 5):
        result = advance(store, record.id, token, expected, expected + 1)
        assert result.status is AdvanceStatus.OFFSET_MISMATCH
        assert result.offset == 4
        assert not result.ok
    assert offset_of(store, record.id) == 4


def test_advance_refuses_a_regression(store: RedisRecordStore) -> None:
    record = make_record(store)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 6).ok
    result = advance(store, record.id, token, 6, 2)
    assert result.status is AdvanceStatus.OFFSET_MISMATCH
    assert offset_of(store, record.id) == 6


def test_advance_refuses_to_pass_the_length(store: RedisRecordStore) -> None:
    record = make_record(store, length=10)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 8).ok
    result = advance(store, record.id, token, 8, 11)
    assert result.status is AdvanceStatus.PAST_LENGTH
    assert result.offset == 8
    stored = store.get(record.id)
    assert stored is not None and stored.offset == 8 and stored.state is State.UPLOADING


def test_advance_without_a_length_has_no_upper_bound(store: RedisRecordStore) -> None:
    record = make_record(store, length=None)
    token = taken(store, record.id)
    result = advance(store, record.id, token, 0, 10**12)
    assert result.status is AdvanceStatus.OK
    stored = store.get(record.id)
    assert stored is not None and stored.state is State.UPLOADING


def test_advance_refuses_a_token_that_does_not_hold_the_lock(store: RedisRecordStore) -> None:
    record = make_record(store)
    token = taken(store, record.id)
    assert advance(store, record.id, "not-the-token", 0, 3).status is AdvanceStatus.LOCK_LOST
    store.release_lock(record.id, token)
    # The lock is gone (released, or expired): the old token no longer counts...
    assert advance(store, record.id, token, 0, 3).status is AdvanceStatus.LOCK_LOST
    # ... nor once someone else took the upload.
    other = taken(store, record.id)
    assert advance(store, record.id, token, 0, 3).status is AdvanceStatus.LOCK_LOST
    assert offset_of(store, record.id) == 0
    assert advance(store, record.id, other, 0, 3).ok


def test_advance_refuses_an_expired_lock(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = make_record(store)
    token = taken(store, record.id)
    redis_client.delete(lock_key(record.id))  # what the lock's TTL does when it runs out
    assert advance(store, record.id, token, 0, 3).status is AdvanceStatus.LOCK_LOST
    assert offset_of(store, record.id) == 0


def test_advance_refuses_the_token_of_a_released_held_lock(store: RedisRecordStore) -> None:
    """A HeldLock that was let go must not be able to move the offset any more."""
    record = make_record(store)
    lock, _ = locking.lock_for_write(store, record.id, ttl=30, wait=0)
    lock.release()
    result = advance(store, record.id, lock.token, 0, 3)
    assert result.status is AdvanceStatus.LOCK_LOST
    assert offset_of(store, record.id) == 0


def test_advance_of_a_missing_record(store: RedisRecordStore) -> None:
    upload_id = new_upload_id()
    token = taken(store, upload_id)
    assert advance(store, upload_id, token, 0, 1).status is AdvanceStatus.MISSING
    assert store.get(upload_id) is None


# Completion ------------------------------------------------------------------------------


def test_reaching_the_length_completes_once(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    record = make_record(store, length=10)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 4).status is AdvanceStatus.OK
    first = advance(store, record.id, token, 4, 10)
    assert first.status is AdvanceStatus.COMPLETED
    assert first.ok and first.offset == 10
    again = advance(store, record.id, token, 10, 10)
    assert again.status is AdvanceStatus.NOT_UPLOADING
    assert not again.ok
    stored = store.get(record.id)
    assert stored is not None and stored.state is State.COMPLETE and stored.completed_at is not None
    # A complete upload never expires, so it leaves the expiry index.
    assert redis_client.zscore(expiry_key(), record.id) is None
    assert store.mark_complete(record.id, now=time.time()).status is AdvanceStatus.NOT_UPLOADING


def test_without_auto_complete_mark_complete_completes_once(store: RedisRecordStore) -> None:
    record = make_record(store, length=5)
    token = taken(store, record.id)
    result = advance(store, record.id, token, 0, 5, auto_complete=False)
    assert result.status is AdvanceStatus.OK
    stored = store.get(record.id)
    assert stored is not None and stored.state is State.UPLOADING
    assert store.mark_complete(record.id, now=time.time()).status is AdvanceStatus.COMPLETED
    assert store.mark_complete(record.id, now=time.time()).status is AdvanceStatus.NOT_UPLOADING


def test_mark_complete_refuses_an_unfinished_upload(store: RedisRecordStore) -> None:
    record = make_record(store, length=5)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 3).ok
    assert store.mark_complete(record.id, now=time.time()).status is AdvanceStatus.OFFSET_MISMATCH
    deferred = make_record(store, length=None)
    assert store.mark_complete(deferred.id, now=time.time()).status is AdvanceStatus.OFFSET_MISMATCH
    assert store.mark_complete(new_upload_id(), now=time.time()).status is AdvanceStatus.MISSING
    for upload_id in (record.id, deferred.id):
        stored = store.get(upload_id)
        assert stored is not None and stored.state is State.UPLOADING


def test_concurrent_mark_complete_reports_completion_once(store: RedisRecordStore) -> None:
    record = make_record(store, length=0)
    results = run_threads(16, lambda: store.mark_complete(record.id, now=time.time()).status)
    assert results.count(AdvanceStatus.COMPLETED) == 1
    assert results.count(AdvanceStatus.NOT_UPLOADING) == 15


def test_concurrent_final_advances_report_completion_once(store: RedisRecordStore) -> None:
    record = make_record(store, length=7)
    token = taken(store, record.id)
    results = run_threads(16, lambda: advance(store, record.id, token, 0, 7).status)
    assert results.count(AdvanceStatus.COMPLETED) == 1
    assert set(results) == {AdvanceStatus.COMPLETED, AdvanceStatus.NOT_UPLOADING}
    assert offset_of(store, record.id) == 7


# set_length ----------------------------------------------------------------------------


def test_advance_fixes_a_deferred_length_once(store: RedisRecordStore) -> None:
    """A deferred length is set in the same atomic step as the offset, and only once."""
    record = make_record(store, length=None)
    token = taken(store, record.id)
    assert advance(store, record.id, token, 0, 4).ok
    refused = store.advance(
        record.id, expected=4, new=11, lock_token=token, now=time.time(), expires_at=None, auto_complete=True, length=10
    )
    assert refused.status is AdvanceStatus.PAST_LENGTH
    stored = store.get(record.id)
    assert stored is not None and stored.length is None and stored.offset == 4
    fixed = store.advance(
        record.id, expected=4, new=6, lock_token=token, now=time.time(), expires_at=None, auto_complete=True, length=10
    )
    assert fixed.status is AdvanceStatus.OK
    changed = store.advance(
        record.id, expected=6, new=6, lock_token=token, now=time.time(), expires_at=None, auto_complete=True, length=11
    )
    assert changed.status is AdvanceStatus.LENGTH_MISMATCH
    done = store.advance(
        record.id, expected=6, new=10, lock_token=token, now=time.time(), expires_at=None, auto_complete=True, length=10
    )
    assert done.status is AdvanceStatus.COMPLETED
    stored = store.get(record.id)
    assert stored is not None and stored.length == 10 and stored.offset == 10


# Lock ------------------------------------------------------------------------------------


def test_the_lock_has_one_holder(store: RedisRecordStore, redis_client: redis.Redis) -> None:
    upload_id = make_record(store).id
    token = store.acquire_lock(upload_id, 30)
    assert token is not None
    assert 0 < redis_client.pttl(lock_key(upload_id)) <= 30_000
    assert store.acquire_lock(upload_id, 30) is None
    assert store.refresh_lock(upload_id, "wrong", 30) is False
    store.release_lock(upload_id, "wrong")
    assert store.acquire_lock(upload_id, 30) is None  # a wrong token releases nothing
    assert store.refresh_lock(upload_id, token, 60) is True
    assert 30_000 < redis_client.pttl(lock_key(upload_id)) <= 60_000
    store.release_lock(upload_id, token)
    assert store.refresh_lock(upload_id, token, 30) is False
    assert store.acquire_lock(upload_id, 30) is not None


def test_concurrent_lock_attempts_have_one_winner(store: RedisRecordStore) -> None:
    upload_id = make_record(store).id
    tokens = run_threads(16, lambda: store.acquire_lock(upload_id, 30))
    assert len([t for t in tokens if t is not None]) == 1


# Expiry index ------------------------------------------------------------------------------


def test_due_for_expiry_lists_only_due_uploads(store: RedisRecordStore) -> None:
    now = time.time()
    old = make_record(store, expires_in=-100)
    older = make_record(store, expires_in=-200)
    make_record(store, expires_in=100)
    assert store.due_for_expiry(now, 10) == [older.id, old.id]
    assert store.due_for_expiry(now, 1) == [older.id]
    store.unindex([older.id])
    assert store.due_for_expiry(now, 10) == [old.id]
    store.reindex(old.id, now + 1000)
    assert store.due_for_expiry(now, 10) == []


def test_a_lock_kept_for_another_request_watches_afresh(store: RedisRecordStore) -> None:
    record = make_record(store)
    token, _ = store.acquire_lock_and_get(record.id, 30)
    assert token is not None
    lock = locking.HeldLock(store, record.id, token, 30)
    assert not lock.release_requested()
    assert store.release_requests.watching == 1
    lock.resumed()  # the next request goes on with it
    assert store.release_requests.watching == 0
    assert not lock.release_requested()
    assert store.release_requests.watching == 1
    lock.release()
    assert store.release_requests.watching == 0
