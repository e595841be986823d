"""Redis SIGKILLed while uploads stream, and restarted from its append-only file: no upload stays locked.

The test's Redis keeps an append-only file (``appendfsync everysec``, as most
deployments run it). Four tus uploads each stream one slow PATCH (their
offsets advance while the bodies stream, renewing their locks) and a legacy
upload streams a slow chunk, when Redis is killed (SIGKILL: no last fsync);
each request holds its last piece back until then, so all of them are in
flight at the kill however slow the machine. Those requests fail (503, or
the connection ends). Redis is then started
again on the same port from its file: it comes back with the locks those
requests held (their releases never reached it), and with the records as
they were a second or so before the kill.

Before tusbridge removed such locks, an upload stayed locked for the rest of
its lock's TTL (30 s by default; HEAD answered 423). Here TUSBRIDGE_LOCK_WAIT
is 2 s: a request that finds a lock left over waits at most that long, then
answers 423 (409 for a legacy chunk) and fails the test. Checked, once Redis
answers again:

- at least one upload's lock key is in Redis right after the restart (else
  the test would prove nothing);
- every upload answers 200 to its first HEAD and accepts its next PATCH
  (legacy: its next chunk) on the first try;
- every upload finishes with the source's sha256 (legacy: its md5 completion
  is accepted and the file's sha256 is the source's).

The seconds from Redis answering to each upload's first 200 are printed (not
asserted).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_chunk_request,
    legacy_complete,
    login,
    tus_create,
    tus_head,
    tus_patch,
)
from tests.support.live import OFFSET_CT, RawRequest, Trickled, lock_key, path_of, poll, record_of, trickle
from tests.support.servers import GunicornServer, RedisServer

pytestmark = pytest.mark.live

SERVER_ENV = {
    # A lock left over for longer than this makes the request answer 423 (legacy: 409): the test fails.
    "TUSBRIDGE_TEST_LOCK_WAIT": "2",
    "TUSBRIDGE_TEST_REDIS_TIMEOUT": "2",
    # The requests hold their last piece back until Redis is killed; the server waits for them.
    "TUSBRIDGE_TEST_IDLE_TIMEOUT": "600",
}
TUS_UPLOADS = 4
TUS_SIZE = 8 * 1024 * 1024
LEGACY_SIZE = 3_000_000
LEGACY_CHUNK = 1_000_000
PIECE = 64 * 1024


@dataclass
class Upload:
    """One client: streams slowly until Redis dies, then waits for it and finishes."""

    server: GunicornServer
    user: User
    protocol: str  # "tus" or "legacy"
    data: bytes
    redis_back: threading.Event
    redis_killed: threading.Event
    upload_id: str = ""
    streaming: bool = False  # its request in flight has sent body bytes
    failed: Trickled | None = None  # how its request in flight ended
    first_200_at: float | None = None  # time.monotonic() of the first 200 after the restart
    heads: list[int] = field(default_factory=list)  # statuses of the HEADs after the restart
    error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"{self.server.files_url}{self.upload_id}"

    def run(self) -> None:
        try:
            self.stream_until_redis_dies()
            assert self.redis_back.wait(120), "Redis did not come back"
            self.finish()
        except BaseException as exc:
            self.error = exc

    def stream_until_redis_dies(self) -> None:
        """Start the upload, then send the rest slowly: the request fails when Redis goes."""
        if self.protocol == "tus":
            url = tus_create(self.server, self.user, len(self.data))
            self.upload_id = upload_id_of(url)
            headers = self.user.tus(
                **{"Content-Type": OFFSET_CT, "Upload-Offset": "0", "Content-Length": str(len(self.data))}
            )
            request = RawRequest(self.server, "PATCH", path_of(url), headers, send_buffer=PIECE)
            body = self.data
            pause = 0.05  # 1.3 MB/s: the body lasts ~6 s
        else:
            first = legacy_chunk(self.server, self.user, None, 0, self.data[:LEGACY_CHUNK], len(self.data))
            assert first.status == 200, first.body
            self.upload_id = json_of(first)["upload_id"]
            chunk = self.data[LEGACY_CHUNK : 2 * LEGACY_CHUNK]
            request, body = legacy_chunk_request(
                self.server, self.user, self.upload_id, LEGACY_CHUNK, chunk, len(self.data)
            )
            pause = 0.2  # 320 KB/s: the chunk lasts ~3 s
        self.streaming = True
        # In flight (the last piece held back) until Redis is killed, however slow the machine.
        ended = trickle(request, body, piece=PIECE, pause=pause, hold_last=self.redis_killed)
        self.failed = ended
        reply = ended.response
        assert reply is None or reply.status == 503, ("a request when Redis died", reply)

    def finish(self) -> None:
        """HEAD (200 at once), then the rest from the HEAD offset (accepted at once), to the exact bytes."""
        head = tus_head(self.url, self.user)
        self.heads.append(head.status_code)
        assert head.status_code == 200, (self.protocol, "first HEAD after the restart", head.status_code, head.text)
        self.first_200_at = time.monotonic()
        offset = int(head.headers["Upload-Offset"])
        size = len(self.data)
        if self.protocol == "tus":
            reply = tus_patch(self.server, self.user, self.url, offset, self.data[offset:])
            assert reply.status == 204, ("first PATCH after the restart", reply.status, reply.body)
            assert int(reply.headers["Upload-Offset"]) == size
            assert record_of(self.server, self.upload_id)["state"] == "complete"
        else:
            while offset < size:
                chunk = self.data[offset : offset + LEGACY_CHUNK]
                reply = legacy_chunk(self.server, self.user, self.upload_id, offset, chunk, size)
                assert reply.status == 200, ("legacy chunk after the restart", reply.status, reply.body)
                offset += len(chunk)
                assert json_of(reply)["offset"] == offset
            done = legacy_complete(self.server, self.user, self.upload_id, md5(self.data))
            assert done.status_code == 200, done.text
        assert sha256(file_bytes(self.server.upload_dir / self.upload_id) or b"") == sha256(self.data)


def locked(server: GunicornServer, redis_server: RedisServer, uploads: list[Upload]) -> list[str]:
    """The uploads whose lock key is in Redis now."""
    client = redis_server.client()
    try:
        return [u.upload_id for u in uploads if client.exists(lock_key(server, u.upload_id))]
    finally:
        client.close()


def test_redis_restarted_from_its_aof_leaves_no_upload_locked(
    server_factory: Callable[..., GunicornServer], aof_redis: RedisServer
) -> None:
    server = server_factory(aof_redis, SERVER_ENV)
    redis_back, redis_killed = threading.Event(), threading.Event()
    tus_data = [payload(TUS_SIZE, 200 + i, kind="random") for i in range(TUS_UPLOADS)]
    uploads = [
        Upload(server, login(server, f"aof-{i}"), "tus", data, redis_back, redis_killed)
        for i, data in enumerate(tus_data)
    ]
    legacy_data = payload(LEGACY_SIZE, 300, kind="random")
    uploads.append(Upload(server, login(server, "aof-legacy"), "legacy", legacy_data, redis_back, redis_killed))
    threads = [threading.Thread(target=u.run, daemon=True) for u in uploads]
    for thread in threads:
        thread.start()
    try:
        # Every request streams, and each tus PATCH has counted some of its body (its lock was
        # renewed): the locks were taken over a second ago, so the append-only file has them.
        poll(lambda: all(u.streaming for u in uploads), "every upload to stream", timeout=60)
        poll(
            lambda: all(int(record_of(server, u.upload_id).get("offset", 0)) > 0 for u in uploads[:TUS_UPLOADS]),
            "every tus PATCH to count part of its body",
            timeout=60,
        )
        time.sleep(1.2)  # past appendfsync everysec
        assert len(locked(server, aof_redis, uploads)) == len(uploads), "every upload should be locked now"
        aof_redis.kill()
        redis_killed.set()
        poll(lambda: all(u.failed is not None for u in uploads), "the requests in flight to fail", timeout=60)

        aof_redis.start()
        answered_at = time.monotonic()
        left_over = locked(server, aof_redis, uploads)
        offsets = {u.upload_id: record_of(server, u.upload_id).get("offset") for u in uploads}
        redis_back.set()
        for thread in threads:
            thread.join(180)
    finally:
        redis_killed.set()
        redis_back.set()

    print(f"\nlocks left over after the restart: {len(left_over)} of {len(uploads)}")
    for u in uploads:
        waited = None if u.first_200_at is None else round(u.first_200_at - answered_at, 3)
        print(
            f"  {u.protocol} {u.upload_id}: request in flight ended with "
            f"{u.failed.response.status if u.failed and u.failed.response else 'no answer'}; "
            f"offset after restart {offsets[u.upload_id]}; first 200 {waited} s after Redis answered"
        )
    for u in uploads:
        if u.error is not None:
            raise u.error
    assert not any(thread.is_alive() for thread in threads)
    assert left_over, "no lock survived the restart: the test proved nothing"
    assert all(u.heads == [200] for u in uploads)


def test_aof_redis_restart_keeps_data(aof_redis: RedisServer) -> None:
    """The support class itself: a key written over a second before the kill is there after the restart."""
    client = aof_redis.client()
    try:
        client.set("kept", "1")
    finally:
        client.close()
    time.sleep(1.5)
    aof_redis.kill()
    assert not aof_redis.ping()
    aof_redis.start()
    client = aof_redis.client()
    try:
        assert client.get("kept") == b"1"
    finally:
        client.close()
