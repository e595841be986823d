"""Slow and vanishing clients on a live gunicorn, beyond tests/live/test_tus.py and live/test_tus_lock_handover.py.

- A client that trickles a few bytes every 0.3 s for a few seconds, then
  sends the rest: the body is stored whole (tus PATCH and legacy chunk). The
  server reads tus bodies with a 0.25 s socket timeout to hear release
  requests; none of those timeouts may be taken for a client that left.
- A legacy chunk cut off mid-body (the connection closes at once, or after
  a silence): the offset does not move, none of its bytes count, the data
  file is exactly what was acknowledged, and the upload resumes from there
  (re-sent chunk, md5 completion). A new upload's first chunk cut off
  leaves no record and no file.
- A legacy client that re-sends its chunk on a new connection while the old
  one still holds the upload (silent mid-body): the old request hears the
  new one at its next silence and lets go, answering 409 and counting
  nothing; the re-sent chunk is stored and the upload completes.
- A legacy client that goes silent mid-chunk without closing: 408 after
  TUSBRIDGE_IDLE_TIMEOUT, the lock let go and nothing counted (a first
  chunk leaves no record and no file).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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
    settled_offset,
    try_response,
    tus_create,
    tus_patch_request,
)
from tests.support.live import HAS_PROC_NET, RawRequest, is_locked, poll, record_of, wait_drained, wait_server_done
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

LOCK_WAIT = 2.0


@pytest.fixture(scope="module")
def server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory({"TUSBRIDGE_TEST_LOCK_WAIT": str(LOCK_WAIT)})


@pytest.fixture(scope="module")
def user(server: GunicornServer) -> User:
    return login(server, "slow-clients")


def trickle(request: RawRequest, body: bytes, *, pieces: int = 10, size: int = 7, pause: float = 0.3) -> int:
    """Send ``pieces`` pieces of ``size`` bytes, ``pause`` s apart; return how many bytes went."""
    sent = 0
    for _ in range(pieces):
        request.send(body[sent : sent + size])
        sent += size
        threading.Event().wait(pause)
    return sent


def test_tus_patch_trickled_for_seconds_is_stored_whole(server: GunicornServer, user: User) -> None:
    data = payload(400_000, 1, kind="random")
    url = tus_create(server, user, len(data))
    request = tus_patch_request(server, user, url, 0, len(data))
    sent = trickle(request, data)
    request.send(data[sent:])
    reply = request.response()
    assert reply.status == 204, (reply.status, reply.body)
    assert reply.headers["Upload-Offset"] == str(len(data))
    assert file_bytes(server.upload_dir / upload_id_of(url)) == data
    assert record_of(server, upload_id_of(url))["state"] == "complete"


def test_legacy_chunk_trickled_for_seconds_is_stored_whole(server: GunicornServer, user: User) -> None:
    data = payload(300_000, 2, kind="random")
    first = legacy_chunk(server, user, None, 0, data[:100_000], len(data))
    assert first.status == 200, first.body
    upload_id = json_of(first)["upload_id"]
    request, body = legacy_chunk_request(server, user, upload_id, 100_000, data[100_000:], len(data))
    sent = trickle(request, body)
    request.send(body[sent:])
    reply = request.response()
    assert reply.status == 200, (reply.status, reply.body)
    assert json_of(reply)["offset"] == len(data)
    assert legacy_complete(server, user, upload_id, md5(data)).status_code == 200
    assert file_bytes(server.upload_dir / upload_id) == data


def cut_off(server: GunicornServer, request: RawRequest, body: bytes, sent: int, stall: bool) -> None:
    request.send(body[:sent])
    if HAS_PROC_NET:
        wait_drained(server, request)  # the worker has read (and written) these bytes
    if stall:
        threading.Event().wait(1.0)
    request.close()
    if HAS_PROC_NET:
        wait_server_done(server, request.client_port)


@pytest.mark.parametrize("stall", [False, True], ids=["closes-at-once", "stalls-then-closes"])
def test_legacy_chunk_cut_off_mid_body_counts_nothing_and_resumes(
    server: GunicornServer, user: User, stall: bool
) -> None:
    chunk = 200_000
    data = payload(3 * chunk, 3 + stall, kind="random")
    first = legacy_chunk(server, user, None, 0, data[:chunk], len(data))
    assert first.status == 200, first.body
    upload_id = json_of(first)["upload_id"]
    url = f"{server.files_url}{upload_id}"

    request, body = legacy_chunk_request(server, user, upload_id, chunk, data[chunk : 2 * chunk], len(data))
    cut_off(server, request, body, len(body) // 2, stall)

    assert settled_offset(url, user) == chunk
    assert record_of(server, upload_id)["offset"] == str(chunk)
    assert file_bytes(server.upload_dir / upload_id) == data[:chunk], "the cut-off chunk left bytes behind"
    # The client's retry of the same chunk is stored, and the upload completes with the right md5.
    for start in (chunk, 2 * chunk):
        reply = legacy_chunk(server, user, upload_id, start, data[start : start + chunk], len(data))
        assert reply.status == 200, reply.body
        assert json_of(reply)["offset"] == start + chunk
    done = legacy_complete(server, user, upload_id, md5(data))
    assert done.status_code == 200, done.text
    assert sha256(file_bytes(server.upload_dir / upload_id) or b"") == sha256(data)


def test_legacy_first_chunk_cut_off_leaves_nothing(server: GunicornServer, user: User) -> None:
    names, keys = set(p.name for p in server.upload_dir.iterdir()), set(server.keys())
    data = payload(300_000, 5, kind="random")
    request, body = legacy_chunk_request(server, user, None, 0, data[:200_000], len(data))
    cut_off(server, request, body, len(body) // 2, stall=False)
    poll(lambda: not any(k.startswith(f"{server.key_prefix}:lock:".encode()) for k in server.keys()), "no lock")
    assert set(p.name for p in server.upload_dir.iterdir()) == names
    assert set(server.keys()) == keys


@pytest.mark.skipif(not HAS_PROC_NET, reason="waits for the worker to read the body through /proc")
def test_legacy_chunk_resent_while_the_old_connection_holds_the_upload(server: GunicornServer, user: User) -> None:
    """The old request lets go at its next silence: the re-sent chunk is stored, the old one answers 409."""
    chunk = 200_000
    data = payload(2 * chunk, 6, kind="random")
    first = legacy_chunk(server, user, None, 0, data[:chunk], len(data))
    assert first.status == 200, first.body
    upload_id = json_of(first)["upload_id"]
    # The first chunk's thread may keep the lock while it waits for that connection's next request.
    poll(lambda: not is_locked(server, upload_id) or None, "the first chunk's connection to let go")

    old, body = legacy_chunk_request(server, user, upload_id, chunk, data[chunk:], len(data))
    old.send(body[: len(body) // 2])
    wait_drained(server, old)  # the old request has read what was sent...
    poll(lambda: is_locked(server, upload_id) or None, "the old request to hold the upload")  # ...and holds it

    # The same chunk again, on a new connection: stored (were the old request not to let
    # go, this one would give up after TUSBRIDGE_LOCK_WAIT with 409).
    retry, retry_body = legacy_chunk_request(server, user, upload_id, chunk, data[chunk:], len(data))
    retry.sock.settimeout(2 * LOCK_WAIT + 20)
    answer = retry.finish(retry_body)
    assert answer.status == 200, (answer.status, answer.body)
    assert json_of(answer)["offset"] == len(data)

    given_up = try_response(old, 10)
    assert given_up is not None and given_up.status == 409, given_up
    assert "took the upload over" in json_of(given_up)["detail"]

    done = legacy_complete(server, user, upload_id, md5(data))
    assert done.status_code == 200, done.text
    assert file_bytes(server.upload_dir / upload_id) == data


IDLE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def impatient_server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory({"TUSBRIDGE_TEST_IDLE_TIMEOUT": str(IDLE_TIMEOUT)})


@pytest.mark.parametrize("first_chunk", [False, True])
def test_legacy_chunk_from_a_silent_client_is_dropped_after_the_idle_timeout(
    impatient_server: GunicornServer, first_chunk: bool
) -> None:
    """A client that stops sending mid-chunk (without closing) gets 408 and leaves the upload as it was.

    Its lock is let go with the answer, so the chunk sent again is stored at once;
    a new upload's first chunk leaves no record and no file.
    """
    server = impatient_server
    user = login(server, f"silent-{first_chunk}")
    chunk = 200_000
    data = payload(2 * chunk, 7 + first_chunk, kind="random")
    names, keys = set(p.name for p in server.upload_dir.iterdir()), set(server.keys())
    upload_id = None
    start = 0
    if not first_chunk:
        reply = legacy_chunk(server, user, None, 0, data[:chunk], len(data))
        assert reply.status == 200, reply.body
        upload_id = json_of(reply)["upload_id"]
        start = chunk

    silent, body = legacy_chunk_request(server, user, upload_id, start, data[start : start + chunk], len(data))
    silent.send(body[: len(body) // 2])
    answer = try_response(silent, IDLE_TIMEOUT + 20)  # never closed by the client: the server ends it
    assert answer is not None and answer.status == 408, answer
    assert "No data for" in json_of(answer)["detail"]

    if first_chunk:
        poll(lambda: set(server.keys()) == keys, "no record or lock left")
        assert set(p.name for p in server.upload_dir.iterdir()) == names
        return
    assert upload_id is not None
    assert not any(key.startswith(f"{server.key_prefix}:lock:".encode()) for key in server.keys())
    assert record_of(server, upload_id)["offset"] == str(chunk)
    assert file_bytes(server.upload_dir / upload_id) == data[:chunk]
    reply = legacy_chunk(server, user, upload_id, chunk, data[chunk:], len(data))
    assert reply.status == 200, reply.body
    done = legacy_complete(server, user, upload_id, md5(data))
    assert done.status_code == 200, done.text
    assert file_bytes(server.upload_dir / upload_id) == data
