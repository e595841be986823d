"""tus over real HTTP against a live gunicorn (2 sync workers sharing Redis records).

Every test checks what the server stored (the data file named after the upload
id in the server's upload directory) and the Redis record, not only the HTTP
answers. Requests go over fresh connections (gunicorn's sync workers close
after each response); where it matters which worker served a request, the
request is written by hand on a raw socket and the accepting worker is read
from /proc (see ``tests.support.live``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import requests

from tests.support.data import b64, file_sha256, payload, sha256, upload_id_of
from tests.support.live import (
    HAS_PROC_NET,
    OFFSET_CT,
    TUS,
    TUS_VERSION,
    RawRequest,
    RawResponse,
    auth,
    cookie_header,
    create,
    data_of,
    data_path,
    head,
    head_offset,
    is_locked,
    patch,
    path_of,
    poll,
    record_of,
    request_on_other_worker,
    wait_server_done,
)
from tests.support.servers import GunicornServer
from tests.support.together import run_together

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def gunicorn_server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    """Sync workers: one request per process, so that races here are between two processes."""
    return gunicorn_factory(worker_class="sync")


needs_proc = pytest.mark.skipif(not HAS_PROC_NET, reason="finds the serving worker through /proc")


def raw_patch_headers(session: requests.Session, offset: int, length: int | None) -> dict[str, str]:
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Cookie": cookie_header(session),
        "Content-Type": OFFSET_CT,
        "Upload-Offset": str(offset),
    }
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    return headers


def chunked(pieces: list[bytes]) -> bytes:
    """HTTP/1.1 chunked framing of ``pieces`` plus the last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


def wait_settled(server: GunicornServer, upload_id: str) -> None:
    """Bounded wait until no request holds the upload's lock (a cut-off PATCH has committed)."""
    poll(lambda: not is_locked(server, upload_id), f"the lock of {upload_id} to be released")


def assert_complete(server: GunicornServer, upload_id: str, expected: bytes) -> dict[str, str]:
    """The data file holds exactly ``expected`` and the record says complete at its length."""
    path = data_path(server, upload_id)
    assert path.is_file()
    assert path.stat().st_size == len(expected)
    assert file_sha256(path) == sha256(expected)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert int(record["offset"]) == len(expected)
    assert record["length"] == str(len(expected))
    assert record["completed_at"] not in ("", None)
    return record


# 1. The whole protocol with requests ------------------------------------------------


