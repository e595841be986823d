"""tusbridge under uvicorn with its ASGI handler (``tusbridge.asgi``), over real HTTP.

The tus bodies stream to the view as they arrive (Django's own handler
would read them whole first): a PATCH takes its upload's lock and stores
bytes while its body is still coming, a reconnecting client gets a silent
upload back, a client that leaves or goes quiet keeps what it sent, a
checksum mismatch stores nothing. Everything else (legacy chunks, HEAD,
other users' uploads) behaves as under gunicorn.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable

import pytest
import requests
from tusclient import client as tus_client

from tests.support.data import payload, upload_id_of
from tests.support.live import (
    LEGACY_CHUNK,
    OFFSET_CT,
    TUS_VERSION,
    RawRequest,
    auth,
    create,
    data_of,
    head_offset,
    is_locked,
    logged_in,
    patch,
    patch_headers,
    path_of,
    poll,
    record_of,
    send_chunk,
    send_complete,
)
from tests.support.servers import GunicornServer, free_port

IDLE_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    env = {"TUSBRIDGE_TEST_IDLE_TIMEOUT": str(IDLE_TIMEOUT), "TUSBRIDGE_TEST_LOCK_WAIT": "5"}
    return gunicorn_factory(env, workers=1, worker_class="uvicorn")


@pytest.fixture(scope="module")
def session(server: GunicornServer) -> requests.Session:
    return server.login("asgi-user")


def test_tuspy_uploads_a_file_in_chunks(server: GunicornServer, session: requests.Session, tmp_path) -> None:
    data = payload(3 * (1 << 20) + 4321, seed=1)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    uploader = tus_client.TusClient(server.files_url, headers=auth(session)).uploader(
        str(source), chunk_size=1 << 20, metadata={"filename": "source.bin"}
    )
    uploader.upload()
    upload_id = upload_id_of(uploader.url)
    assert data_of(server, upload_id) == data
    assert record_of(server, upload_id)["state"] == "complete"


def test_a_patch_stores_its_bytes_while_its_body_is_still_coming(
    server: GunicornServer, session: requests.Session
) -> None:
    data = payload(600_000, seed=2)
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    try:
        request.send(data[:250_000])
        # Read whole first, the view would not run (nor lock) before the last byte.
        poll(lambda: is_locked(server, upload_id) or None, "the PATCH to take the upload's lock")
        poll(lambda: (data_of(server, upload_id) or b"") == data[:250_000] or None, "the first bytes on disk")
        # Stored before the body ends; counted while it streams (TUSBRIDGE_PROGRESS_INTERVAL), never ahead of the disk.
        assert record_of(server, upload_id)["offset"] in ("0", "250000")
        answer = request.finish(data[250_000:])
    finally:
        request.close()
    assert answer.status == 204
    assert answer.headers["Upload-Offset"] == str(len(data))
    assert data_of(server, upload_id) == data


def test_a_client_that_leaves_mid_body_keeps_what_arrived(server: GunicornServer, session: requests.Session) -> None:
    data = payload(500_000, seed=3)
    url = create(server, session, len(data))
    request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    request.send(data[:123_456])
    poll(lambda: (data_of(server, upload_id_of(url)) or b"") == data[:123_456] or None, "the bytes on disk")
    request.close()
    poll(lambda: head_offset(server, session, url) == 123_456 or None, "the offset of what arrived")
    response = patch(session, url, 123_456, data[123_456:])
    assert response.status_code == 204, response.text
    assert data_of(server, upload_id_of(url)) == data


def test_a_silent_client_counts_as_gone_after_the_idle_timeout(
    server: GunicornServer, session: requests.Session
) -> None:
    data = payload(300_000, seed=4)
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    request = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    try:
        request.send(data[:100_000])
        poll(lambda: is_locked(server, upload_id) or None, "the PATCH to take the upload's lock")
        started = time.monotonic()
        poll(lambda: not is_locked(server, upload_id) or None, "the silent PATCH to let go", timeout=IDLE_TIMEOUT * 5)
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.5
        assert record_of(server, upload_id)["offset"] == "100000"
    finally:
        request.close()


def test_a_reconnecting_client_gets_a_silent_upload_back_at_once(
    server: GunicornServer, session: requests.Session
) -> None:
    data = payload(400_000, seed=5)
    url = create(server, session, len(data))
    stalled = RawRequest(server, "PATCH", path_of(url), patch_headers(session, 0, len(data)))
    try:
        stalled.send(data[:150_000])
        poll(lambda: is_locked(server, upload_id_of(url)) or None, "the stalled PATCH to hold the upload")
        started = time.monotonic()
        offset = head_offset(server, session, url)
        assert time.monotonic() - started < 2.0
        assert offset == 150_000
        assert patch(session, url, offset, data[offset:]).status_code == 204
    finally:
        stalled.close()
    assert data_of(server, upload_id_of(url)) == data


def test_a_checksum_mismatch_stores_nothing(server: GunicornServer, session: requests.Session) -> None:
    data = payload(200_000, seed=6)
    url = create(server, session, len(data))
    wrong = base64.b64encode(hashlib.sha1(b"other").digest()).decode()
    response = patch(session, url, 0, data[:100_000], **{"Upload-Checksum": f"sha1 {wrong}"})
    assert response.status_code == 460, response.text
    assert head_offset(server, session, url) == 0
    assert (data_of(server, upload_id_of(url)) or b"") == b""
    right = base64.b64encode(hashlib.sha1(data[:100_000]).digest()).decode()
    response = patch(session, url, 0, data[:100_000], **{"Upload-Checksum": f"sha1 {right}"})
    assert response.status_code == 204
    assert head_offset(server, session, url) == 100_000


def test_creation_with_upload_streams_the_first_bytes(server: GunicornServer, session: requests.Session) -> None:
    data = payload(300_000, seed=7)
    headers = auth(session, **{"Upload-Length": str(len(data)), "Content-Type": OFFSET_CT})
    response = requests.post(server.files_url, data=data[:200_000], headers=headers, timeout=30)
    assert response.status_code == 201, response.text
    assert response.headers["Upload-Offset"] == "200000"
    url = response.headers["Location"]
    assert patch(session, url, 200_000, data[200_000:]).status_code == 204
    assert data_of(server, upload_id_of(url)) == data


def test_another_users_upload_is_not_found_on_every_verb(server: GunicornServer, session: requests.Session) -> None:
    url = create(server, session, 10)
    other = server.login("asgi-other")
    assert requests.head(url, headers=auth(other), timeout=10).status_code == 404
    assert patch(other, url, 0, b"0123456789").status_code == 404
    assert requests.delete(url, headers=auth(other), timeout=10).status_code == 404
    anonymous = {"Tus-Resumable": TUS_VERSION, "Content-Type": OFFSET_CT, "Upload-Offset": "0"}
    assert requests.patch(url, data=b"0123456789", headers=anonymous, timeout=10).status_code in (403, 404)
    assert head_offset(server, session, url) == 0


def test_legacy_chunks_and_their_md5_completion(server: GunicornServer) -> None:
    session, token = logged_in(server, "asgi-legacy")
    data = payload(3 * LEGACY_CHUNK + 500, seed=8)
    upload_id = None
    for start in range(0, len(data), LEGACY_CHUNK):
        response = send_chunk(server, session, token, data, start, upload_id)
        assert response.status_code == 200, response.text
        upload_id = response.json()["upload_id"]
    assert upload_id is not None
    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text
    assert data_of(server, upload_id) == data
    assert record_of(server, upload_id)["state"] == "complete"


def test_an_unreachable_redis_answers_503_with_retry_after(gunicorn_factory: Callable[..., GunicornServer]) -> None:
    dead = gunicorn_factory(
        {
            "TUSBRIDGE_TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "TUSBRIDGE_TEST_REDIS_TIMEOUT": "1",
            "TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1",
        },
        workers=1,
        worker_class="uvicorn",
    )
    url = f"{dead.files_url}0123456789abcdef0123456789abcdef"
    headers = {"Tus-Resumable": TUS_VERSION, "Content-Type": OFFSET_CT, "Upload-Offset": "0"}
    response = requests.patch(url, data=b"x" * 1000, headers=headers, timeout=30)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    response = requests.post(dead.files_url, headers={"Tus-Resumable": TUS_VERSION, "Upload-Length": "5"}, timeout=30)
    assert response.status_code == 503
    assert list(dead.upload_dir.iterdir()) == []
