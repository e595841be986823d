"""An upload's lock kept between back-to-back legacy chunks on one connection (``tusbridge.gunicorn.keeping``).

Live, under gunicorn with ``tusbridge.gunicorn.workers.ThreadWorker`` and a linger of
half a second, so that a chunk sent right after the last one's answer always
finds the lock still kept. Redis's MONITOR counts the lock requests.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
import requests

from tests.support.data import payload
from tests.support.live import LEGACY_CHUNK, data_of, is_locked, logged_in, poll, record_of, send_chunk, send_complete
from tests.support.servers import THREAD_WORKER_CLASS
from tusbridge.gunicorn import keeping
from tusbridge.records.redis import _ACQUIRE_AND_GET

if TYPE_CHECKING:
    from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

LINGER = 0.5
ACQUIRE_SHA = hashlib.sha1(_ACQUIRE_AND_GET.encode()).hexdigest()


@pytest.fixture(scope="module")
def gunicorn_extra_env() -> dict[str, str]:
    return {"TUSBRIDGE_TEST_KEEPALIVE_LINGER": str(LINGER), "TUSBRIDGE_TEST_LOCK_WAIT": "5"}


@pytest.fixture(scope="module")
def gunicorn_server(
    gunicorn_factory: Callable[..., GunicornServer], gunicorn_extra_env: dict[str, str]
) -> GunicornServer:
    """Keeping a lock between requests is a feature of tusbridge's threaded worker."""
    return gunicorn_factory(gunicorn_extra_env, worker_class=THREAD_WORKER_CLASS)


@contextmanager
def lock_requests(server: GunicornServer) -> Iterator[Callable[[str], int]]:
    """Watch Redis (MONITOR); the callable counts the lock requests made so far for one upload."""
    seen: list[str] = []
    stop = threading.Event()
    ready = threading.Event()
    client = server.redis_client()
    client.script_load(_ACQUIRE_AND_GET)  # else a first EVALSHA fails (NOSCRIPT) and is sent again

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if stop.is_set():
                    return
                seen.append(str(event.get("command", "")))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)

    def count(upload_id: str) -> int:
        marker = f"{{{upload_id}}}"
        return sum(1 for command in list(seen) if command.startswith(f"EVALSHA {ACQUIRE_SHA}") and marker in command)

    try:
        yield count
    finally:
        stop.set()
        client.ping()  # wakes the monitor so that it sees the stop
        thread.join(10)
        client.close()


def started(server: GunicornServer, username: str, chunks: int, seed: int) -> tuple[requests.Session, str, bytes, str]:
    """A new user's session that sent the first of ``chunks`` chunks: with its CSRF token, the data, the upload id."""
    session, token = logged_in(server, username)
    data = payload(chunks * LEGACY_CHUNK, seed=seed)
    response = send_chunk(server, session, token, data, 0, None)
    assert response.status_code == 200, response.text
    return session, token, data, response.json()["upload_id"]


def another_connection(session: requests.Session) -> requests.Session:
    """The same user on a connection of its own."""
    other = requests.Session()
    other.cookies.update(session.cookies.get_dict())
    return other


def upload_in_chunks(
    server: GunicornServer,
    session: requests.Session,
    token: str,
    data: bytes,
    upload_id: str | None = None,
    on_answer: Callable[[int], object] = lambda offset: None,
) -> str:
    start = 0 if upload_id is None else int(record_of(server, upload_id)["offset"])
    while start < len(data):
        response = send_chunk(server, session, token, data, start, upload_id)
        assert response.status_code == 200, response.text
        upload_id = response.json()["upload_id"]
        start = response.json()["offset"]
        on_answer(start)
    assert upload_id is not None
    return upload_id


def test_back_to_back_chunks_on_one_connection_take_the_lock_once(gunicorn_server: GunicornServer) -> None:
    """Twelve chunks on one kept-alive connection: one lock request, the right bytes, a verified md5."""
    server = gunicorn_server
    session, token = logged_in(server, "kept-lock")
    data = payload(12 * LEGACY_CHUNK - 7, seed=11)
    with lock_requests(server) as count:
        upload_id = upload_in_chunks(server, session, token, data)
        assert count(upload_id) == 1
    assert data_of(server, upload_id) == data
    assert_md5_saved(server, upload_id, len(data))
    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text


def assert_md5_saved(server: GunicornServer, upload_id: str, offset: int) -> None:
    """Once the lock went back, the record holds the running MD5 of all ``offset`` bytes (no re-read at completion)."""
    poll(lambda: not is_locked(server, upload_id) or None, "the kept lock to go back", timeout=LINGER * 10)
    record = record_of(server, upload_id)
    assert (record["offset"], record["md5_offset"]) == (str(offset), str(offset))


@pytest.mark.parametrize("ending", ["quiet", "closed"])
def test_the_lock_goes_back_when_the_connection_ends(gunicorn_server: GunicornServer, ending: str) -> None:
    """After a chunk the lock is kept for the linger at most, or until the client closes (its TTL is 30 s)."""
    session, _, _, upload_id = started(gunicorn_server, f"kept-{ending}", chunks=3, seed=12)
    if ending == "closed":
        session.close()
    poll(lambda: not is_locked(gunicorn_server, upload_id) or None, "the kept lock to go back", timeout=LINGER * 10)


