"""Another user's upload id is 404 on every verb of both protocols, over real HTTP (gunicorn).

Where each verb is covered:

- tus HEAD, PATCH, DELETE: in-process in tus/test_permissions.py
  (test_another_user_cannot_see/write/delete_the_upload); live here, also
  through X-HTTP-Method-Override (POST as PATCH or DELETE, GET as HEAD) and
  with a trailing slash on the URL.
- legacy chunk: in-process in security/test_legacy_access.py
  (test_other_users_upload_is_404_and_untouched, fields before the file);
  live here with the fields first (direct write) and the file first (Django's
  upload handlers), at the right offset and at 0.
- legacy completion: security/test_legacy_access.py (same test); live here.
- a partial in a tus concatenation: tus/test_concat.py
  (test_final_with_an_unusable_partial_creates_nothing[owned-by-another-user]);
  live here, alone, before and after one's own partial, and as a relative URL.
- anonymous requests: tus/test_permissions.py, security/test_legacy_access.py; live
  here with anonymous uploads allowed (so nothing is refused for being
  anonymous before ownership is checked).

Every refused request must leave the owner's upload exactly as it was: the
Redis record, the data file, no lock, and the owner can still finish it.
The legacy requests carry a valid CSRF token, so they are refused for the
right reason (404), not by the CSRF check (403).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import OFFSET_CT, TUS, auth, create, data_of, head_offset, is_locked, patch, record_of
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live

DATA = bytes(range(256)) * 4  # 1024 bytes


@pytest.fixture(scope="module")
def gunicorn_extra_env() -> dict[str, str]:
    # Anonymous uploads allowed: an anonymous request is then not refused for being anonymous
    # (403) but must still not reach a user's upload.
    return {"TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1"}


@pytest.fixture(scope="module")
def alice(gunicorn_server: GunicornServer) -> Iterator[requests.Session]:
    s = gunicorn_server.login("alice-owner")
    yield s
    s.close()


@pytest.fixture(scope="module")
def bob(gunicorn_server: GunicornServer) -> Iterator[requests.Session]:
    s = gunicorn_server.login("bob-intruder")
    yield s
    s.close()


def csrf(session: requests.Session) -> dict[str, str]:
    token = session.cookies.get("csrftoken")
    assert token, "the login gave no CSRF cookie"
    return {"X-CSRFToken": token}


def state(server: GunicornServer, upload_id: str) -> tuple[dict[str, str], bytes | None, bool]:
    return record_of(server, upload_id), data_of(server, upload_id), is_locked(server, upload_id)


def legacy_chunk(
    server: GunicornServer, session: requests.Session, upload_id: str, start: int, data: bytes, *, fields_first: bool
) -> requests.Response:
    fields = {"upload_id": upload_id}
    files = {"file": ("data.bin", data, "application/octet-stream")}
    headers = {**csrf(session), "Content-Range": f"bytes {start}-{start + len(data) - 1}/{len(DATA)}"}
    if fields_first:
        return session.post(server.files_url, data=fields, files=files, headers=headers, timeout=30)
    # File part first, then the fields: the chunk goes through Django's own upload handlers.
    boundary = "XxOrderxX"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="data.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + (
            f"\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="upload_id"\r\n\r\n{upload_id}\r\n--{boundary}--\r\n'
        ).encode()
    )
    return session.post(
        server.files_url,
        data=body,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )


def assert_not_found(response: requests.Response, what: str) -> None:
    assert response.status_code == 404, (what, response.status_code, response.text[:200])


def attempts(server: GunicornServer, intruder: requests.Session, url: str, upload_id: str) -> dict[str, Any]:
    """Every way to touch an upload, as ``intruder``; each returns its response."""
    path_url = f"{server.files_url}{upload_id}"
    tus = auth(intruder) if intruder.cookies else dict(TUS)
    write = {**tus, "Content-Type": OFFSET_CT, "Upload-Offset": "512"}
    return {
        "tus HEAD": lambda: requests.head(url, headers=tus, timeout=30),
        "tus PATCH": lambda: requests.patch(url, data=DATA[512:], headers=write, timeout=30),
        "tus PATCH at offset 0": lambda: requests.patch(url, data=b"EVIL", headers={**write, "Upload-Offset": "0"}),
        "tus DELETE": lambda: requests.delete(url, headers=tus, timeout=30),
        "tus HEAD, trailing slash": lambda: requests.head(path_url + "/", headers=tus, timeout=30),
        "POST overridden to PATCH": lambda: requests.post(
            url, data=DATA[512:], headers={**write, "X-HTTP-Method-Override": "PATCH"}, timeout=30
        ),
        "POST overridden to DELETE": lambda: requests.post(
            url, headers={**tus, "X-HTTP-Method-Override": "DELETE"}, timeout=30
        ),
        "GET overridden to HEAD": lambda: requests.get(
            url, headers={**tus, "X-HTTP-Method-Override": "HEAD"}, timeout=30
        ),
        "legacy chunk, fields first": lambda: legacy_chunk(
            server, intruder, upload_id, 512, DATA[512:], fields_first=True
        ),
        "legacy chunk, file first": lambda: legacy_chunk(
            server, intruder, upload_id, 512, DATA[512:], fields_first=False
        ),
        "legacy chunk at offset 0": lambda: legacy_chunk(server, intruder, upload_id, 0, DATA[:512], fields_first=True),
        "legacy completion": lambda: intruder.post(
            f"{server.files_url}complete/",
            data={"upload_id": upload_id, "md5": hashlib.md5(DATA[:512]).hexdigest()},
            headers=csrf(intruder) if intruder.cookies else {},
            timeout=30,
        ),
    }


def _alice_uploads(server: GunicornServer, alice: requests.Session) -> dict[str, str]:
    """A tus upload and a legacy upload of alice's, each with 512 of 1024 bytes, and a complete partial."""
    tus_url = create(server, alice, len(DATA))
    assert patch(alice, tus_url, 0, DATA[:512]).status_code == 204
    legacy = alice.post(
        server.files_url,
        files={"file": ("data.bin", DATA[:512], "application/octet-stream")},
        headers={**csrf(alice), "Content-Range": f"bytes 0-511/{len(DATA)}"},
        timeout=30,
    )
    assert legacy.status_code == 200, legacy.text
    legacy_url = f"{server.files_url}{legacy.json()['upload_id']}"
    return {"tus": tus_url, "legacy": legacy_url}


