"""A legacy chunk's lock request travels while the chunk's bytes arrive.

When the file part of a chunk for an existing upload begins, the handler
sends the request for the upload's lock and record and reads the part
meanwhile, holding its bytes (up to ``TUSBRIDGE_READ_SIZE``) and hashing
them from the MD5 state this process stored with the last chunk. The reply
then decides: the bytes are written and the hash kept when the record shows
the same state; the hash is redone when it does not; and when the upload
cannot take the chunk, Django's handlers get the part and the view reports
why, as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import API_CHUNK, assert_error, complete, post_chunk, upload_chunks
from tests.support.tus import data_of, lock_key
from tusbridge.chunked_upload import md5 as md5state
from tusbridge.chunked_upload.md5 import RunningMD5
from tusbridge.chunked_upload.models import LEGACY_RULES
from tusbridge.data.filesystem import FileSystemDataStore
from tusbridge.errors import LockLost
from tusbridge.records.base import LockAttempt
from tusbridge.records.redis import RedisRecordStore
from tusbridge.service import get_service

pytestmark = [
    pytest.mark.real_stores,  # watches the Redis store and the filesystem writer
    pytest.mark.django_db,
    pytest.mark.urls("tests.legacy_urls"),
    pytest.mark.skipif(not md5state.available(), reason="libcrypto's MD5 state functions are not available"),
]

CHUNK = 40_000


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The order of: lock requests sent, their replies read, MD5 updates, writes to data files, adoptions."""
    log: list[str] = []
    request = RedisRecordStore.request_lock_and_get

    def logged_request(self: RedisRecordStore, upload_id: str, ttl: float) -> Any:
        log.append("request")
        attempt = request(self, upload_id, ttl)

        def logged_result() -> Any:
            log.append("reply")
            return attempt()

        logged = LockAttempt(logged_result)
        logged.sent_at = attempt.sent_at
        return logged

    update = md5state.ResumableMD5.update
    adopt = RunningMD5.adopt
    writer = FileSystemDataStore.writer

    def logged_writer(self: FileSystemDataStore, upload_id: str, offset: int) -> Any:
        opened = writer(self, upload_id, offset)
        write = opened.write

        def logged_write(data: Any) -> None:
            log.append("write")
            write(data)

        opened.write = logged_write  # type: ignore[method-assign]
        return opened

    def logged_update(self: md5state.ResumableMD5, data: Any) -> None:
        log.append("md5")
        update(self, data)

    def logged_adopt(self: RunningMD5, md5: Any, base: bytes, covering: int) -> bool:
        adopted = adopt(self, md5, base, covering)
        log.append(f"adopted={adopted}")
        return adopted

    monkeypatch.setattr(RedisRecordStore, "request_lock_and_get", logged_request)
    monkeypatch.setattr(md5state.ResumableMD5, "update", logged_update)
    monkeypatch.setattr(RunningMD5, "adopt", logged_adopt)
    monkeypatch.setattr(FileSystemDataStore, "writer", logged_writer)
    yield log


def _begin(client: Client, data: bytes) -> str:
    """A new upload of ``data`` with its first chunk stored."""
    response = post_chunk(client, data[:CHUNK], start=0, total=len(data))
    assert response.status_code == 200, response.content
    return str(response.json()["upload_id"])


def _without_repeats(log: list[str]) -> list[str]:
    return [event for i, event in enumerate(log) if i == 0 or log[i - 1] != event]


def test_the_chunk_is_hashed_while_the_lock_request_travels(client_logged_in: Client, events: list[str]) -> None:
    data = payload(2 * CHUNK)
    upload_id = _begin(client_logged_in, data)
    events.clear()
    response = post_chunk(client_logged_in, data[CHUNK:], start=CHUNK, total=len(data), upload_id=upload_id)
    assert response.status_code == 200, response.content
    assert _without_repeats(events) == ["request", "md5", "reply", "adopted=True", "write"]
    assert data_of(upload_id) == data
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200


def test_a_remembered_state_that_is_not_the_uploads_is_not_used(client_logged_in: Client, events: list[str]) -> None:
    """The hash made ahead from a state the record does not show is dropped, and the chunk hashed again."""
    data = payload(3 * CHUNK, seed=1)
    upload_id = _begin(client_logged_in, data)
    md5state.recent_states.remember(upload_id, CHUNK, md5state.ResumableMD5().state)  # an empty file's state
    events.clear()
    upload_chunks(client_logged_in, data, CHUNK, upload_id=upload_id, start=CHUNK)
    assert events.count("adopted=False") == 1 and events.count("adopted=True") == 1
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200


def test_a_chunk_larger_than_a_read_is_held_up_to_one_read_only(client_logged_in: Client, events: list[str]) -> None:
    """A 2.5 MB chunk reaches the handler in pieces: held until 1 MiB (READ_SIZE) is in, then written as it comes."""
    big = 2_500_000
    data = payload(CHUNK + big, seed=2)
    upload_id = _begin(client_logged_in, data)
    events.clear()
    response = post_chunk(client_logged_in, data[CHUNK:], start=CHUNK, total=len(data), upload_id=upload_id)
    assert response.status_code == 200, response.content
    # The first read (64 KiB) and the next piece (1 MiB) are held and hashed ahead; the later
    # pieces are written (then hashed) as they come.
    assert events == [
        "request", "md5", "md5", "reply", "adopted=True", "write", "write", "write", "md5", "write", "md5"
    ]  # fmt: skip
    assert data_of(upload_id) == data
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200


