"""One contract for every store: each test runs against every record store and every data store.

Modelled on tus-node-server's shared store tests: whatever backend holds the
records (Redis, memory) or the bytes (filesystem, memory, S3: moto's S3
emulator in server mode, see ``tests/support/s3.py``), the service sees
the same statuses, the same lock and the same indexes. The Redis store runs
against the private redis-server of ``tests/conftest.py`` under the test's
key prefix; a new backend only needs to join the ``params`` below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.checks import Warning

from tests.support.s3 import REGION as S3_REGION
from tests.support.s3 import s3_bucket, s3_server  # noqa: F401 - fixtures
from tests.support.together import run_threads
from tusbridge.data.base import Concatenator, DataStore, InfoKeeper, LocalFiles, Terminator
from tusbridge.data.filesystem import FileSystemDataStore
from tusbridge.data.memory import MemoryDataStore
from tusbridge.record import State, UploadRecord, new_upload_id
from tusbridge.records.base import AdvanceResult, AdvanceStatus, RecordStore
from tusbridge.records.memory import MemoryRecordStore
from tusbridge.records.redis import RedisRecordStore, client_for

# Fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "cluster", "memory"])
def records(request: pytest.FixtureRequest) -> Iterator[RecordStore]:
    """Each record store, empty (Redis: the test's own key prefix, removed afterwards by conftest;
    the Cluster: the same store on a three-node Redis Cluster, where every script must touch one slot)."""
    if request.param == "memory":
        yield MemoryRecordStore()
        return
    if os.environ.get("TUSBRIDGE_TEST_STORES") == "memory":
        pytest.skip("the fast tier runs without Redis")
    prefix = str(django_settings.TUSBRIDGE_KEY_PREFIX)
    if request.param == "cluster":
        yield RedisRecordStore(client_for(request.getfixturevalue("redis_cluster").url, 2.0, 16), prefix)
        return
    client = request.getfixturevalue("redis_server").client()
    try:
        yield RedisRecordStore(client, prefix)
    finally:
        client.close()


@pytest.fixture(params=["filesystem", "memory", "s3"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> DataStore:
    """Each data store, empty (S3: a bucket of its own in the moto emulator of ``tests/support/s3.py``)."""
    if request.param == "memory":
        return MemoryDataStore()
    if request.param == "s3":
        from tusbridge.data.s3 import S3DataStore  # boto3: only where the emulator runs

        bucket = request.getfixturevalue("s3_bucket")
        server = request.getfixturevalue("s3_server")
        return S3DataStore(bucket, endpoint_url=server.url, region=S3_REGION, part_size=5 * 1024 * 1024)
    return FileSystemDataStore(str(tmp_path / "data"))


# Helpers -------------------------------------------------------------------------------


def make_record(
    store: RecordStore,
    length: int | None = 10,
    *,
    expires_in: float = 3600.0,
    created_at: float | None = None,
    owner: str = "1",
) -> UploadRecord:
    """Store a fresh uploading record and return it."""
    now = time.time()
    record = UploadRecord(
        id=new_upload_id(),
        owner=owner,
        protocol="tus",
        length=length,
        created_at=now if created_at is None else created_at,
        updated_at=now,
        expires_at=now + expires_in,
    )
    store.create(record)
    return record


def taken(store: RecordStore, upload_id: str, ttl: float = 30) -> str:
    token = store.acquire_lock(upload_id, ttl)
    assert token is not None
    return token


def advance(store: RecordStore, upload_id: str, token: str, expected: int, new: int, **kwargs: Any) -> AdvanceResult:
    options: dict[str, Any] = {"now": time.time(), "expires_at": None, "auto_complete": True, **kwargs}
    return store.advance(upload_id, expected=expected, new=new, lock_token=token, **options)


def stored(store: RecordStore, upload_id: str) -> UploadRecord:
    record = store.get(upload_id)
    assert record is not None
    return record


def eventually(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


# Records -------------------------------------------------------------------------------


def test_create_and_get_round_trip_every_field(records: RecordStore) -> None:
    now = time.time()
    record = UploadRecord(
        id=new_upload_id(),
        owner="7",
        protocol="legacy",
        length=None,
        metadata_raw="filename ZS50eHQ=",
        metadata={"filename": "e.txt", "empty": None},
        filename="e.txt",
        created_at=now,
        updated_at=now,
        expires_at=now + 60,
        concat="final",
        concat_raw="final;/files/a /files/b",
        partials=["a", "b"],
        extra={"attrs": {"k": [1, 2]}},
        md5_state="abcd",
        md5_offset=0,
    )
    records.create(record)
    assert records.get(record.id) == record
    assert records.get(new_upload_id()) is None


def test_records_are_copies(records: RecordStore) -> None:
    record = make_record(records)
    record.metadata["added"] = "after create"
    record.filename = "changed.txt"
    first = stored(records, record.id)
    first.partials.append("x")
    first.extra["k"] = "v"
    again = stored(records, record.id)
    assert again.metadata == {} and again.filename == ""
    assert again.partials == [] and again.extra == {}


def test_update_sets_plain_fields_only(records: RecordStore) -> None:
    record = make_record(records)
    records.update(record.id, stored_name="x/y.txt", extra={"a": 1}, length=12)
    got = stored(records, record.id)
    assert (got.stored_name, got.extra, got.length, got.offset) == ("x/y.txt", {"a": 1}, 12, 0)
    for values in ({"offset": 5}, {"state": State.COMPLETE}):
        with pytest.raises(ValueError):
            records.update(record.id, **values)
    got = stored(records, record.id)
    assert got.offset == 0 and got.state is State.UPLOADING


def test_delete_forgets_the_record_and_its_indexes(records: RecordStore) -> None:
    partial = make_record(records, expires_in=-10)
    records.add_waiting_final(partial.id, "final-1")
    records.delete(partial.id)
    assert records.get(partial.id) is None
    assert partial.id not in records.due_for_expiry(time.time(), 100)
    assert partial.id not in records.created_before(time.time() + 1, 100)
    assert records.waiting_finals(partial.id) == []
    records.delete(partial.id)  # a second delete is harmless


def test_retire_leaves_a_tombstone_that_vanishes(records: RecordStore) -> None:
    record = make_record(records, expires_in=-10)
    kept = make_record(records, expires_in=-10)
    records.add_waiting_final(record.id, "final-1")
    records.retire(record.id, State.TERMINATED, keep_for=0.3)
    records.retire(kept.id, State.EXPIRED, keep_for=60)
    tombstone = stored(records, record.id)
    assert tombstone.state is State.TERMINATED and tombstone.offset == 0 and tombstone.owner == "1"
    assert stored(records, kept.id).state is State.EXPIRED
    # Tombstones leave both indexes and forget waiting finals at once.
    now = time.time()
    assert records.due_for_expiry(now, 100) == []
    assert records.created_before(now + 1, 100) == []
    assert records.waiting_finals(record.id) == []
    time.sleep(0.5)
    assert records.get(record.id) is None
    assert stored(records, kept.id).state is State.EXPIRED


def test_ping(records: RecordStore) -> None:
    records.ping()


# advance: every status and the order of the checks -------------------------------------


def test_advance_moves_offset_and_sets_fields_and_expiry(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id)
    now = time.time() + 5
    result = advance(
        records, record.id, token, 0, 4, now=now, expires_at=now + 999, fields={"md5_state": "ff", "md5_offset": 4}
    )
    assert result == AdvanceResult(AdvanceStatus.OK, 4)
    assert result.ok
    got = stored(records, record.id)
    assert (got.offset, got.md5_state, got.md5_offset, got.state) == (4, "ff", 4, State.UPLOADING)
    assert got.updated_at == pytest.approx(now)
    assert got.expires_at == pytest.approx(now + 999)
    # Without expires_at the expiry stays; an empty advance (new == offset) is fine.
    assert advance(records, record.id, token, 4, 4).status is AdvanceStatus.OK
    assert stored(records, record.id).expires_at == pytest.approx(now + 999)
    # The lock is still held by the caller (neither released nor kept).
    assert records.lock_holder(record.id) == token


def test_advance_of_a_missing_record(records: RecordStore) -> None:
    upload_id = new_upload_id()
    assert advance(records, upload_id, "no-lock", 0, 1) == AdvanceResult(AdvanceStatus.MISSING, 0)
    token = taken(records, upload_id)
    assert advance(records, upload_id, token, 0, 1) == AdvanceResult(AdvanceStatus.MISSING, 0)
    assert records.get(upload_id) is None


def test_advance_with_a_token_that_does_not_hold_the_lock(records: RecordStore) -> None:
    record = make_record(records)
    assert advance(records, record.id, "nobody", 0, 3) == AdvanceResult(AdvanceStatus.LOCK_LOST, 0)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 2).ok
    result = advance(records, record.id, "not-the-token", 2, 3)
    assert result == AdvanceResult(AdvanceStatus.LOCK_LOST, 0)
    records.release_lock(record.id, token)
    assert advance(records, record.id, token, 2, 3).status is AdvanceStatus.LOCK_LOST
    other = taken(records, record.id)
    assert advance(records, record.id, token, 2, 3).status is AdvanceStatus.LOCK_LOST
    assert stored(records, record.id).offset == 2
    assert advance(records, record.id, other, 2, 3).ok


def test_advance_of_a_record_that_is_not_uploading(records: RecordStore) -> None:
    record = make_record(records, length=3)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 3).status is AdvanceStatus.COMPLETED
    assert advance(records, record.id, token, 3, 3) == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 3)
    # Checked before the offset: a wrong expected offset still says not-uploading.
    assert advance(records, record.id, token, 0, 1) == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 3)
    # The lock is checked first of all.
    assert advance(records, record.id, "other", 3, 3) == AdvanceResult(AdvanceStatus.LOCK_LOST, 0)
    retired = make_record(records)
    token = taken(records, retired.id)
    records.retire(retired.id, State.TERMINATED, keep_for=60)
    assert advance(records, retired.id, token, 0, 1) == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 0)


def test_advance_refuses_a_wrong_expected_offset_and_a_regression(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 4).ok
    for expected in (0, 3, 5):
        result = advance(records, record.id, token, expected, expected + 1)
        assert result == AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, 4)
        assert not result.ok
    assert advance(records, record.id, token, 4, 2) == AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, 4)
    # A wrong offset is reported before a length that does not match.
    assert advance(records, record.id, token, 3, 5, length=99).status is AdvanceStatus.OFFSET_MISMATCH
    assert stored(records, record.id).offset == 4


def test_advance_refuses_to_pass_the_length(records: RecordStore) -> None:
    record = make_record(records, length=10)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 8).ok
    assert advance(records, record.id, token, 8, 11) == AdvanceResult(AdvanceStatus.PAST_LENGTH, 8)
    got = stored(records, record.id)
    assert got.offset == 8 and got.state is State.UPLOADING
    # The length is compared first: a different one is a mismatch even when the offset passes both.
    assert advance(records, record.id, token, 8, 12, length=11) == AdvanceResult(AdvanceStatus.LENGTH_MISMATCH, 8)
    # The same length again is no mismatch.
    assert advance(records, record.id, token, 8, 9, length=10).status is AdvanceStatus.OK


def test_advance_without_a_length_has_no_upper_bound(records: RecordStore) -> None:
    record = make_record(records, length=None)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 10**12) == AdvanceResult(AdvanceStatus.OK, 10**12)
    got = stored(records, record.id)
    assert got.state is State.UPLOADING and got.length is None and got.offset == 10**12


def test_advance_fixes_a_deferred_length_once(records: RecordStore) -> None:
    record = make_record(records, length=None)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 4).ok
    assert advance(records, record.id, token, 4, 11, length=10) == AdvanceResult(AdvanceStatus.PAST_LENGTH, 4)
    got = stored(records, record.id)
    assert got.length is None and got.offset == 4
    assert advance(records, record.id, token, 4, 6, length=10) == AdvanceResult(AdvanceStatus.OK, 6)
    assert stored(records, record.id).length == 10
    assert advance(records, record.id, token, 6, 6, length=11) == AdvanceResult(AdvanceStatus.LENGTH_MISMATCH, 6)
    assert advance(records, record.id, token, 6, 10, length=10) == AdvanceResult(AdvanceStatus.COMPLETED, 10)
    got = stored(records, record.id)
    assert (got.length, got.offset, got.state) == (10, 10, State.COMPLETE)


def test_reaching_the_length_completes_once(records: RecordStore) -> None:
    record = make_record(records, length=10, expires_in=-5)
    token = taken(records, record.id)
    now = time.time()
    assert advance(records, record.id, token, 0, 4).status is AdvanceStatus.OK
    first = advance(records, record.id, token, 4, 10, now=now)
    assert first == AdvanceResult(AdvanceStatus.COMPLETED, 10)
    assert first.ok
    again = advance(records, record.id, token, 10, 10)
    assert again == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 10) and not again.ok
    got = stored(records, record.id)
    assert got.state is State.COMPLETE and got.completed_at == pytest.approx(now)
    # A complete upload never expires: it leaves the expiry index, but it is still known.
    assert records.due_for_expiry(time.time(), 100) == []
    assert records.created_before(time.time() + 1, 100) == [record.id]
    assert records.mark_complete(record.id, now=time.time()) == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 10)


def test_an_empty_upload_completes_on_its_first_advance(records: RecordStore) -> None:
    record = make_record(records, length=0)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 0) == AdvanceResult(AdvanceStatus.COMPLETED, 0)


def test_without_auto_complete_mark_complete_completes_once(records: RecordStore) -> None:
    record = make_record(records, length=5, expires_in=-5)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 5, auto_complete=False) == AdvanceResult(AdvanceStatus.OK, 5)
    assert stored(records, record.id).state is State.UPLOADING
    now = time.time()
    assert records.mark_complete(record.id, now=now) == AdvanceResult(AdvanceStatus.COMPLETED, 5)
    got = stored(records, record.id)
    assert got.state is State.COMPLETE and got.completed_at == pytest.approx(now)
    assert records.due_for_expiry(time.time(), 100) == []
    assert records.mark_complete(record.id, now=now) == AdvanceResult(AdvanceStatus.NOT_UPLOADING, 5)


def test_mark_complete_refuses_an_unfinished_or_missing_upload(records: RecordStore) -> None:
    record = make_record(records, length=5)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 3).ok
    assert records.mark_complete(record.id, now=time.time()) == AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, 3)
    deferred = make_record(records, length=None)
    assert records.mark_complete(deferred.id, now=time.time()) == AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, 0)
    assert records.mark_complete(new_upload_id(), now=time.time()) == AdvanceResult(AdvanceStatus.MISSING, 0)
    for upload_id in (record.id, deferred.id):
        assert stored(records, upload_id).state is State.UPLOADING


def test_concurrent_completions_report_completion_once(records: RecordStore) -> None:
    empty = make_record(records, length=0)
    results = run_threads(16, lambda: records.mark_complete(empty.id, now=time.time()).status)
    assert results.count(AdvanceStatus.COMPLETED) == 1
    assert results.count(AdvanceStatus.NOT_UPLOADING) == 15
    record = make_record(records, length=7)
    token = taken(records, record.id)
    results = run_threads(16, lambda: advance(records, record.id, token, 0, 7).status)
    assert results.count(AdvanceStatus.COMPLETED) == 1
    assert set(results) == {AdvanceStatus.COMPLETED, AdvanceStatus.NOT_UPLOADING}


# advance and the lock afterwards ---------------------------------------------------------


def test_release_lock_releases_only_on_success(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id)
    refused = advance(records, record.id, token, 3, 4, release_lock=True)
    assert refused.status is AdvanceStatus.OFFSET_MISMATCH
    assert records.lock_holder(record.id) == token
    result = advance(records, record.id, token, 0, 4, release_lock=True)
    assert result == AdvanceResult(AdvanceStatus.OK, 4, lock_kept=False, release_wanted=False)
    assert records.lock_holder(record.id) is None
    assert records.acquire_lock(record.id, 30) is not None


def test_keep_lock_for_renews_the_lock(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id, ttl=0.3)
    result = advance(records, record.id, token, 0, 4, keep_lock_for=30)
    assert result == AdvanceResult(AdvanceStatus.OK, 4, lock_kept=True, release_wanted=False)
    time.sleep(0.45)  # past the first TTL
    assert records.lock_holder(record.id) == token
    assert records.acquire_lock(record.id, 30) is None
    # A refused advance keeps nothing (and the lock stays as it was).
    refused = advance(records, record.id, token, 0, 5, keep_lock_for=30)
    assert refused == AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, 4)
    assert records.lock_holder(record.id) == token


def test_keep_lock_for_wins_over_release_lock(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id)
    result = advance(records, record.id, token, 0, 4, release_lock=True, keep_lock_for=30)
    assert result.lock_kept
    assert records.lock_holder(record.id) == token


def test_a_completing_advance_releases_a_released_or_kept_lock(records: RecordStore) -> None:
    for options in ({"release_lock": True}, {"keep_lock_for": 30.0}):
        record = make_record(records, length=4)
        token = taken(records, record.id)
        result = advance(records, record.id, token, 0, 4, **options)
        assert result == AdvanceResult(AdvanceStatus.COMPLETED, 4, lock_kept=False, release_wanted=False)
        assert records.lock_holder(record.id) is None
    # Asked for neither, the caller still holds it.
    record = make_record(records, length=4)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 4).status is AdvanceStatus.COMPLETED
    assert records.lock_holder(record.id) == token


def test_a_release_request_reaches_listener_and_next_kept_advance(records: RecordStore) -> None:
    record = make_record(records)
    bystander = make_record(records)
    token = taken(records, record.id)
    other_token = taken(records, bystander.id)
    listener = records.listen_for_release(record.id)
    other = records.listen_for_release(bystander.id)
    try:
        assert not listener.requested()
        assert advance(records, record.id, token, 0, 1, keep_lock_for=30).release_wanted is False

        def asked() -> bool:
            records.request_release(record.id)  # a waiting request repeats its request
            return listener.requested()

        assert eventually(asked)
        assert not other.requested()
        result = advance(records, record.id, token, 1, 2, keep_lock_for=30)
        assert result == AdvanceResult(AdvanceStatus.OK, 2, lock_kept=True, release_wanted=True)
        # Only an advance that keeps the lock hears it; another upload's holder does not.
        assert advance(records, record.id, token, 2, 3) == AdvanceResult(AdvanceStatus.OK, 3)
        assert advance(records, bystander.id, other_token, 0, 1, keep_lock_for=30).release_wanted is False
        # The request does not take the lock away by itself.
        assert records.lock_holder(record.id) == token
    finally:
        listener.close()
        other.close()


# The lock -----------------------------------------------------------------------------------


def test_the_lock_has_one_holder(records: RecordStore) -> None:
    upload_id = make_record(records).id
    token = records.acquire_lock(upload_id, 30)
    assert token is not None
    assert records.lock_holder(upload_id) == token
    assert records.acquire_lock(upload_id, 30) is None
    assert records.refresh_lock(upload_id, "wrong", 30) is False
    records.release_lock(upload_id, "wrong")
    assert records.lock_holder(upload_id) == token  # a wrong token releases nothing
    assert records.acquire_lock(upload_id, 30) is None
    assert records.refresh_lock(upload_id, token, 60) is True
    records.release_lock(upload_id, token)
    assert records.lock_holder(upload_id) is None
    assert records.refresh_lock(upload_id, token, 30) is False
    again = records.acquire_lock(upload_id, 30)
    assert again is not None and again != token
    assert records.lock_holder(new_upload_id()) is None


def test_a_lock_can_be_taken_for_an_unknown_upload(records: RecordStore) -> None:
    upload_id = new_upload_id()
    token, record = records.acquire_lock_and_get(upload_id, 30)
    assert token is not None and record is None
    assert records.lock_holder(upload_id) == token


def test_the_lock_expires_after_its_ttl(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id, ttl=0.2)
    time.sleep(0.35)
    assert records.lock_holder(record.id) is None
    assert records.refresh_lock(record.id, token, 30) is False
    assert advance(records, record.id, token, 0, 1).status is AdvanceStatus.LOCK_LOST
    other = taken(records, record.id)
    assert records.lock_holder(record.id) == other


def test_refresh_extends_the_ttl(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id, ttl=0.3)
    time.sleep(0.15)
    assert records.refresh_lock(record.id, token, 0.5) is True
    time.sleep(0.3)  # past the first TTL, within the renewed one
    assert records.lock_holder(record.id) == token
    time.sleep(0.4)
    assert records.lock_holder(record.id) is None


def test_concurrent_lock_attempts_have_one_winner(records: RecordStore) -> None:
    upload_id = make_record(records).id
    tokens = run_threads(16, lambda: records.acquire_lock(upload_id, 30))
    winners = [t for t in tokens if t is not None]
    assert len(winners) == 1
    assert records.lock_holder(upload_id) == winners[0]


def test_acquire_lock_and_get_and_request_lock_and_get(records: RecordStore) -> None:
    record = make_record(records)
    before = time.monotonic()
    attempt = records.request_lock_and_get(record.id, 30)
    assert before <= attempt.sent_at <= time.monotonic()
    token, got = attempt()
    assert token is not None and got == record
    assert records.lock_holder(record.id) == token
    second, got = records.request_lock_and_get(record.id, 30)()
    assert second is None and got == record
    third, got = records.acquire_lock_and_get(record.id, 30)
    assert third is None and got == record
    records.release_lock(record.id, token)
    fourth, got = records.acquire_lock_and_get(record.id, 30)
    assert fourth is not None and got == record


def test_get_if_unlocked(records: RecordStore) -> None:
    record = make_record(records)
    assert records.get_if_unlocked(record.id) == (True, record)
    assert records.lock_holder(record.id) is None  # reading takes no lock
    token = taken(records, record.id)
    assert records.get_if_unlocked(record.id) == (False, record)
    records.release_lock(record.id, token)
    assert records.get_if_unlocked(record.id) == (True, record)
    assert records.get_if_unlocked(new_upload_id()) == (True, None)


def test_release_lock_setting(records: RecordStore) -> None:
    record = make_record(records)
    token = taken(records, record.id)
    assert advance(records, record.id, token, 0, 4).ok
    # Not the holder: nothing set, nothing released.
    records.release_lock_setting(record.id, "wrong", offset=4, fields={"md5_state": "aa", "md5_offset": 4})
    assert stored(records, record.id).md5_state == ""
    assert records.lock_holder(record.id) == token
    # The holder, but the offset moved on: released without setting.
    records.release_lock_setting(record.id, token, offset=3, fields={"md5_state": "bb", "md5_offset": 3})
    got = stored(records, record.id)
    assert (got.md5_state, got.md5_offset) == ("", -1)
    assert records.lock_holder(record.id) is None
    # The holder at that offset: set, then released.
    token = taken(records, record.id)
    records.release_lock_setting(record.id, token, offset=4, fields={"md5_state": "cc", "md5_offset": 4})
    got = stored(records, record.id)
    assert (got.md5_state, got.md5_offset, got.offset) == ("cc", 4, 4)
    assert records.lock_holder(record.id) is None


# Quotas -------------------------------------------------------------------------------------


def test_reserve_counts_uploads(records: RecordStore) -> None:
    limits = {"max_uploads": 2, "max_bytes": 0}
    assert records.reserve("alice", "a", 10, **limits) == "ok"
    assert records.reserve("alice", "b", 10, **limits) == "ok"
    assert records.reserve("alice", "c", 10, **limits) == "uploads"
    assert records.reserve("alice", "a", 10, **limits) == "ok"  # already counted
    assert records.reserve("bob", "d", 10, **limits) == "ok"  # per owner
    records.unreserve("alice", "b")
    assert records.reserve("alice", "c", 10, **limits) == "ok"
    assert records.reserve("alice", "e", 10, **limits) == "uploads"
    records.unreserve("alice", "never-reserved")  # harmless


def test_reserve_counts_bytes(records: RecordStore) -> None:
    limits = {"max_uploads": 0, "max_bytes": 100}
    assert records.reserve("alice", "a", 60, **limits) == "ok"
    assert records.reserve("alice", "b", 50, **limits) == "bytes"
    assert records.reserve("alice", "b", 40, **limits) == "ok"  # exactly the limit
    assert records.reserve("alice", "c", 1, **limits) == "bytes"
    # Reserving a counted id again updates its length.
    assert records.reserve("alice", "a", 10, **limits) == "ok"
    assert records.reserve("alice", "c", 51, **limits) == "bytes"
    assert records.reserve("alice", "c", 50, **limits) == "ok"
    records.unreserve("alice", "b")
    assert records.reserve("alice", "d", 40, **limits) == "ok"
    assert records.reserve("bob", "e", 100, **limits) == "ok"


def test_the_upload_limit_is_checked_before_the_byte_limit(records: RecordStore) -> None:
    assert records.reserve("alice", "a", 10, max_uploads=1, max_bytes=10) == "ok"
    assert records.reserve("alice", "b", 10, max_uploads=1, max_bytes=10) == "uploads"


def test_no_limits(records: RecordStore) -> None:
    for n in range(20):
        assert records.reserve("alice", f"id-{n}", 10**12, max_uploads=0, max_bytes=0) == "ok"


def test_count_event_counts_within_a_window_that_starts_with_the_first(records: RecordStore) -> None:
    first = records.count_event("creations@198.51.100.7", 0.5)
    assert first[0] == 1 and 0.4 < first[1] <= 0.5
    assert [records.count_event("creations@198.51.100.7", 0.5)[0] for _ in range(3)] == [2, 3, 4]
    assert records.count_event("creations@198.51.100.8", 0.5)[0] == 1  # per key
    time.sleep(0.6)
    count, left = records.count_event("creations@198.51.100.7", 0.5)
    assert count == 1 and left > 0.4  # a new window


def test_counted_events_reads_without_counting(records: RecordStore) -> None:
    assert records.counted_events("creations@198.51.100.9") == (0, 0.0)
    records.count_event("creations@198.51.100.9", 0.5)
    records.count_event("creations@198.51.100.9", 0.5)
    count, left = records.counted_events("creations@198.51.100.9")
    assert count == 2 and 0 < left <= 0.5
    assert records.counted_events("creations@198.51.100.9")[0] == 2
    time.sleep(0.6)
    assert records.counted_events("creations@198.51.100.9") == (0, 0.0)


# Expiry index --------------------------------------------------------------------------------


def test_due_for_expiry(records: RecordStore) -> None:
    now = time.time()
    old = make_record(records, expires_in=-100)
    older = make_record(records, expires_in=-200)
    fresh = make_record(records, expires_in=100)
    assert records.due_for_expiry(now, 10) == [older.id, old.id]
    assert records.due_for_expiry(now, 1) == [older.id]
    assert records.due_for_expiry(old.expires_at, 10) == [older.id, old.id]  # "not after" includes the time
    assert records.due_for_expiry(old.expires_at - 0.001, 10) == [older.id]
    records.unindex([older.id])
    assert records.due_for_expiry(now, 10) == [old.id]
    assert stored(records, older.id).state is State.UPLOADING  # unindexing keeps the record
    records.reindex(old.id, now + 1000)
    records.reindex(fresh.id, now - 1)
    assert records.due_for_expiry(now, 10) == [fresh.id]
    records.unindex([])
    records.unindex(iter([fresh.id, new_upload_id()]))
    assert records.due_for_expiry(now + 10_000, 10) == [old.id]


def test_created_before(records: RecordStore) -> None:
    now = time.time()
    second = make_record(records, created_at=now - 100)
    first = make_record(records, created_at=now - 200)
    latest = make_record(records, created_at=now)
    assert records.created_before(now, 10) == [first.id, second.id]  # before: not at
    assert records.created_before(now, 1) == [first.id]
    assert records.created_before(now + 1, 10) == [first.id, second.id, latest.id]
    assert records.created_before(now - 300, 10) == []


# Concatenations -------------------------------------------------------------------------------


def test_waiting_finals(records: RecordStore) -> None:
    partial, other = new_upload_id(), new_upload_id()
    assert records.waiting_finals(partial) == []
    records.add_waiting_final(partial, "f2")
    records.add_waiting_final(partial, "f1")
    records.add_waiting_final(partial, "f2")
    records.add_waiting_final(other, "f3")
    assert records.waiting_finals(partial) == ["f1", "f2"]
    assert records.waiting_finals(other) == ["f3"]


# Data stores ----------------------------------------------------------------------------------


def read_all(store: DataStore, upload_id: str) -> bytes:
    with store.open(upload_id) as fh:
        return fh.read()


def write(store: DataStore, upload_id: str, offset: int, *chunks: bytes) -> int:
    writer = store.writer(upload_id, offset)
    try:
        for chunk in chunks:
            writer.write(chunk)
        writer.sync()
        return writer.written
    finally:
        writer.close()


def test_data_store_abilities(data: DataStore) -> None:
    assert isinstance(data, Terminator)
    assert isinstance(data, InfoKeeper)
    assert isinstance(data, Concatenator)
    assert isinstance(data, LocalFiles) == isinstance(data, FileSystemDataStore)


def test_create_write_size_open(data: DataStore) -> None:
    upload_id = new_upload_id()
    assert data.size(upload_id) is None
    data.create(upload_id)
    assert data.size(upload_id) == 0
    assert read_all(data, upload_id) == b""
    assert write(data, upload_id, 0, b"hello ", b"world") == 11
    assert data.size(upload_id) == 11
    assert write(data, upload_id, 11, b"!") == 1
    assert read_all(data, upload_id) == b"hello world!"
    with data.open(upload_id) as fh:
        assert fh.read(5) == b"hello"  # reading starts at the beginning
    with pytest.raises(FileExistsError):
        data.create(upload_id)
    assert read_all(data, upload_id) == b"hello world!"


def test_missing_data_objects(data: DataStore) -> None:
    upload_id = new_upload_id()
    with pytest.raises(FileNotFoundError):
        data.writer(upload_id, 0)
    with pytest.raises(FileNotFoundError):
        data.open(upload_id)
    assert data.size(upload_id) is None


def test_an_invalid_upload_id_is_refused(data: DataStore) -> None:
    for bad in ("", "../etc", "a/b", "x.info"):
        with pytest.raises(ValueError):
            data.create(bad)


def test_a_writer_cuts_off_what_lies_past_its_offset(data: DataStore) -> None:
    upload_id = new_upload_id()
    data.create(upload_id)
    write(data, upload_id, 0, b"0123456789")
    assert write(data, upload_id, 4, b"ab") == 2
    assert read_all(data, upload_id) == b"0123ab"
    writer = data.writer(upload_id, 2)  # cut at opening, before any write
    assert data.size(upload_id) == 2
    writer.close()
    assert read_all(data, upload_id) == b"01"


def test_rollback_goes_back_to_where_the_writer_opened(data: DataStore) -> None:
    upload_id = new_upload_id()
    data.create(upload_id)
    write(data, upload_id, 0, b"keep")
    writer = data.writer(upload_id, 4)
    try:
        writer.write(b"drop")
        writer.write(b"this")
        assert writer.written == 8
        writer.sync()  # what a writer wrote is stored once synced (S3 keeps it in memory until then)
        assert data.size(upload_id) == 12
        writer.rollback()
        assert writer.written == 0
        assert data.size(upload_id) == 4
        writer.write(b"!")
        writer.sync()
        assert writer.written == 1
    finally:
        writer.close()
    assert read_all(data, upload_id) == b"keep!"


def test_remove(data: DataStore) -> None:
    assert isinstance(data, Terminator) and isinstance(data, InfoKeeper)
    upload_id, other = new_upload_id(), new_upload_id()
    for uid in (upload_id, other):
        data.create(uid)
        write(data, uid, 0, b"abc")
        data.write_info(uid, {"id": uid})
    data.remove(upload_id)
    assert data.size(upload_id) is None
    assert data.read_info(upload_id) is None
    assert list(data.upload_ids()) == [other]
    assert read_all(data, other) == b"abc" and data.read_info(other) == {"id": other}
    data.remove(upload_id)  # a second remove is harmless
    data.remove(new_upload_id())


def test_info_round_trip(data: DataStore) -> None:
    assert isinstance(data, InfoKeeper)
    upload_id = new_upload_id()
    data.create(upload_id)
    assert data.read_info(upload_id) is None
    info = {"id": upload_id, "offset": "3", "metadata": '{"a":"b"}'}
    data.write_info(upload_id, info)
    info["offset"] = "changed after writing"
    assert data.read_info(upload_id) == {"id": upload_id, "offset": "3", "metadata": '{"a":"b"}'}
    data.write_info(upload_id, {"id": upload_id, "offset": "5"})
    assert data.read_info(upload_id) == {"id": upload_id, "offset": "5"}
    assert data.read_info(new_upload_id()) is None


def test_upload_ids_lists_the_uploads_with_data(data: DataStore) -> None:
    assert isinstance(data, InfoKeeper)
    assert list(data.upload_ids()) == []
    first, second = new_upload_id(), new_upload_id()
    data.create(first)
    data.create(second)
    data.write_info(first, {"id": first})
    data.write_info(new_upload_id(), {"id": "info without data"})
    assert sorted(data.upload_ids()) == sorted([first, second])


def test_age(data: DataStore) -> None:
    assert isinstance(data, InfoKeeper)
    upload_id = new_upload_id()
    assert data.age(upload_id) is None
    data.create(upload_id)
    age = data.age(upload_id)
    assert age is not None and -0.05 <= age < 5
    time.sleep(0.25)
    age = data.age(upload_id)
    assert age is not None and age >= 0.15
    write(data, upload_id, 0, b"x")
    age = data.age(upload_id)
    assert age is not None and age < 0.15


def test_concatenate(data: DataStore) -> None:
    assert isinstance(data, Concatenator)
    parts = [new_upload_id() for _ in range(3)]
    for uid, chunk in zip(parts, (b"abc", b"", b"defg"), strict=True):
        data.create(uid)
        write(data, uid, 0, chunk)
    target = new_upload_id()
    data.concatenate(target, parts)
    assert read_all(data, target) == b"abcdefg"
    assert data.size(target) == 7
    # Sources stay; an existing target is replaced, not appended to.
    assert read_all(data, parts[0]) == b"abc"
    data.concatenate(target, [parts[2]])
    assert read_all(data, target) == b"defg"
    other = new_upload_id()
    data.create(other)
    write(data, other, 0, b"0123456789")
    data.concatenate(other, [parts[0], parts[0]])
    assert read_all(data, other) == b"abcabc"
    data.concatenate(other, [])
    assert data.size(other) == 0
    with pytest.raises(FileNotFoundError):
        data.concatenate(new_upload_id(), [parts[0], new_upload_id()])


# The memory stores: one per process, never for several workers ---------------------------------


@pytest.mark.parametrize("store_class", [MemoryRecordStore, MemoryDataStore])
def test_a_memory_store_is_one_per_process_and_warns(store_class: Any) -> None:
    assert store_class.from_settings() is store_class.from_settings()
    (message,) = store_class.check()
    assert isinstance(message, Warning) and message.id == "tusbridge.W010"


def test_reset_forgets_everything() -> None:
    records = MemoryRecordStore()
    record = make_record(records, expires_in=-1)
    taken(records, record.id)
    records.reserve("alice", record.id, 10, max_uploads=1, max_bytes=0)
    records.reset()
    assert records.get(record.id) is None and records.lock_holder(record.id) is None
    assert records.due_for_expiry(time.time(), 10) == [] and records.created_before(time.time() + 1, 10) == []
    assert records.reserve("alice", "other", 10, max_uploads=1, max_bytes=0) == "ok"
    data = MemoryDataStore()
    data.create(record.id)
    data.reset()
    assert data.size(record.id) is None