@pytest.mark.parametrize("intruder_kind", ["another user", "anonymous"])
def test_every_verb_of_both_protocols_is_404(
    gunicorn_server: GunicornServer, alice: requests.Session, bob: requests.Session, intruder_kind: str
) -> None:
    server = gunicorn_server
    intruder = bob if intruder_kind == "another user" else requests.Session()
    if intruder_kind == "anonymous":
        # An anonymous client needs a CSRF cookie of its own for the legacy views.
        intruder.get(f"{server.url}/test-whoami/", timeout=10)
        intruder.cookies.set("csrftoken", "a" * 32)
        intruder.headers["X-CSRFToken"] = "a" * 32
    for kind, url in _alice_uploads(server, alice).items():
        upload_id = upload_id_of(url)
        before = state(server, upload_id)
        assert before[1] == DATA[:512]
        for what, attempt in attempts(server, intruder, url, upload_id).items():
            response = attempt()
            assert_not_found(response, f"{kind} upload, {what}")
            if what.startswith("legacy"):
                assert response.headers["Content-Type"] == "application/json"
                assert set(json.loads(response.content)) == {"detail"}
            assert "Upload-Offset" not in response.headers, what
            assert state(server, upload_id) == before, f"{kind} upload changed by {what}"
        # The owner still finishes it.
        assert head_offset(server, alice, url) == 512
        assert patch(alice, url, 512, DATA[512:]).status_code == 204
        assert head_offset(server, alice, url) == len(DATA)


def test_someone_elses_partial_cannot_be_concatenated(
    gunicorn_server: GunicornServer, alice: requests.Session, bob: requests.Session
) -> None:
    """A final upload naming another user's partial fails, and creates nothing (not even for the other parts)."""
    server = gunicorn_server
    alice_partial = requests.post(
        server.files_url,
        data=b"secret",
        headers=auth(alice, **{"Upload-Length": "6", "Upload-Concat": "partial", "Content-Type": OFFSET_CT}),
        timeout=30,
    )
    assert alice_partial.status_code == 201
    bob_partial = requests.post(
        server.files_url,
        data=b"mine",
        headers=auth(bob, **{"Upload-Length": "4", "Upload-Concat": "partial", "Content-Type": OFFSET_CT}),
        timeout=30,
    )
    assert bob_partial.status_code == 201
    theirs, mine = alice_partial.headers["Location"], bob_partial.headers["Location"]
    keys_before = server.keys()
    files_before = sorted(p.name for p in server.upload_dir.iterdir())
    for listed in ([theirs], [mine, theirs], [theirs, mine], [mine, f"/files/{upload_id_of(theirs)}"]):
        response = requests.post(
            server.files_url, headers=auth(bob, **{"Upload-Concat": "final;" + " ".join(listed)}), timeout=30
        )
        assert response.status_code == 404, (listed, response.status_code, response.text)
        assert "Location" not in response.headers
        assert server.keys() == keys_before
        assert sorted(p.name for p in server.upload_dir.iterdir()) == files_before
    # Anonymous, too.
    response = requests.post(server.files_url, headers={**TUS, "Upload-Concat": f"final;{theirs}"}, timeout=30)
    assert response.status_code == 404
    assert server.keys() == keys_before
