"""Many slow uploads at once on one worker process: each costs a socket, not a thread.

Under both deployments the README offers (gunicorn's gevent worker, and
uvicorn with tusbridge's ASGI handler), one process holds hundreds of
PATCHes whose bodies have stopped mid-way (a slow link), each holding its
upload's lock, while a newcomer's creation, HEAD and PATCH are answered at
once; its Redis connections and threads stay within their configured
bounds; and every held upload then finishes with the right bytes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import (
    LEGACY_CHUNK,
    RawRequest,
    auth,
    cookie_header,
    create,
    data_of,
    head_offset,
    is_locked,
    logged_in,
    patch,
    patch_headers,
    path_of,
    poll,
    send_chunk,
)
from tests.support.servers import GunicornServer, RedisServer

LOCK_TTL = 2.0
HELD = 300  # far more than any thread pool of the threaded workers
SIZE = 64 * 1024
FIRST = 1000  # bytes each held PATCH sends before it goes quiet
MAX_REDIS_CONNECTIONS = 8


def body_of(index: int) -> bytes:
    return index.to_bytes(4, "big") * (SIZE // 4)


@pytest.fixture(scope="module", params=["gevent", "uvicorn"])
def deployment(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def client_name(deployment: str) -> str:
    """The name this server's Redis connections give themselves, to count them."""
    return f"many-{deployment}-{uuid.uuid4().hex[:10]}"


# Threads of the serving process at the most, whatever the number of uploads:
# ASYNC_THREADS for blocking calls under ASGI, and a few of the servers' own.
MAX_THREADS = 24


@pytest.fixture(scope="module")
def server(
    deployment: str,
    gunicorn_factory: Callable[..., GunicornServer],
    redis_server: RedisServer,
    client_name: str,
) -> GunicornServer:
    env = {
        "TUSBRIDGE_TEST_REDIS_URL": f"{redis_server.url}?client_name={client_name}",
        "TUSBRIDGE_TEST_REDIS_MAX_CONNECTIONS": str(MAX_REDIS_CONNECTIONS),
        "TUSBRIDGE_TEST_LOCK_TTL": str(LOCK_TTL),
    }
    return gunicorn_factory(env, workers=1, worker_class=deployment)


def threads_of(server: GunicornServer) -> int:
    """Threads of the process that serves requests (gunicorn's one worker, or uvicorn itself)."""
    pid = (server.worker_pids() or [server.pid])[0]
    return len(os.listdir(f"/proc/{pid}/task"))


def redis_connections(redis_server: RedisServer, client_name: str) -> int:
    client = redis_server.client()
    try:
        return sum(1 for c in client.client_list() if c.get("name") == client_name)
    finally:
        client.close()


def test_one_worker_holds_hundreds_of_slow_uploads_and_answers_a_newcomer_at_once(
    server: GunicornServer, redis_server: RedisServer, client_name: str
) -> None:
    session = server.login("many-uploads")
    urls = [create(server, session, SIZE) for _ in range(HELD)]
    held: list[RawRequest] = []
    try:
        for index, url in enumerate(urls):
            request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, SIZE))
            request.send(body_of(index)[:FIRST])
            held.append(request)
        # Every one of them is in flight at once: each holds its upload's lock.
        poll(
            lambda: all(is_locked(server, upload_id_of(url)) for url in urls) or None,
            f"all {HELD} PATCHes to hold their uploads",
            timeout=60,
        )
        peak = redis_connections(redis_server, client_name)
        assert threads_of(server) <= MAX_THREADS

        # A newcomer is answered while they hold: creation, HEAD, a whole PATCH.
        started = time.monotonic()
        url = create(server, session, 11)
        assert head_offset(server, session, url) == 0
        response = patch(session, url, 0, b"hello world")
        assert response.status_code == 204, response.text
        assert head_offset(server, session, url) == 11
        newcomer = time.monotonic() - started
        # A thread per request would make it wait for a held body's idle timeout (60 s).
        assert newcomer < 10, f"the newcomer took {newcomer:.1f} s"
        peak = max(peak, redis_connections(redis_server, client_name))

        # The held uploads go on and finish, each with its own bytes.
        for index, request in enumerate(held):
            request.send(body_of(index)[FIRST:])
        for request in held:
            answer = request.response()
            assert answer.status == 204, (answer.status, answer.body)
            assert answer.headers["Upload-Offset"] == str(SIZE)
        peak = max(peak, redis_connections(redis_server, client_name))
    finally:
        for request in held:
            request.close()
    for index, url in enumerate(urls):
        assert data_of(server, upload_id_of(url)) == body_of(index)
    assert 1 <= peak <= MAX_REDIS_CONNECTIONS


