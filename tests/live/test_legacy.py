"""The legacy protocol over real HTTP: gunicorn with 2 sync workers, the harness's ``files/`` URLs.

Requests follow jQuery-File-Upload: log in, take the ``csrftoken`` cookie,
send 100 000-byte chunks with the form fields first (``csrfmiddlewaretoken``,
``upload_id``), ``Content-Range``, ``Content-Disposition`` and
``X-Requested-With: XMLHttpRequest``, then post the md5 to the completion URL.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING

import requests

from tests.support.data import file_sha256, payload
from tests.support.live import LEGACY_CHUNK, data_path, logged_in, record_of, send_chunk, send_complete
from tests.support.together import run_together

if TYPE_CHECKING:
    from tests.support.servers import GunicornServer


def test_jquery_file_upload_pattern_over_gunicorn(gunicorn_server: GunicornServer) -> None:
    """Chunks, Range headers, completion with md5; the stored bytes and the record state are right."""
    server = gunicorn_server
    session, token = logged_in(server, "jfu-user")
    data = payload(1_050_000, seed=42)
    upload_id = None
    start = 0
    while start < len(data):
        response = send_chunk(server, session, token, data, start, upload_id)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        upload_id = body["upload_id"]
        # jQuery-File-Upload continues after the Range the server reports.
        end = int(response.headers["Range"].removeprefix("bytes=0-"))
        assert end + 1 == body["offset"] == min(start + LEGACY_CHUNK, len(data))
        start = end + 1
    assert upload_id is not None
    record = record_of(server, upload_id)
    assert record["state"] == "uploading" and record["offset"] == str(len(data))

    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text
    assert done.json() == {}
    assert file_sha256(data_path(server, upload_id)) == hashlib.sha256(data).hexdigest()
    record = record_of(server, upload_id)
    assert record["state"] == "complete" and record["offset"] == str(len(data))
    again = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert again.status_code == 400
    assert again.json() == {"detail": 'Upload has already been marked as "complete"'}


def test_chunk_without_csrf_token_is_refused_live(gunicorn_server: GunicornServer) -> None:
    """Over HTTP too, a chunk without the token is 403 and leaves no file."""
    server = gunicorn_server
    session, _ = logged_in(server, "no-token")
    before = sorted(p.name for p in server.upload_dir.iterdir())
    response = session.post(
        server.files_url,
        files={"file": ("x.bin", b"x" * 1000, "application/octet-stream")},
        headers={"Content-Range": "bytes 0-999/1000", "X-Requested-With": "XMLHttpRequest"},
        timeout=30,
    )
    assert response.status_code == 403
    assert sorted(p.name for p in server.upload_dir.iterdir()) == before


def test_concurrent_identical_chunks_on_two_workers(gunicorn_server: GunicornServer) -> None:
    """The same chunk sent at once on separate connections: appended once; the file and offset are exact."""
    server = gunicorn_server
    session, token = logged_in(server, "racer")
    cookies = session.cookies.get_dict()
    data = payload(8 * LEGACY_CHUNK, seed=7)
    first = send_chunk(server, session, token, data, 0, None)
    upload_id = first.json()["upload_id"]

    def sender(start: int) -> requests.Response:
        own = requests.Session()
        own.cookies.update(cookies)
        return send_chunk(server, own, token, data, start, upload_id)

    for start in range(LEGACY_CHUNK, len(data), LEGACY_CHUNK):
        responses = run_together([lambda start=start: sender(start)] * 3)
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) == 1, [(r.status_code, r.text) for r in responses]
        for response in responses:
            if response.status_code == 200:
                assert response.json()["offset"] == start + LEGACY_CHUNK
            else:
                assert response.status_code in (400, 409), response.text
                if response.status_code == 400:
                    assert response.json() == {"detail": "Offsets do not match", "offset": start + LEGACY_CHUNK}
    assert file_sha256(data_path(server, upload_id)) == hashlib.sha256(data).hexdigest()
    assert record_of(server, upload_id)["offset"] == str(len(data))
    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text


def test_concurrent_different_chunks_on_two_workers(gunicorn_server: GunicornServer) -> None:
    """All chunks at once, each sender retrying at the server's offset: bytes in order, each once."""
    server = gunicorn_server
    session, token = logged_in(server, "parallel")
    cookies = session.cookies.get_dict()
    data = payload(6 * LEGACY_CHUNK + 777, seed=8)
    upload_id = send_chunk(server, session, token, data, 0, None).json()["upload_id"]

    def sender(start: int) -> requests.Response:
        own = requests.Session()
        own.cookies.update(cookies)
        while True:
            response = send_chunk(server, own, token, data, start, upload_id)
            if response.status_code == 200:
                return response
            assert response.status_code in (400, 409), response.text
            if response.status_code == 400:
                assert response.json()["detail"] == "Offsets do not match"
                assert response.json()["offset"] <= start, "a range was stored twice or skipped"
            time.sleep(0.01)  # not an assertion on time: just let the others go first

    run_together([lambda start=start: sender(start) for start in range(LEGACY_CHUNK, len(data), LEGACY_CHUNK)])
    assert file_sha256(data_path(server, upload_id)) == hashlib.sha256(data).hexdigest()
    assert record_of(server, upload_id)["offset"] == str(len(data))
    done = send_complete(server, session, token, upload_id, hashlib.md5(data).hexdigest())
    assert done.status_code == 200, done.text
    assert record_of(server, upload_id)["state"] == "complete"