@pytest.mark.parametrize("refusal", ["wrong offset", "unknown upload", "complete"])
def test_a_chunk_the_upload_refuses_is_reported_and_leaves_no_lock(
    client_logged_in: Client, redis_client: redis.Redis, refusal: str
) -> None:
    data = payload(2 * CHUNK, seed=3)
    upload_id = _begin(client_logged_in, data)
    target, start = upload_id, CHUNK
    if refusal == "wrong offset":
        start = CHUNK - 100
    elif refusal == "unknown upload":
        target = "0123456789abcdef0123456789abcdef"
    else:
        upload_chunks(client_logged_in, data, CHUNK, upload_id=upload_id, start=CHUNK)
        assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
    response = post_chunk(client_logged_in, data[start:], start=start, total=len(data), upload_id=target)
    if refusal == "wrong offset":
        assert_error(response, 400, {"detail": "Offsets do not match", "offset": CHUNK})
    elif refusal == "unknown upload":
        assert_error(response, 404, {"detail": "Not found"})
    else:
        assert_error(response, 400, {"detail": 'Upload has already been marked as "complete"'})
    assert redis_client.get(lock_key(target)) is None
    if refusal == "wrong offset":
        assert data_of(upload_id) == data[:CHUNK]
        post_chunk(client_logged_in, data[CHUNK:], start=CHUNK, total=len(data), upload_id=upload_id)
        assert complete(client_logged_in, upload_id, md5(data)).status_code == 200


def _post_broken_second_chunk(client: Client, upload_id: str, data: bytes) -> Any:
    """The second chunk, with a body that ends 1000 bytes into its file part (no closing delimiter)."""
    boundary = "----cutOffBoundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="upload_id"\r\n\r\n{upload_id}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data[CHUNK : CHUNK + 1000]
    return client.post(
        API_CHUNK,
        body,
        content_type=f"multipart/form-data; boundary={boundary}",
        HTTP_CONTENT_RANGE=f"bytes {CHUNK}-{2 * CHUNK - 1}/{2 * CHUNK}",
    )


def test_the_lock_is_let_go_when_the_body_breaks_off(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A body that ends inside the file part: the lock asked for ahead is released, nothing is written."""
    data = payload(2 * CHUNK, seed=4)
    upload_id = _begin(client_logged_in, data)
    assert _post_broken_second_chunk(client_logged_in, upload_id, data).status_code == 400
    assert redis_client.get(lock_key(upload_id)) is None
    assert data_of(upload_id) == data[:CHUNK]
    upload_chunks(client_logged_in, data, CHUNK, upload_id=upload_id, start=CHUNK)
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200


def test_a_body_that_breaks_off_leaves_another_writers_lock_alone(
    client_logged_in: Client, redis_client: redis.Redis
) -> None:
    """While another request holds the upload, a chunk whose body breaks off neither waits for it nor asks it to
    let go: its lock request is only read, and it held nothing."""
    data = payload(2 * CHUNK, seed=5)
    upload_id = _begin(client_logged_in, data)
    redis_client.set(lock_key(upload_id), "another-writer", px=60_000)
    listener = redis_client.pubsub()
    listener.subscribe(lock_key(upload_id).replace(":lock:", ":release:"))
    assert listener.get_message(timeout=1)["type"] == "subscribe"
    assert _post_broken_second_chunk(client_logged_in, upload_id, data).status_code == 400
    assert listener.get_message(timeout=0.5) is None  # no release request
    listener.close()
    assert redis_client.get(lock_key(upload_id)) == b"another-writer"
    assert data_of(upload_id) == data[:CHUNK]


def test_a_lock_that_ran_out_while_the_chunk_was_held_is_never_written_under(
    client_logged_in: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """The lock's TTL runs from when its request was sent, not from when the reply was read.

    A chunk held for longer than a third of the TTL checks the lock before its
    first write: here another request took the upload meanwhile, so the write
    fails with LockLost and the file keeps its bytes.
    """
    settings.TUSBRIDGE_LOCK_TTL = 0.6
    data = payload(2 * CHUNK, seed=6)
    upload_id = _begin(client_logged_in, data)
    service = get_service()
    owner = service.records.get(upload_id).owner
    pending = service.request_lock(upload_id)
    time.sleep(0.3)  # the part trickles in
    redis_client.set(lock_key(upload_id), "another-writer", px=60_000)  # the TTL ran out; someone took it
    session = service.open_write(
        upload_id, owner, offset=CHUNK, length=len(data), held=pending, rules=LEGACY_RULES, track=RunningMD5.resume
    )
    with pytest.raises(LockLost):
        session.write(data[CHUNK:])
    session.abort()
    assert data_of(upload_id) == data[:CHUNK]
    assert redis_client.get(lock_key(upload_id)) == b"another-writer"