def test_a_held_upload_is_handed_to_its_reconnecting_client_within_a_second(server: GunicornServer) -> None:
    session = server.login("many-reconnect")
    url = create(server, session, SIZE)
    stalled = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, SIZE))
    try:
        stalled.send(body_of(1)[:FIRST])
        poll(lambda: is_locked(server, upload_id_of(url)) or None, "the stalled PATCH to hold the upload")
        started = time.monotonic()
        response = requests.head(url, headers=auth(session), timeout=10)
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert response.headers["Upload-Offset"] == str(FIRST)
        assert waited < 2.0, f"the reconnecting client waited {waited:.2f} s"
        response = patch(session, url, FIRST, body_of(1)[FIRST:])
        assert response.status_code == 204, response.text
    finally:
        stalled.close()
    assert data_of(server, upload_id_of(url)) == body_of(1)


def trickle(request: RawRequest, data: bytes, piece: int, every: float) -> None:
    """Send ``data`` in pieces, one every ``every`` seconds, until it is sent or the server stops reading."""
    for start in range(0, len(data), piece):
        try:
            request.send(data[start : start + piece])
        except OSError:
            return
        time.sleep(every)


def test_a_body_that_trickles_for_longer_than_the_lock_ttl_keeps_its_lock(server: GunicornServer) -> None:
    session = server.login("many-trickle")
    data = body_of(3)[:40_000]
    url = create(server, session, len(data))
    request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    started = time.monotonic()
    trickle(request, data, 500, 0.07)  # never silent for a poll interval, 2.8 s in all
    assert time.monotonic() - started > LOCK_TTL
    answer = request.response()
    assert answer.status == 204, (answer.status, answer.body)
    assert answer.headers["Upload-Offset"] == str(len(data))
    assert data_of(server, upload_id_of(url)) == data


def test_a_reconnecting_client_gets_an_upload_whose_body_still_trickles(server: GunicornServer) -> None:
    session = server.login("many-trickle-reconnect")
    data = body_of(4)[:60_000]
    url = create(server, session, len(data))
    old = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    sender = threading.Thread(target=trickle, args=(old, data[:30_000], 500, 0.07))
    sender.start()
    try:
        poll(lambda: is_locked(server, upload_id_of(url)) or None, "the trickling PATCH to hold the upload")
        time.sleep(0.5)
        waited = time.monotonic()
        offset = head_offset(server, session, url)
        waited = time.monotonic() - waited
        assert waited < 2.5, f"the reconnecting client waited {waited:.2f} s"
        assert 0 < offset <= 30_000
    finally:
        sender.join()
        old.close()
    offset = head_offset(server, session, url)
    response = patch(session, url, offset, data[offset:])
    assert response.status_code == 204, response.text
    assert data_of(server, upload_id_of(url)) == data


def legacy_body(token: str, upload_id: str, piece: bytes, boundary: str) -> bytes:
    """A jQuery-File-Upload chunk's multipart body: fields first, then the file part."""
    fields = {"csrfmiddlewaretoken": token, "upload_id": upload_id}
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + piece
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts)


def test_trickling_legacy_chunks_do_not_hold_the_redis_connections(
    gunicorn_factory: Callable[..., GunicornServer], deployment: str
) -> None:
    """Each chunk's lock request is answered while its bytes trickle: more chunks than connections all succeed."""
    server = gunicorn_factory(
        {"TUSBRIDGE_TEST_REDIS_MAX_CONNECTIONS": "4", "TUSBRIDGE_TEST_REDIS_TIMEOUT": "2"},
        workers=1,
        worker_class=deployment,
    )
    session, token = logged_in(server, "many-legacy")
    tail, count = 6_000, 12  # the second chunk of each upload trickles in (about 3 s)
    data = [(body_of(10 + i) * 2)[: LEGACY_CHUNK + tail] for i in range(count)]
    ids = []
    for whole in data:
        response = send_chunk(server, session, token, whole, 0, None)  # the first LEGACY_CHUNK bytes
        assert response.status_code == 200, response.text
        ids.append(response.json()["upload_id"])
    held = []
    for index, upload_id in enumerate(ids):
        boundary = f"b{index:04d}"
        body = legacy_body(token, upload_id, data[index][LEGACY_CHUNK:], boundary)
        headers = {
            "Cookie": cookie_header(session),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Range": f"bytes {LEGACY_CHUNK}-{LEGACY_CHUNK + tail - 1}/{LEGACY_CHUNK + tail}",
            "X-Requested-With": "XMLHttpRequest",
            "Content-Length": str(len(body)),
        }
        held.append((RawRequest(server, "POST", "/files/", headers), body))
    senders = [threading.Thread(target=trickle, args=(request, body, 400, 0.2)) for request, body in held]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    answers = [request.response() for request, _ in held]
    assert [a.status for a in answers] == [200] * count, [(a.status, a.body[:100]) for a in answers]
    for upload_id, whole in zip(ids, data, strict=True):
        assert data_of(server, upload_id) == whole
