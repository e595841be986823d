"""Redis unavailable under a live gunicorn: every request answers 503 in bounded time, no file changes.

Two kinds of outage:

- Redis **stopped** (connections refused). The private test Redis keeps
  nothing, so after ``start()`` it is empty: this test only checks the
  answers during the outage, that nothing on disk changed, and that the
  server works again for new uploads (what happens to the old ones is
  tests/faults/test_redis_lost.py).
- Redis **hanging** (SIGSTOP: connections are accepted by the kernel but no
  command is answered, as with ``CLIENT PAUSE`` or a blocked server; unlike
  ``CLIENT PAUSE <ms>`` it ends exactly when the test says so). Every
  request must give up after TUSBRIDGE_REDIS_TIMEOUT (1 s here) with 503;
  after SIGCONT the same uploads continue to completion with exact bytes,
  since Redis kept its data.

Requests carry a client timeout a little above what the server may take
(2 Redis calls of TUSBRIDGE_REDIS_TIMEOUT each, plus a margin for a loaded
machine); a request still open then has hung.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    PinnedWorker,
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_complete,
    login,
    multipart,
    settled_offset,
    snapshot,
    try_response,
    tus_create,
    tus_patch,
    tus_patch_request,
)
from tests.support.live import OFFSET_CT, RawRequest, path_of, record_of, wait_drained
from tests.support.servers import GunicornServer, RedisServer

pytestmark = pytest.mark.live

REDIS_TIMEOUT = 1.0
#: Longest a request may take while Redis does not answer: two Redis calls
#: that time out (a failed write plus its clean-up), and room for a loaded machine.
CLIENT_TIMEOUT = 2 * REDIS_TIMEOUT + 4.0

#: A lock whose release timed out during the outage lives this long afterwards.
SERVER_ENV = {
    "TUSBRIDGE_TEST_REDIS_TIMEOUT": str(REDIS_TIMEOUT),
    "TUSBRIDGE_TEST_LOCK_TTL": "3",
    "TUSBRIDGE_TEST_LOCK_WAIT": "2",
}


@pytest.fixture(scope="module")
def server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory(SERVER_ENV)


@dataclass
class Uploads:
    """Uploads in progress of both protocols, and one finished, as a site has them when Redis goes."""

    tus_url: str
    tus_data: bytes
    deferred_url: str
    deferred_data: bytes
    legacy_id: str
    legacy_data: bytes
    legacy_chunk: int
    done_url: str


def start_uploads(server: GunicornServer, user: User, seed: int) -> Uploads:
    tus_data = payload(600_000, seed, kind="random")
    tus_url = tus_create(server, user, len(tus_data))
    assert tus_patch(server, user, tus_url, 0, tus_data[:250_000]).status == 204

    deferred_data = payload(300_000, seed + 1, kind="random")
    deferred_url = tus_create(server, user, None)
    assert tus_patch(server, user, deferred_url, 0, deferred_data[:100_000]).status == 204

    legacy_data = payload(500_000, seed + 2, kind="random")
    chunk = 200_000
    first = legacy_chunk(server, user, None, 0, legacy_data[:chunk], len(legacy_data))
    assert first.status == 200, first.body
    legacy_id = json_of(first)["upload_id"]

    done_data = payload(50_000, seed + 3, kind="random")
    done_url = tus_create(server, user, len(done_data))
    assert tus_patch(server, user, done_url, 0, done_data).status == 204
    return Uploads(tus_url, tus_data, deferred_url, deferred_data, legacy_id, legacy_data, chunk, done_url)


@dataclass
class Answer:
    what: str
    status: int
    retry_after: str | None
    text: str
    seconds: float


def held_locks(server: GunicornServer, up: Uploads) -> list[str]:
    """The uploads of ``up`` that are locked now."""
    ids = [upload_id_of(up.tus_url), upload_id_of(up.deferred_url), up.legacy_id, upload_id_of(up.done_url)]
    client = server.redis_client()
    try:
        return [i for i in ids if client.exists(f"{server.key_prefix}:lock:{{{i}}}")]
    finally:
        client.close()


def outage_requests(server: GunicornServer, user: User, up: Uploads) -> list[Answer]:
    """Every kind of request of both protocols, each with a client timeout (a hang fails the test)."""
    tus = user.tus()
    answers = []

    def call(what: str, method: str, url: str, **kwargs) -> None:
        started = time.monotonic()
        try:
            response = requests.request(method, url, timeout=CLIENT_TIMEOUT, **kwargs)
        except requests.Timeout:
            pytest.fail(f"{what} hung for more than {CLIENT_TIMEOUT} s while Redis was unavailable")
        seconds = time.monotonic() - started
        answers.append(Answer(what, response.status_code, response.headers.get("Retry-After"), response.text, seconds))

    tus_offset = 250_000
    call("tus POST", "POST", server.files_url, headers={**tus, "Upload-Length": "1000"})
    call(
        "tus POST with upload",
        "POST",
        server.files_url,
        headers={**tus, "Upload-Length": "1000", "Content-Type": OFFSET_CT},
        data=b"x" * 500,
    )
    call("tus HEAD", "HEAD", up.tus_url, headers=tus)
    call(
        "tus PATCH",
        "PATCH",
        up.tus_url,
        headers={**tus, "Content-Type": OFFSET_CT, "Upload-Offset": str(tus_offset)},
        data=up.tus_data[tus_offset : tus_offset + 100_000],
    )
    call(
        "tus PATCH with Upload-Length",
        "PATCH",
        up.deferred_url,
        headers={
            **tus,
            "Content-Type": OFFSET_CT,
            "Upload-Offset": "100000",
            "Upload-Length": str(len(up.deferred_data)),
        },
        data=up.deferred_data[100_000:150_000],
    )
    call("tus HEAD of a finished upload", "HEAD", up.done_url, headers=tus)
    call("tus DELETE", "DELETE", up.tus_url, headers=tus)
    call("tus DELETE of a finished upload", "DELETE", up.done_url, headers=tus)

    def chunk(what: str, upload_id: str | None, start: int, data: bytes, total: int) -> None:
        fields = {"csrfmiddlewaretoken": user.csrf}
        if upload_id:
            fields["upload_id"] = upload_id
        content_type, body = multipart(fields, data)
        call(
            what,
            "POST",
            server.files_url,
            headers={
                "Cookie": user.cookie,
                "Content-Type": content_type,
                "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}",
                "X-Requested-With": "XMLHttpRequest",
            },
            data=body,
        )

    chunk("legacy first chunk", None, 0, b"y" * 1000, 5000)
    start = up.legacy_chunk
    chunk("legacy chunk", up.legacy_id, start, up.legacy_data[start : start + up.legacy_chunk], len(up.legacy_data))
    call(
        "legacy completion",
        "POST",
        f"{server.files_url}complete/",
        headers={"Cookie": user.cookie, "X-Requested-With": "XMLHttpRequest"},
        data={"csrfmiddlewaretoken": user.csrf, "upload_id": up.legacy_id, "md5": md5(up.legacy_data)},
    )
    return answers


def assert_all_503(answers: list[Answer]) -> None:
    print("\n" + "\n".join(f"  {a.what}: {a.status} in {a.seconds:.2f} s" for a in answers))
    problems = []
    for a in answers:
        if a.status != 503:
            problems.append(f"{a.what}: {a.status} {a.text[:200]!r}")
            continue
        if not (a.retry_after or "").isdigit():
            problems.append(f"{a.what}: 503 without a Retry-After in seconds ({a.retry_after!r})")
        if a.what.startswith("legacy"):
            if "unavailable" not in a.text or not a.text.lstrip().startswith("{"):
                problems.append(f"{a.what}: 503 without a JSON detail naming the outage: {a.text[:200]!r}")
        elif "HEAD" not in a.what and "unavailable" not in a.text:
            problems.append(f"{a.what}: 503 without a message naming the outage: {a.text[:200]!r}")
    assert not problems, "\n".join(problems)


def assert_untouched(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> None:
    """Every file that existed before the outage is still there, byte for byte."""
    changed = {name: (before[name], after.get(name)) for name in before if after.get(name) != before[name]}
    assert not changed, f"the outage changed or removed data files: {changed}"


def assert_nothing_left_behind(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> None:
    """Refused requests leave no file behind (no record points at one: nothing would ever remove it)."""
    new = sorted(set(after) - set(before))
    assert not new, f"requests refused with 503 left files in the upload directory: {new}"


def options_still_answer(server: GunicornServer) -> None:
    """OPTIONS needs no upload record: it is answered during the outage."""
    response = requests.options(server.files_url, timeout=CLIENT_TIMEOUT)
    assert response.status_code == 204, response.text
    assert response.headers["Tus-Version"] == "1.0.0"


def test_redis_stopped_every_request_answers_503_and_no_file_changes(
    server: GunicornServer, redis_back: RedisServer
) -> None:
    user = login(server, "outage-stop")
    up = start_uploads(server, user, seed=10)
    before = snapshot(server.upload_dir)

    redis_back.stop()
    options_still_answer(server)
    answers = outage_requests(server, user, up)
    after = snapshot(server.upload_dir)
    redis_back.start()

    assert_all_503(answers)
    assert_untouched(before, after)

    # Redis is back (empty: the test server keeps nothing); the server serves new uploads at once.
    data = payload(200_000, 11, kind="random")
    url = tus_create(server, user, len(data))
    assert tus_patch(server, user, url, 0, data).status == 204
    assert sha256(file_bytes(server.upload_dir / upload_id_of(url)) or b"") == sha256(data)

    assert_nothing_left_behind(before, after)


def test_redis_hanging_answers_503_within_the_timeout_then_uploads_continue(
    server: GunicornServer, redis_back: RedisServer
) -> None:
    user = login(server, "outage-hang")
    up = start_uploads(server, user, seed=20)
    before = snapshot(server.upload_dir)
    assert redis_back.process is not None

    os.kill(redis_back.process.pid, signal.SIGSTOP)
    try:
        options_still_answer(server)
        answers = outage_requests(server, user, up)
        after = snapshot(server.upload_dir)
    finally:
        os.kill(redis_back.process.pid, signal.SIGCONT)

    assert_all_503(answers)
    assert_untouched(before, after)

    # On waking, Redis ran the lock requests it had been sent; their senders had
    # given up, so none of them took a lock that would now keep the upload busy.
    assert held_locks(server, up) == []

    # Redis kept its data: every upload goes on from where it was, to the exact bytes.
    offset = settled_offset(up.tus_url, user)
    assert offset == 250_000
    reply = tus_patch(server, user, up.tus_url, offset, up.tus_data[offset:])
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(up.tus_data))
    assert sha256(file_bytes(server.upload_dir / upload_id_of(up.tus_url)) or b"") == sha256(up.tus_data)

    assert settled_offset(up.deferred_url, user) == 100_000
    reply = tus_patch(
        server,
        user,
        up.deferred_url,
        100_000,
        up.deferred_data[100_000:],
        **{"Upload-Length": str(len(up.deferred_data))},
    )
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(up.deferred_data))
    assert record_of(server, upload_id_of(up.deferred_url))["state"] == "complete"
    assert sha256(file_bytes(server.upload_dir / upload_id_of(up.deferred_url)) or b"") == sha256(up.deferred_data)

    start = up.legacy_chunk
    while start < len(up.legacy_data):
        piece = up.legacy_data[start : start + up.legacy_chunk]
        reply = legacy_chunk(server, user, up.legacy_id, start, piece, len(up.legacy_data))
        assert reply.status == 200, reply.body
        start += len(piece)
        assert json_of(reply)["offset"] == start
    done = legacy_complete(server, user, up.legacy_id, md5(up.legacy_data))
    assert done.status_code == 200, done.text
    assert sha256(file_bytes(server.upload_dir / up.legacy_id) or b"") == sha256(up.legacy_data)

    finished = requests.head(up.done_url, headers=user.tus(), timeout=30)
    assert finished.status_code == 200 and finished.headers["Upload-Offset"] == "50000"

    assert_nothing_left_behind(before, after)


def test_redis_hanging_mid_body_keeps_what_was_acknowledged(
    gunicorn_factory: Callable[..., GunicornServer], redis_back: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops answering while a PATCH body streams: the PATCH answers 503; the offset never
    counts a byte the data file does not hold (a timed-out Redis call may still be carried out
    once Redis answers again), no acknowledged byte is lost, and the upload finishes exactly.

    Redis freezes once the PATCH is listening for release requests (it subscribes after 0.2 s)
    and long before it would renew its lock (a 12 s TTL renews every 4 s), so the first Redis
    call to time out is the offset advance at the end of the body. All requests go to one
    worker (the other is kept busy), which is first brought to where a busy worker is.
    """
    monkeypatch.setenv("TUSBRIDGE_TEST_WORKER_CLASS", "sync")  # one request at a time per worker: pinnable
    server = gunicorn_factory({"TUSBRIDGE_TEST_REDIS_TIMEOUT": str(REDIS_TIMEOUT), "TUSBRIDGE_TEST_LOCK_TTL": "12"})
    user = login(server, "outage-mid-body")
    data = payload(900_000, 30, kind="random")
    with PinnedWorker(server) as pinned:
        url = tus_create(server, user, len(data))
        upload_id = upload_id_of(url)
        assert tus_patch(server, user, url, 0, data[:300_000]).status == 204
        # A PATCH long enough to listen for release requests leaves the worker two pooled Redis
        # connections, as any busy worker has: the advance below then goes out on an open one.
        warm_data = payload(100_000, 31, kind="random")
        warm = tus_patch_request(server, user, tus_create(server, user, len(warm_data)), 0, len(warm_data))
        assert warm.worker_pid() == pinned.pid
        warm.send(warm_data[:1000])
        time.sleep(0.6)
        assert warm.finish(warm_data[1000:]).status == 204
        assert redis_back.process is not None

        headers = user.tus(
            **{"Content-Type": OFFSET_CT, "Upload-Offset": "300000", "Content-Length": str(len(data) - 300_000)}
        )
        request = RawRequest(server, "PATCH", path_of(url), headers)
        assert request.worker_pid() == pinned.pid
        request.send(data[300_000:500_000])
        wait_drained(server, request)
        time.sleep(0.6)  # the PATCH idles in body reads and subscribes to release requests
        os.kill(redis_back.process.pid, signal.SIGSTOP)
        try:
            request.sock.settimeout(CLIENT_TIMEOUT + 10)
            try:
                request.send(data[500_000:])
            except OSError:
                pass  # the server may answer and close before reading it all
            reply = try_response(request, timeout=CLIENT_TIMEOUT + 10)
        finally:
            os.kill(redis_back.process.pid, signal.SIGCONT)
    assert reply is not None, "the PATCH got no answer"
    # Its body ended while Redis was frozen, so it could not commit in time: 503.
    assert reply.status == 503, (reply.status, reply.body)
    assert (reply.headers.get("Retry-After") or "").isdigit()
    offset = settled_offset(url, user)
    stored = file_bytes(server.upload_dir / upload_id)
    assert stored is not None and len(stored) >= offset, (
        f"HEAD reports {offset} bytes but the data file holds {len(stored or b'')}"
    )
    assert stored[:offset] == data[:offset]
    assert offset >= 300_000
    if offset < len(data):
        assert tus_patch(server, user, url, offset, data[offset:]).status == 204
    assert sha256(file_bytes(server.upload_dir / upload_id) or b"") == sha256(data)