def test_full_flow_with_requests(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """OPTIONS, POST, HEAD, many PATCHes (each checked by HEAD), a stale PATCH, DELETE."""
    server = gunicorn_server
    options = requests.options(server.files_url, timeout=30)
    assert options.status_code in (200, 204)
    assert options.headers["Tus-Version"].split(",")[0].strip() == TUS_VERSION
    extensions = {e.strip() for e in options.headers["Tus-Extension"].split(",")}
    assert {"creation", "termination"} <= extensions

    data = payload(3 * 1024 * 1024 + 12345, seed=1, kind="hex")
    metadata = f"filename {b64('flow.bin')},empty"
    url = create(server, session, len(data), metadata)
    upload_id = upload_id_of(url)
    assert url.startswith(server.files_url)

    first = head(server, session, url)
    assert first.status_code in (200, 204)
    assert first.headers["Upload-Offset"] == "0"
    assert first.headers["Upload-Length"] == str(len(data))
    assert first.headers["Upload-Metadata"] == metadata
    assert "no-store" in first.headers["Cache-Control"]
    assert data_path(server, upload_id).stat().st_size == 0

    # Uneven chunks, some crossing the server's 1 MiB read size.
    sizes = [1, 1000, 65536, 1024 * 1024 + 7, 300_000, 1, 777_777]
    offset = 0
    for size in [*sizes, len(data) - sum(sizes)]:
        response = patch(session, url, offset, data[offset : offset + size])
        assert response.status_code == 204, (response.status_code, response.text)
        offset += size
        assert response.headers["Upload-Offset"] == str(offset)
        assert head_offset(server, session, url) == offset
        if offset < len(data):
            assert data_of(server, upload_id) == data[:offset]
            assert record_of(server, upload_id)["state"] == "uploading"
            # A client repeating an old PATCH is refused and changes nothing.
            stale = patch(session, url, offset - size, data[offset - size : offset])
            assert stale.status_code == 409
            assert stale.headers["Upload-Offset"] == str(offset)
            assert data_path(server, upload_id).stat().st_size == offset

    record = assert_complete(server, upload_id, data)
    assert record["filename"] == "flow.bin"
    done = head(server, session, url)
    assert done.headers["Upload-Offset"] == done.headers["Upload-Length"] == str(len(data))

    deleted = requests.delete(url, headers=auth(session), timeout=30)
    assert deleted.status_code == 204
    assert not data_path(server, upload_id).exists()
    assert record_of(server, upload_id)["state"] == "terminated"
    for _ in range(4):  # whichever worker answers
        assert head(server, session, url).status_code in (404, 410)
        assert patch(session, url, len(data), b"").status_code in (404, 410)


@needs_proc
def test_upload_continues_across_both_workers(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """Every step of one upload is served by the other worker than the step before."""
    server = gunicorn_server
    workers = set(server.worker_pids())
    assert len(workers) == 2
    data = payload(6 * 100_003, seed=2, kind="hex")
    cookie = {"Tus-Resumable": TUS_VERSION, "Cookie": cookie_header(session)}
    served: list[int] = []

    def step(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> RawResponse:
        request, pid = request_on_other_worker(server, served[-1] if served else None, method, path, headers)
        served.append(pid)
        return request.finish(body)

    options = step("OPTIONS", "/files/", {"Content-Length": "0"})
    assert options.status in (200, 204) and options.headers["Tus-Version"]
    created = step("POST", "/files/", {**cookie, "Upload-Length": str(len(data)), "Content-Length": "0"})
    assert created.status == 201, created.body
    url = created.headers["Location"]
    upload_id = upload_id_of(url)
    offset = 0
    while offset < len(data):
        probe = step("HEAD", path_of(url), cookie)
        assert probe.status == 200 and probe.headers["Upload-Offset"] == str(offset)
        piece = data[offset : offset + 100_003]
        headers = {**cookie, "Content-Type": OFFSET_CT, "Upload-Offset": str(offset)}
        answer = step("PATCH", path_of(url), {**headers, "Content-Length": str(len(piece))}, piece)
        assert answer.status == 204, answer.body
        offset += len(piece)
        assert answer.headers["Upload-Offset"] == str(offset)
    final = step("HEAD", path_of(url), cookie)
    assert final.headers["Upload-Offset"] == str(len(data))

    assert set(served) == workers
    assert all(a != b for a, b in zip(served, served[1:], strict=False))
    assert_complete(server, upload_id, data)


# 2. Chunked request bodies -----------------------------------------------------------


@pytest.mark.parametrize("sender", ["raw", "requests"])
@pytest.mark.parametrize("deferred", [False, True], ids=["known-length", "deferred-length"])
def test_chunked_patch_is_stored(
    gunicorn_server: GunicornServer, session: requests.Session, sender: str, deferred: bool
) -> None:
    """A PATCH with Transfer-Encoding: chunked and no Content-Length stores every byte."""
    server = gunicorn_server
    data = payload(1024 * 1024 + 300_000, seed=3, kind="hex")
    pieces = [data[:1], data[1:70_000], data[70_000:70_001], data[70_001:1_200_000], data[1_200_000:]]
    assert b"".join(pieces) == data
    url = create(server, session, None if deferred else len(data))
    upload_id = upload_id_of(url)
    extra = {"Upload-Length": str(len(data))} if deferred else {}

    if sender == "raw":
        headers = {**raw_patch_headers(session, 0, None), **extra}
        assert "Content-Length" not in headers
        reply = RawRequest(server, "PATCH", path_of(url), headers).finish(chunked(pieces))
        status, new_offset = reply.status, reply.headers["Upload-Offset"]
    else:
        # A generator body has no length, so requests sends it chunked.
        response = requests.patch(
            url,
            data=iter(pieces),
            headers=auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": "0"}, **extra),
            timeout=60,
        )
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.request.headers
        status, new_offset = response.status_code, response.headers["Upload-Offset"]

    assert status == 204
    assert new_offset == str(len(data))
    assert head_offset(server, session, url) == len(data)
    assert_complete(server, upload_id, data)


# 3. A client that goes away mid-body --------------------------------------------------


@needs_proc
@pytest.mark.parametrize("stall", [False, True], ids=["closes-at-once", "stalls-then-closes"])
def test_disconnect_mid_body_keeps_what_arrived(
    gunicorn_server: GunicornServer, session: requests.Session, stall: bool
) -> None:
    """The bytes that arrived before the client closed count; the upload resumes there.

    ``stalls-then-closes`` is a client that goes quiet for a second (far below
    the 60 s idle timeout) before its connection drops, as a flaky mobile
    link does: the bytes it did send must still be stored.
    """
    server = gunicorn_server
    data = payload(1_500_000, seed=4, kind="hex")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, data[:1000]).status_code == 204

    sent = 1000 + 400_001
    request = RawRequest(server, "PATCH", path_of(url), raw_patch_headers(session, 1000, len(data) - 1000))
    request.send(data[1000:sent])
    if stall:
        threading.Event().wait(1.0)
    request.close()

    wait_server_done(server, request.client_port)  # the cut-off PATCH has been handled
    wait_settled(server, upload_id)
    assert head_offset(server, session, url) == sent
    assert data_of(server, upload_id) == data[:sent]
    record = record_of(server, upload_id)
    assert record["state"] == "uploading"
    assert int(record["offset"]) == sent

    assert patch(session, url, 1000, data[1000:2000]).status_code == 409  # the old offset is gone
    rest = patch(session, url, sent, data[sent:])
    assert rest.status_code == 204
    assert rest.headers["Upload-Offset"] == str(len(data))
    assert_complete(server, upload_id, data)


def test_patch_body_that_pauses_is_stored_whole(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """A slow client that stalls mid-body (well under the idle timeout) still gets every byte stored.

    The server reads bodies with a short socket timeout to hear release
    requests (TUSBRIDGE_POLL_INTERVAL, 0.25 s); such a timeout must not be
    taken for a client that went away.
    """
    server = gunicorn_server
    data = payload(600_000, seed=5, kind="hex")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    request = RawRequest(server, "PATCH", path_of(url), raw_patch_headers(session, 0, len(data)))
    request.send(data[:250_000])
    # Stay silent for a few poll intervals (the default idle timeout is 60 s).
    threading.Event().wait(1.0)
    try:
        request.send(data[250_000:])
        reply = request.response()
    except OSError as exc:  # the server answered early and closed
        pytest.fail(f"the server dropped a stalled but live upload: {exc!r}")
    assert (reply.status, reply.headers["Upload-Offset"]) == (204, str(len(data)))
    assert_complete(server, upload_id, data)


# 4. Bytes past the declared length ----------------------------------------------------


def test_bytes_beyond_length_are_refused_and_not_written(
    gunicorn_server: GunicornServer, session: requests.Session
) -> None:
    """Content-Length or a chunked body running past Upload-Length: 413, file and offset unchanged."""
    server = gunicorn_server
    data = payload(100_000, seed=6, kind="hex")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, data[:40_000]).status_code == 204

    def unchanged() -> None:
        assert data_path(server, upload_id).stat().st_size == 40_000
        assert data_of(server, upload_id) == data[:40_000]
        assert head_offset(server, session, url) == 40_000
        assert record_of(server, upload_id)["offset"] == "40000"

    too_long = data[40_000:] + b"EXTRA"
    announced = patch(session, url, 40_000, too_long)
    assert announced.status_code == 413
    unchanged()

    reply = RawRequest(server, "PATCH", path_of(url), raw_patch_headers(session, 40_000, None)).finish(
        chunked([too_long[:30_000], too_long[30_000:]])
    )
    assert reply.status == 413
    unchanged()

    done = patch(session, url, 40_000, data[40_000:])
    assert done.status_code == 204 and done.headers["Upload-Offset"] == str(len(data))
    assert_complete(server, upload_id, data)

    # A complete upload takes no more bytes either, however they are framed.
    assert patch(session, url, len(data), b"more").status_code == 413
    reply = RawRequest(server, "PATCH", path_of(url), raw_patch_headers(session, len(data), None)).finish(
        chunked([b"more"])
    )
    assert reply.status == 413
    assert_complete(server, upload_id, data)


# 5./6. Racing PATCHes on two workers -------------------------------------------------


def race(
    server: GunicornServer, session: requests.Session, url: str, offset: int, bodies: list[bytes]
) -> tuple[list[RawResponse], list[int]]:
    """Send one PATCH per body at ``offset`` at the same moment, each held by a different worker."""
    held: list[RawRequest] = []
    pids: list[int] = []
    for body in bodies:
        request = RawRequest(server, "PATCH", path_of(url), raw_patch_headers(session, offset, len(body)))
        held.append(request)
        if HAS_PROC_NET:
            pids.append(request.worker_pid())
    replies = run_together(
        [partial(request.finish, body) for request, body in zip(held, bodies, strict=True)], timeout=30
    )
    return replies, pids


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_patches_at_same_offset(
    gunicorn_server: GunicornServer, session: requests.Session, round_: int
) -> None:
    """Two PATCHes at one offset on two workers: one 204, one 409/423, bytes of one only."""
    server = gunicorn_server
    size = 512 * 1024
    bodies = [payload(size, seed=100 + round_, kind="hex"), payload(size, seed=200 + round_, kind="hex")]
    url = create(server, session, size)
    upload_id = upload_id_of(url)

    replies, pids = race(server, session, url, 0, bodies)
    if pids:
        assert len(set(pids)) == 2, "both PATCHes should be in flight on different workers"
    statuses = sorted(r.status for r in replies)
    assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
    winner = next(i for i, r in enumerate(replies) if r.status == 204)
    stored = int(replies[winner].headers["Upload-Offset"])
    assert stored > 0

    wait_settled(server, upload_id)
    assert head_offset(server, session, url) == stored
    assert data_of(server, upload_id) == bodies[winner][:stored]  # not interleaved
    if stored < size:  # the winner was asked to hand over early: finish it
        assert patch(session, url, stored, bodies[winner][stored:]).status_code == 204
    assert_complete(server, upload_id, bodies[winner])


@pytest.fixture(scope="module")
def storage_server(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[GunicornServer, Path]:
    """A live server that hands each finished file to a FileSystemStorage in its own directory."""
    stored = tmp_path_factory.mktemp("stored")
    server = gunicorn_factory(
        {"TUSBRIDGE_TEST_STORAGE": "tests.support.live.LiveStorage", "TUSBRIDGE_LIVE_STORAGE_DIR": str(stored)}
    )
    return server, stored


@pytest.mark.parametrize("round_", range(3))
def test_final_patch_race_completes_once(
    gunicorn_server: GunicornServer, session: requests.Session, round_: int
) -> None:
    """Two workers race to store the last bytes: one completes, the record completes once."""
    server = gunicorn_server
    size = 300_000
    prefix = payload(size - 50_000, seed=300 + round_, kind="hex")
    tails = [payload(50_000, seed=400 + round_, kind="hex"), payload(50_000, seed=500 + round_, kind="hex")]
    url = create(server, session, size)
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, prefix).status_code == 204

    replies, pids = race(server, session, url, len(prefix), tails)
    if pids:
        assert len(set(pids)) == 2
    statuses = sorted(r.status for r in replies)
    assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
    winner = next(i for i, r in enumerate(replies) if r.status == 204)
    assert replies[winner].headers["Upload-Offset"] == str(size)

    wait_settled(server, upload_id)
    record = assert_complete(server, upload_id, prefix + tails[winner])
    # Later requests on either worker do not complete it again.
    for _ in range(4):
        assert head_offset(server, session, url) == size
        assert patch(session, url, size, b"").status_code == 204
    assert record_of(server, upload_id)["completed_at"] == record["completed_at"]


@pytest.mark.parametrize("round_", range(3))
def test_final_patch_race_hands_over_once(storage_server: tuple[GunicornServer, Path], round_: int) -> None:
    """With a Storage configured, the file of a raced final PATCH is handed over exactly once."""
    server, stored_dir = storage_server
    session = server.login("storage-user")
    size = 200_000
    prefix = payload(size - 30_000, seed=600 + round_, kind="hex")
    tails = [payload(30_000, seed=700 + round_, kind="hex"), payload(30_000, seed=800 + round_, kind="hex")]
    url = create(server, session, size, f"filename {b64(f'race-{round_}.bin')}")
    upload_id = upload_id_of(url)
    assert patch(session, url, 0, prefix).status_code == 204

    replies, _ = race(server, session, url, len(prefix), tails)
    statuses = sorted(r.status for r in replies)
    assert statuses[0] == 204 and statuses[1] in (409, 423), statuses
    winner = next(i for i, r in enumerate(replies) if r.status == 204)

    wait_settled(server, upload_id)
    record = record_of(server, upload_id)
    assert record["state"] == "complete" and record["offset"] == str(size)
    handed = sorted(p for p in stored_dir.rglob("*") if p.is_file() and upload_id in p.parts)
    assert len(handed) == 1, handed  # a second hand-over would have made a second name
    assert record["stored_name"] == handed[0].relative_to(stored_dir).as_posix()
    assert file_sha256(handed[0]) == sha256(prefix + tails[winner])
    assert not data_path(server, upload_id).exists()  # moved out of the upload directory
    session.close()


def test_unauthenticated_requests_are_refused(gunicorn_server: GunicornServer) -> None:
    """Without a login cookie the live server creates nothing (anonymous uploads are off)."""
    server = gunicorn_server
    before = set(os.listdir(server.upload_dir))
    response = requests.post(server.files_url, headers={**TUS, "Upload-Length": "10"}, timeout=30)
    assert response.status_code in (401, 403)
    assert set(os.listdir(server.upload_dir)) == before