def test_a_connection_whose_kept_lock_went_unused_pauses_keeping(gunicorn_server: GunicornServer) -> None:
    """The next chunk came after the linger: the chunk after it lets go at once, and the one after keeps again.

    Twice, with a used kept lock in between: the second miss pauses keeping
    as briefly as the first (a miss in a row would pause it for longer).
    """
    server = gunicorn_server
    session, token, data, upload_id = started(server, "kept-late", chunks=8, seed=18)
    offset = LEGACY_CHUNK
    for _ in range(2):
        poll(lambda: not is_locked(server, upload_id) or None, "the linger to end", timeout=LINGER * 10)
        for kept_after in (False, True, True):  # a late chunk, then two at once (the second uses the kept lock)
            response = send_chunk(server, session, token, data, offset, upload_id)  # same connection
            assert response.status_code == 200, response.text
            assert is_locked(server, upload_id) is kept_after  # a kept lock is held for the next LINGER seconds
            offset += LEGACY_CHUNK
    upload_in_chunks(server, session, token, data, upload_id)
    assert data_of(server, upload_id) == data


def test_misses_in_a_row_pause_keeping_for_longer() -> None:
    """Each miss in a row doubles the pause (in requests), up to 64."""
    state = keeping.Connection()
    pauses = []
    for _ in range(8):
        state.missed()
        pauses.append(state.keeps_from - state.requests)
    assert pauses == [2, 4, 8, 16, 32, 64, 64, 64]


@pytest.mark.parametrize("then", ["complete", "tus-head", "other-upload"])
def test_the_next_request_on_the_connection_is_not_kept_waiting(gunicorn_server: GunicornServer, then: str) -> None:
    """Whatever follows a chunk on its connection finds the upload free: no 423, no wait for LOCK_WAIT."""
    server = gunicorn_server
    session, token = logged_in(server, f"kept-then-{then}")
    data = payload(3 * LEGACY_CHUNK, seed=14)
    upload_id = upload_in_chunks(server, session, token, data)
    if then == "complete":
        response = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
        assert response.status_code == 200, response.text
        assert record_of(server, upload_id)["state"] == "complete"
    elif then == "tus-head":
        response = session.head(f"{server.files_url}{upload_id}", headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        assert response.status_code == 200
        assert response.headers["Upload-Offset"] == str(len(data))
    else:
        other = upload_in_chunks(server, session, token, payload(2 * LEGACY_CHUNK, seed=15))
        assert not is_locked(server, upload_id)
        assert data_of(server, other) == payload(2 * LEGACY_CHUNK, seed=15)
    assert data_of(server, upload_id) == data


def test_a_chunk_on_another_connection_gets_the_upload(gunicorn_server: GunicornServer) -> None:
    """The client moved to a new connection while the old one keeps the lock: the chunk is stored."""
    session, token, data, upload_id = started(gunicorn_server, "kept-moved", chunks=4, seed=16)
    upload_in_chunks(gunicorn_server, another_connection(session), token, data, upload_id)
    assert data_of(gunicorn_server, upload_id) == data


def test_a_request_elsewhere_mid_stream_leaves_the_md5_whole(gunicorn_server: GunicornServer) -> None:
    """A HEAD from another connection while chunks keep coming: the holder saves the MD5 as it lets go."""
    server = gunicorn_server
    session, token, data, upload_id = started(server, "kept-head", chunks=30, seed=19)
    offsets: list[int] = []

    def keep_sending() -> None:
        upload_in_chunks(server, session, token, data, upload_id, on_answer=offsets.append)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        poll(lambda: len(offsets) >= 5 or None, "five chunks")
        other = another_connection(session)
        response = other.head(f"{server.files_url}{upload_id}", headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        assert response.status_code == 200
        assert int(response.headers["Upload-Offset"]) >= 5 * LEGACY_CHUNK
    finally:
        sender.join(60)
    assert offsets[-1] == len(data)
    assert_md5_saved(server, upload_id, len(data))
    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text


def test_termination_gets_through_while_chunks_keep_coming(gunicorn_server: GunicornServer) -> None:
    """A tus DELETE from another connection while one connection sends chunk after chunk.

    The chunks would hold the lock without a gap: each advance sees the
    release request and lets go instead of keeping, so the DELETE is served
    and the next chunk finds the upload gone.
    """
    server = gunicorn_server
    session, token, data, upload_id = started(server, "kept-delete", chunks=400, seed=17)
    statuses: list[int] = []
    deleted = threading.Event()

    def keep_sending() -> None:
        start = LEGACY_CHUNK
        while start < len(data):
            response = send_chunk(server, session, token, data, start, upload_id)
            statuses.append(response.status_code)
            if response.status_code != 200:
                return
            start = response.json()["offset"]
            if len(statuses) == 5:
                deleted.set()

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        assert deleted.wait(30)
        other = another_connection(session)
        response = other.delete(f"{server.files_url}{upload_id}", headers={"Tus-Resumable": "1.0.0"}, timeout=30)
        assert response.status_code == 204, response.text
    finally:
        sender.join(60)
    assert statuses[-1] in (404, 409, 410), statuses[-5:]  # 409: stopped mid-chunk by the DELETE
    assert len(statuses) < 399  # it stopped long before the end
    assert data_of(server, upload_id) is None
