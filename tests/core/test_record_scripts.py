"""The per-request Lua scripts on their direct path, and their safety when a reply is lost.

A small TCP relay sits between the record store and the test's Redis: it
can drop the connection right after Redis has answered, the way a network
blip or a read timeout loses a reply to a command that did run. The store
then repeats the script through redis-py, and the repeat must report what
the first run did, not a mismatch or a lock held by itself.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import redis
from redis.connection import UnixDomainSocketConnection

from tests.support.together import run_together
from tests.support.tus import lock_key, make_record, record_key, record_store
from tusbridge.errors import StoreUnavailable
from tusbridge.record import State, UploadRecord, new_upload_id
from tusbridge.records.base import AdvanceStatus
from tusbridge.records.redis import RedisRecordStore


class ReplyDropper:
    """Relays TCP to Redis; when armed, the reply to the next script call (EVALSHA) is dropped
    and the client's connection closed, after Redis has run the script. When hanging, it
    swallows what clients send (counting script calls), like a Redis that stopped answering."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = 0
        self.dropped = 0
        self.hanging = False
        self.swallowed_scripts = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_replies(self, count: int = 1) -> None:
        with self._lock:
            self.armed = count

    def _take_arm(self) -> bool:
        with self._lock:
            if self.armed:
                self.armed -= 1
                self.dropped += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        drop_reply = False
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ)
        selector.register(server, selectors.EVENT_READ)
        try:
            while not self._stop:
                for key, _ in selector.select(1.0):
                    sock = key.fileobj
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client and self.hanging:
                        self.swallowed_scripts += data.count(b"EVALSHA")
                        continue
                    if sock is client:
                        drop_reply = drop_reply or (b"EVALSHA" in data and self._take_arm())
                        server.sendall(data)
                    elif drop_reply:
                        return  # Redis ran the script; its answer never reaches the client
                    else:
                        client.sendall(data)
        finally:
            selector.close()
            client.close()
            server.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def dropper(redis_server: Any) -> Iterator[ReplyDropper]:
    relay = ReplyDropper(redis_server.port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def relayed_store(dropper: ReplyDropper) -> Iterator[RedisRecordStore]:
    """A store whose scripts Redis already knows, so a dropped reply is never a NOSCRIPT."""
    client = redis.Redis(host="127.0.0.1", port=dropper.port, socket_timeout=5)
    store = record_store(client)
    primer, token = locked(store)
    assert advance(store, primer.id, token, 0, 1, release_lock=True).ok
    assert store.get_if_unlocked(primer.id)[0]
    try:
        yield store
    finally:
        client.close()


@pytest.fixture
def store_client(redis_server: Any) -> Iterator[redis.Redis]:
    """A client of its own for the store under test (redis_client watches from outside)."""
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


def advance(store: RedisRecordStore, upload_id: str, token: str, expected: int, new: int, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"now": time.time(), "expires_at": None, "auto_complete": True, **kwargs}
    return store.advance(upload_id, expected=expected, new=new, lock_token=token, **options)


def locked(store: RedisRecordStore, length: int | None = 10) -> tuple[UploadRecord, str]:
    """A fresh record and the token of its lock."""
    record = make_record(store, length=length)
    token, _ = store.acquire_lock_and_get(record.id, 30)
    assert token is not None
    return record, token


def test_a_lost_reply_to_an_advance_is_repeated_with_the_same_outcome(
    relayed_store: RedisRecordStore, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    record, token = locked(relayed_store)
    dropper.drop_next_replies()
    result = advance(relayed_store, record.id, token, 0, 4, release_lock=True)
    assert dropper.dropped == 1
    assert result.status is AdvanceStatus.OK and result.offset == 4
    assert int(redis_client.hget(record_key(record.id), "offset")) == 4
    # The first run released the lock; the repeat did not report it as lost.
    assert redis_client.get(lock_key(record.id)) is None


@pytest.fixture
def direct_store(store_client: redis.Redis) -> RedisRecordStore:
    return record_store(store_client)


def test_an_advance_that_keeps_the_lock_renews_it_and_tells_of_a_release_request(
    direct_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    store = direct_store
    record, token = locked(store)
    redis_client.pexpire(lock_key(record.id), 1000)
    kept = advance(store, record.id, token, 0, 3, auto_complete=False, keep_lock_for=20)
    assert kept.status is AdvanceStatus.OK and kept.lock_kept and not kept.release_wanted
    assert redis_client.get(lock_key(record.id)).decode() == token
    assert redis_client.pttl(lock_key(record.id)) > 15_000  # renewed for the 20 s asked

    store.request_release(record.id)
    wanted = advance(store, record.id, token, 3, 5, auto_complete=False, keep_lock_for=20)
    assert wanted.status is AdvanceStatus.OK and wanted.offset == 5
    assert wanted.lock_kept and wanted.release_wanted  # the holder saves what it must, then lets go
    assert redis_client.get(lock_key(record.id)).decode() == token


def test_a_release_stores_fields_only_while_the_offset_is_as_expected(
    direct_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    record, token = locked(direct_store)
    assert advance(direct_store, record.id, token, 0, 4, auto_complete=False).ok
    direct_store.release_lock_setting(record.id, token, offset=3, fields={"md5_offset": 3})
    assert redis_client.get(lock_key(record.id)) is None
    assert redis_client.hget(record_key(record.id), "md5_offset") == b"-1"  # offset 4, not 3: nothing set

    token, _ = direct_store.acquire_lock_and_get(record.id, 30)
    direct_store.release_lock_setting(record.id, "not-the-holder", offset=4, fields={"md5_offset": 4})
    assert redis_client.get(lock_key(record.id)).decode() == token  # not its lock: nothing happens
    assert redis_client.hget(record_key(record.id), "md5_offset") == b"-1"
    direct_store.release_lock_setting(record.id, token, offset=4, fields={"md5_offset": 4})
    assert redis_client.get(lock_key(record.id)) is None
    assert redis_client.hget(record_key(record.id), "md5_offset") == b"4"


def test_an_advance_that_completes_the_upload_never_keeps_the_lock(
    direct_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    record, token = locked(direct_store)
    result = advance(direct_store, record.id, token, 0, 10, keep_lock_for=20)
    assert result.status is AdvanceStatus.COMPLETED and not result.lock_kept
    assert redis_client.get(lock_key(record.id)) is None


def test_a_lost_reply_to_an_advance_that_kept_the_lock_reports_it_kept(
    relayed_store: RedisRecordStore, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    record, token = locked(relayed_store)
    dropper.drop_next_replies()
    result = advance(relayed_store, record.id, token, 0, 4, auto_complete=False, keep_lock_for=20)
    assert dropper.dropped == 1
    assert result.status is AdvanceStatus.OK and result.offset == 4 and result.lock_kept
    assert redis_client.get(lock_key(record.id)).decode() == token


def test_a_lost_reply_to_the_completing_advance_still_reports_completion_once(
    relayed_store: RedisRecordStore, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    record, token = locked(relayed_store)
    assert advance(relayed_store, record.id, token, 0, 4).ok
    dropper.drop_next_replies()
    result = advance(relayed_store, record.id, token, 4, 10)
    assert dropper.dropped == 1
    assert result.status is AdvanceStatus.COMPLETED and result.offset == 10
    assert redis_client.hget(record_key(record.id), "state") == State.COMPLETE.value.encode()
    # Another call, even with the same lock and offsets, is judged on its own.
    assert advance(relayed_store, record.id, token, 4, 10).status is AdvanceStatus.NOT_UPLOADING


def test_a_lost_reply_to_taking_the_lock_does_not_lock_the_taker_out(
    relayed_store: RedisRecordStore, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    record = make_record(relayed_store)
    dropper.drop_next_replies()
    token, read = relayed_store.acquire_lock_and_get(record.id, 30)
    assert dropper.dropped == 1
    assert token is not None and read is not None and read.id == record.id
    assert redis_client.get(lock_key(record.id)) == token.encode()
    # Someone else's token still finds it taken.
    other, _ = relayed_store.acquire_lock_and_get(record.id, 30)
    assert other is None


def test_a_lost_reply_to_a_settled_read_is_read_again(relayed_store: RedisRecordStore, dropper: ReplyDropper) -> None:
    record = make_record(relayed_store)
    dropper.drop_next_replies()
    unlocked, read = relayed_store.get_if_unlocked(record.id)
    assert dropper.dropped == 1
    assert unlocked and read is not None and read.offset == 0


def test_a_silent_redis_is_asked_once_per_call(dropper: ReplyDropper) -> None:
    """A timeout is not repeated: the request gives up after one TUSBRIDGE_REDIS_TIMEOUT, not two."""
    client = redis.Redis(host="127.0.0.1", port=dropper.port, socket_timeout=0.5)
    try:
        store = record_store(client)
        record = make_record(store)
        assert store.get_if_unlocked(record.id)[0]  # Redis knows the script; a connection is idle
        dropper.hanging = True
        with pytest.raises(StoreUnavailable) as raised:
            store.get_if_unlocked(record.id)
        assert isinstance(raised.value.__cause__, redis.exceptions.TimeoutError)
        assert dropper.swallowed_scripts == 1
    finally:
        dropper.hanging = False
        client.close()


def test_scripts_that_redis_forgot_are_loaded_again(store_client: redis.Redis) -> None:
    store = record_store(store_client)
    record = make_record(store)
    store_client.script_flush()
    token, read = store.acquire_lock_and_get(record.id, 30)
    assert token is not None and read is not None
    store_client.script_flush()
    assert advance(store, record.id, token, 0, 3, release_lock=True).offset == 3
    assert store.get_if_unlocked(record.id)[0] is True


def test_a_connection_killed_between_calls_is_replaced(store_client: redis.Redis, redis_client: redis.Redis) -> None:
    store = record_store(store_client)
    record = make_record(store)
    assert store.get_if_unlocked(record.id)[0]
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    unlocked, read = store.get_if_unlocked(record.id)
    assert unlocked and read is not None and read.id == record.id


def test_concurrent_threads_never_share_a_connection(store_client: redis.Redis) -> None:
    store = record_store(store_client)
    records = [make_record(store, length=None) for _ in range(8)]

    def steps(record: UploadRecord) -> None:
        for step in range(50):
            token, read = store.acquire_lock_and_get(record.id, 30)
            assert token is not None and read is not None and read.id == record.id
            assert advance(store, record.id, token, step, step + 1, auto_complete=False, release_lock=True).ok

    run_together([partial(steps, record) for record in records])
    assert [store.get(record.id).offset for record in records] == [50] * 8


def _connection_id(store: RedisRecordStore) -> int:
    """The Redis client id of the connection the settled read just used."""
    connection = store._get_if_unlocked._connections._idle[-1]
    connection.send_command("CLIENT", "ID")
    return int(connection.read_response())


def test_a_forked_child_opens_connections_of_its_own(store_client: redis.Redis) -> None:
    store = record_store(store_client)
    record = make_record(store)
    assert store.get_if_unlocked(record.id)[0]
    parent_id = _connection_id(store)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read through the inherited store, report the connection it used
        try:
            ok = store.get_if_unlocked(record.id)[0]
            os.write(write, f"{int(ok)}:{_connection_id(store)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    ok, child_id = answer.split(":")
    assert ok == "1"
    assert int(child_id) != parent_id
    # The parent's connection is intact: the child neither used nor closed it.
    assert store.get_if_unlocked(record.id)[0]
    assert _connection_id(store) == parent_id


def test_stores_on_one_client_share_its_direct_connections(redis_server: Any, redis_client: redis.Redis) -> None:
    """A store per settings change (or per test) must not leave connections of its own behind.

    The client names its connections, so that only they are counted (other
    tests' connections may come and go meanwhile).
    """
    name = f"shared-{new_upload_id()}"
    client = redis_server.client(client_name=name)

    def connections() -> int:
        return sum(1 for entry in redis_client.client_list() if entry.get("name") == name)

    try:
        first = record_store(client)
        first.get_if_unlocked(new_upload_id())
        assert first.acquire_lock_and_get(new_upload_id(), 30)[0] is not None  # the client's subscription starts
        before = connections()
        assert before >= 2
        for _ in range(20):
            store = record_store(client)
            token, _ = store.acquire_lock_and_get(new_upload_id(), 30)
            assert token is not None
            store.get_if_unlocked(new_upload_id())
        assert connections() == before
    finally:
        client.close()


def test_a_store_over_a_unix_socket_takes_the_direct_path(redis_server: Any) -> None:
    """``unix://`` URLs (Redis on the same host) get direct connections of the same kind."""
    client = redis.Redis.from_url(redis_server.unix_url)
    try:
        store = record_store(client)
        record, token = locked(store)
        assert advance(store, record.id, token, 0, 4, release_lock=True).offset == 4
        unlocked, read = store.get_if_unlocked(record.id)
        assert unlocked and read is not None and read.offset == 4
        assert isinstance(store._get_if_unlocked._connections._idle[-1], UnixDomainSocketConnection)
    finally:
        client.close()


def test_a_lock_request_sent_ahead_runs_before_its_reply_is_read(
    store_client: redis.Redis, redis_client: redis.Redis
) -> None:
    """``request_lock_and_get`` sends the call at once: Redis takes the lock while the caller works on."""
    store = record_store(store_client)
    record = make_record(store)
    attempt = store.request_lock_and_get(record.id, 30)
    deadline = time.monotonic() + 5
    while redis_client.get(lock_key(record.id)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    holder = redis_client.get(lock_key(record.id))
    assert holder is not None
    token, read = attempt()
    assert token is not None and token.encode() == holder
    assert read is not None and read.id == record.id
    # The connection went back to the idle ones: the next call reuses it.
    assert len(store._acquire_and_get._connections._idle) == 1


def test_a_lock_request_sent_ahead_survives_a_lost_reply(
    relayed_store: RedisRecordStore, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    record = make_record(relayed_store)
    dropper.drop_next_replies()
    attempt = relayed_store.request_lock_and_get(record.id, 30)
    token, read = attempt()
    assert dropper.dropped == 1
    assert token is not None and read is not None and read.id == record.id
    assert redis_client.get(lock_key(record.id)) == token.encode()


@pytest.fixture
def quick_store(redis_server: Any) -> Iterator[RedisRecordStore]:
    """A store whose calls give up after 0.3 s without an answer."""
    client = redis_server.client(socket_timeout=0.3)
    try:
        yield record_store(client)
    finally:
        client.close()


def lock_request_during_a_freeze(redis_server: Any, store: RedisRecordStore, upload_id: str) -> None:
    """Ask for the lock while Redis is stopped (SIGSTOP); Redis runs the call when it wakes, after the timeout."""
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable) as raised:
            store.acquire_lock_and_get(upload_id, 30)
        assert isinstance(raised.value.__cause__, redis.exceptions.TimeoutError)
        time.sleep(0.2)
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while not redis_server.ping():
        assert time.monotonic() < deadline, "Redis did not answer again"


def test_a_lock_request_redis_runs_after_its_sender_gave_up_takes_nothing(
    redis_server: Any, quick_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    """A frozen Redis runs the call on waking; a lock taken then would block the upload for a whole TTL."""
    record = make_record(quick_store)
    assert quick_store.acquire_lock(record.id, 30) is not None  # Redis knows the script, the store its clock
    redis_client.delete(lock_key(record.id))
    lock_request_during_a_freeze(redis_server, quick_store, record.id)
    assert redis_client.get(lock_key(record.id)) is None
    assert quick_store.acquire_lock(record.id, 30) is not None


def test_a_store_learns_redis_clock_before_its_first_lock_request(
    redis_server: Any, quick_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    """A worker's first lock request may meet a frozen Redis too: it is not sent without a limit."""
    record = make_record(quick_store)
    assert quick_store.get_if_unlocked(record.id)[0]  # a direct connection is open, no lock request made yet
    lock_request_during_a_freeze(redis_server, quick_store, record.id)
    assert redis_client.get(lock_key(record.id)) is None


def test_a_lock_request_found_late_by_a_wrong_clock_is_asked_again(
    quick_store: RedisRecordStore, redis_client: redis.Redis
) -> None:
    """A view of Redis's clock that is behind (Redis's clock set forward) costs one more call, not the lock."""
    record = make_record(quick_store)
    assert quick_store.acquire_lock(make_record(quick_store).id, 30) is not None
    assert quick_store._redis_ahead_ms is not None
    learnt = quick_store._redis_ahead_ms
    quick_store._redis_ahead_ms = learnt - 60_000
    token, read = quick_store.acquire_lock_and_get(record.id, 30)
    assert token is not None and redis_client.get(lock_key(record.id)) == token.encode()
    assert read is not None and read.id == record.id
    assert abs(quick_store._redis_ahead_ms - learnt) < 1000
