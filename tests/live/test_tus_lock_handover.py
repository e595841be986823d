"""Lock handover on a live gunicorn (2 sync workers): a silent PATCH must not block a reconnecting client.

A client whose connection stalls mid-body (it neither sends nor closes) keeps
its PATCH - and the upload's lock - alive on one worker. When the same client
reconnects (HEAD, or a PATCH from the offset it knows) on the other worker, the
stalled request is asked to let go: it keeps the bytes that arrived and unlocks,
so the new request is answered long before the stalled one would time out
(TUSBRIDGE_IDLE_TIMEOUT, 60 s by default). Nothing here measures time; every
wait is bounded by a request timeout or by bounded polling.

A lock held by something that never listens for release requests (simulated by
writing the lock key straight into Redis) makes a request give up after
TUSBRIDGE_LOCK_WAIT with 423 and a message, changing nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests
from django.test import Client

from tests.support.data import file_sha256, payload, sha256, upload_id_of
from tests.support.live import (
    HAS_PROC_NET,
    OFFSET_CT,
    TUS_VERSION,
    RawRequest,
    RawResponse,
    auth,
    cookie_header,
    create,
    data_of,
    data_path,
    head_offset,
    is_locked,
    lock_key,
    patch,
    patch_headers,
    path_of,
    poll,
    record_of,
    request_on_other_worker,
    wait_drained,
)
from tests.support.servers import GunicornServer
from tests.support.tus import data_of as local_data_of
from tests.support.tus import lock_key as local_lock_key
from tests.support.tus import tus

#: A request that is still waiting after this long has hung (the stalled holder
#: would only give up after the 60 s idle timeout).
SECOND_REQUEST_TIMEOUT = 10.0

#: gunicorn's per-request read size in tusbridge (TUSBRIDGE_READ_SIZE default).
READ_SIZE = 1024 * 1024


@pytest.fixture(scope="module")
def sync_server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    """Sync workers: a held connection pins its worker, so a second request must go to the other process."""
    return gunicorn_factory(worker_class="sync")


@pytest.fixture(scope="module")
def sync_session(sync_server: GunicornServer) -> Iterator[requests.Session]:
    s = sync_server.login("handover")
    try:
        yield s
    finally:
        s.close()


def stall_patch(
    server: GunicornServer, session: requests.Session, url: str, data: bytes, offset: int, sent: int
) -> RawRequest:
    """Start a PATCH of ``data[offset:]``, send it up to ``sent`` and then stay silent (socket open)."""
    request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, offset, len(data) - offset))
    request.send(data[offset:sent])
    # The holder has the upload's lock once it reads the body.
    poll(lambda: is_locked(server, upload_id_of(url)), "the stalled PATCH to take the upload's lock")
    wait_until_worker_read_everything(server, request)
    return request


def wait_until_worker_read_everything(server: GunicornServer, request: RawRequest) -> None:
    """Bounded wait until the worker has taken every byte we sent out of the kernel (they arrived)."""
    if HAS_PROC_NET:
        wait_drained(server, request)


def holder_answer(request: RawRequest) -> RawResponse:
    """The response the stalled request got when it let go (its socket is still open on our side)."""
    request.sock.settimeout(SECOND_REQUEST_TIMEOUT)
    return request.response()


SENT_AMOUNTS = [
    pytest.param(READ_SIZE + 300_001, id="one-read-and-a-bit"),
    pytest.param(700_001, id="less-than-one-read"),
    pytest.param(2 * READ_SIZE, id="whole-reads"),
]


@pytest.mark.parametrize("sent", SENT_AMOUNTS)
def test_head_gets_through_a_stalled_patch_and_upload_finishes(
    gunicorn_server: GunicornServer, session: requests.Session, sent: int
) -> None:
    """HEAD while another connection's PATCH is silent is answered; the upload then finishes from its offset."""
    server = gunicorn_server
    data = payload(3 * READ_SIZE + 12_345, seed=sent, kind="random")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    holder = stall_patch(server, session, url, data, 0, sent)
    try:
        # The second request; a hang until the holder's idle timeout fails here.
        response = requests.head(url, headers=auth(session), timeout=SECOND_REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        reported = int(response.headers["Upload-Offset"])
        assert 0 <= reported <= sent
        assert not is_locked(server, upload_id)
        # What counts is exactly what is in the file: a prefix of what was sent.
        assert data_of(server, upload_id) == data[:reported]
        assert record_of(server, upload_id)["offset"] == str(reported)
        # The stalled request was answered with the same offset.
        answer = holder_answer(holder)
        assert answer.status == 204, answer.body
        assert answer.headers["Upload-Offset"] == str(reported)
    finally:
        holder.close()

    rest = patch(session, url, reported, data[reported:])
    assert rest.status_code == 204, rest.text
    assert rest.headers["Upload-Offset"] == str(len(data))
    assert file_sha256(data_path(server, upload_id)) == sha256(data)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert record["offset"] == record["length"] == str(len(data))


@pytest.mark.parametrize("sent", SENT_AMOUNTS)
def test_head_during_a_stalled_patch_reports_every_byte_sent(
    gunicorn_server: GunicornServer, session: requests.Session, sent: int
) -> None:
    """The offset HEAD reports after the handover equals the bytes the worker received, not a multiple of the read size.

    The wait before the HEAD makes sure the worker has read every sent byte
    out of the kernel (receive queue empty), so they have all arrived.
    """
    server = gunicorn_server
    data = payload(3 * READ_SIZE + 54_321, seed=100 + sent, kind="random")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    holder = stall_patch(server, session, url, data, 0, sent)
    try:
        response = requests.head(url, headers=auth(session), timeout=SECOND_REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.headers["Upload-Offset"] == str(sent)
        assert data_of(server, upload_id) == data[:sent]
    finally:
        holder.close()


@pytest.mark.parametrize("amount", SENT_AMOUNTS)
def test_patch_from_the_sent_offset_gets_through_a_stalled_patch(
    gunicorn_server: GunicornServer, session: requests.Session, amount: int
) -> None:
    """A reconnecting client PATCHes from the offset it reached: accepted, no HEAD needed, exact bytes.

    ``amount`` bytes of the stalled PATCH's body were sent (and read by the worker).
    """
    server = gunicorn_server
    data = payload(4 * READ_SIZE + 777, seed=10 + amount, kind="random")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    head_start = 5000
    sent = head_start + amount
    assert patch(session, url, 0, data[:head_start]).status_code == 204
    holder = stall_patch(server, session, url, data, head_start, sent)
    try:
        headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": str(sent)})
        response = requests.patch(url, data=data[sent:], headers=headers, timeout=SECOND_REQUEST_TIMEOUT)
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == str(len(data))
    finally:
        holder.close()
    assert file_sha256(data_path(server, upload_id)) == sha256(data)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert record["offset"] == str(len(data))
    assert head_offset(server, session, url) == len(data)


@pytest.mark.skipif(not HAS_PROC_NET, reason="finds the serving worker through /proc")
def test_handover_crosses_workers(sync_server: GunicornServer, sync_session: requests.Session) -> None:
    """The HEAD is served by the other worker than the stalled PATCH (the release request crosses processes)."""
    server, session = sync_server, sync_session
    data = payload(2 * READ_SIZE + 99, seed=3, kind="random")
    sent = READ_SIZE  # a whole read: not affected by how partial reads are kept
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    holder = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    holder_pid = holder.worker_pid()
    try:
        holder.send(data[:sent])
        poll(lambda: is_locked(server, upload_id), "the stalled PATCH to take the lock")
        wait_until_worker_read_everything(server, holder)
        probe, probe_pid = request_on_other_worker(
            server, holder_pid, "HEAD", path_of(url), {"Tus-Resumable": TUS_VERSION, "Cookie": cookie_header(session)}
        )
        assert probe_pid != holder_pid
        probe.sock.settimeout(SECOND_REQUEST_TIMEOUT)
        reply = probe.finish()
        assert reply.status == 200
        assert reply.headers["Upload-Offset"] == str(sent)
    finally:
        holder.close()
    assert data_of(server, upload_id) == data[:sent]


def test_silent_lock_holder_makes_patch_answer_423(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """A lock whose holder never listens: PATCH answers 423 with a message after TUSBRIDGE_LOCK_WAIT, writes nothing.

    The live server runs with the default TUSBRIDGE_LOCK_WAIT (5 s); the
    harness has no environment switch to make it smaller.
    """
    server = gunicorn_server
    data = payload(300_000, seed=4, kind="random")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, data[:1000]).status_code == 204
    client = server.redis_client()
    try:
        assert client.set(lock_key(server, upload_id), "someone-else", nx=True, px=120_000)
        headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": "1000"})
        response = requests.patch(url, data=data[1000:], headers=headers, timeout=30)
        assert response.status_code == 423
        assert "busy" in response.text.lower()
        assert response.headers["Tus-Resumable"] == TUS_VERSION
        assert response.headers.get("Retry-After")
        # The foreign lock is untouched and nothing was written.
        assert client.get(lock_key(server, upload_id)) == b"someone-else"
        assert data_of(server, upload_id) == data[:1000]
        assert record_of(server, upload_id)["offset"] == "1000"
        client.delete(lock_key(server, upload_id))
    finally:
        client.close()
    done = patch(session, url, 1000, data[1000:])
    assert done.status_code == 204
    assert data_of(server, upload_id) == data


# In-process, where TUSBRIDGE_LOCK_WAIT can be made small -----------------------


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["PATCH", "HEAD", "DELETE"])
def test_silent_lock_holder_gives_423_after_lock_wait(
    client_logged_in: Client, settings: Any, redis_client: redis.Redis, method: str
) -> None:
    """With a small TUSBRIDGE_LOCK_WAIT, every locking request answers 423 with a message and changes nothing."""
    settings.TUSBRIDGE_LOCK_WAIT = 0.3
    t = tus(client_logged_in)
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    upload_id = upload_id_of(url)
    assert redis_client.set(local_lock_key(upload_id), "held-elsewhere", nx=True, px=60_000)
    if method == "PATCH":
        response = t.patch(url, b"defg", 3)
    elif method == "HEAD":
        response = t.head(url)
    else:
        response = t.delete(url)
    assert response.status_code == 423
    assert response["Retry-After"]
    if method != "HEAD":
        assert b"busy" in response.content.lower()
        assert b"0.3" in response.content
    assert redis_client.get(local_lock_key(upload_id)) == b"held-elsewhere"
    assert local_data_of(upload_id) == b"abc"
    redis_client.delete(local_lock_key(upload_id))
    assert t.offset(url) == 3
