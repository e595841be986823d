"""The tus checksum extension: Upload-Checksum on PATCH and on creation-with-upload POST.

In-process tests use Django's test client against the private Redis and a real
upload directory; the large-body tests go through the live gunicorn server so
the body arrives in several reads (more than TUSBRIDGE_READ_SIZE, 1 MiB).
Every refused request is checked to have changed nothing: file size and
content, the record's offset and the offset HEAD reports.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable

import pytest
import redis
import requests
from django.test import Client

from tests.support.data import file_sha256, payload, sha256, upload_id_of
from tests.support.live import (
    OFFSET_CT,
    RawRequest,
    auth,
    cookie_header,
    create,
    data_path,
    head_offset,
    is_locked,
    path_of,
    poll,
    record_of,
)
from tests.support.live import data_of as live_data_of
from tests.support.live import patch as live_patch
from tests.support.servers import GunicornServer
from tests.support.tus import COLLECTION, TUS_VERSION, Completion, Tus, data_of, file_size, record_key, snapshot, tus

pytestmark = pytest.mark.django_db

ALGORITHMS = ("sha1", "md5", "sha256", "sha512", "crc32")


def digest(algorithm: str, data: bytes) -> bytes:
    """The raw digest a tus client sends (CRC-32 as 4 big-endian bytes)."""
    if algorithm == "crc32":
        return zlib.crc32(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


def checksum_header(algorithm: str, data: bytes) -> str:
    """``Upload-Checksum`` for ``data``."""
    return f"{algorithm} {base64.b64encode(digest(algorithm, data)).decode('ascii')}"


def assert_state(t: Tus, url: str, redis_client: redis.Redis, expected: bytes) -> None:
    """The upload holds exactly ``expected``: file, Redis record and HEAD agree."""
    upload_id = upload_id_of(url)
    assert file_size(upload_id) == len(expected)
    assert data_of(upload_id) == expected
    assert int(redis_client.hget(record_key(upload_id), "offset") or b"-1") == len(expected)
    assert t.offset(url) == len(expected)


# OPTIONS ------------------------------------------------------------------------


def test_options_advertises_checksum_and_algorithms(client: Client) -> None:
    """Tus-Extension has checksum (not checksum-trailer); Tus-Checksum-Algorithm lists the five algorithms."""
    response = tus(client, version=None).options(COLLECTION)
    assert response.status_code in (200, 204)
    extensions = [e.strip() for e in response["Tus-Extension"].split(",")]
    assert "checksum" in extensions
    assert "checksum-trailer" not in extensions
    algorithms = [a.strip() for a in response["Tus-Checksum-Algorithm"].split(",")]
    assert sorted(algorithms) == sorted(ALGORITHMS)
    assert len(algorithms) == len(set(algorithms))
    # Names must be lowercase ASCII (spec: uppercase characters are excluded).
    assert all(a.isascii() and a == a.lower() for a in algorithms)


def test_advertised_algorithms_are_accepted(client: Client, t: Tus) -> None:
    """Every advertised algorithm really works on a PATCH."""
    response = tus(client, version=None).options(COLLECTION)
    for algorithm in (a.strip() for a in response["Tus-Checksum-Algorithm"].split(",")):
        url = t.new_upload(5)
        ok = t.patch(url, b"hello", 0, HTTP_UPLOAD_CHECKSUM=checksum_header(algorithm, b"hello"))
        assert ok.status_code == 204, (algorithm, ok.content)


# PATCH --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_correct_checksum_is_accepted(t: Tus, redis_client: redis.Redis, algorithm: str) -> None:
    """A matching checksum of each algorithm: 204 and the bytes are stored."""
    data = payload(10_000, seed=1, kind="random")
    url = t.new_upload(len(data))
    first = t.patch(url, data[:4000], 0, HTTP_UPLOAD_CHECKSUM=checksum_header(algorithm, data[:4000]))
    assert first.status_code == 204, first.content
    assert first["Upload-Offset"] == "4000"
    second = t.patch(url, data[4000:], 4000, HTTP_UPLOAD_CHECKSUM=checksum_header(algorithm, data[4000:]))
    assert second.status_code == 204, second.content
    assert second["Upload-Offset"] == str(len(data))
    assert_state(t, url, redis_client, data)
    assert redis_client.hget(record_key(upload_id_of(url)), "state") == b"complete"


def test_hello_world_sha1_from_the_spec(t: Tus) -> None:
    """The spec's own example value is accepted."""
    url = t.new_upload(11)
    response = t.patch(url, b"hello world", 0, HTTP_UPLOAD_CHECKSUM="sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
    assert response.status_code == 204
    assert response["Upload-Offset"] == "11"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_mismatch_is_460_and_discards_the_chunk(t: Tus, redis_client: redis.Redis, algorithm: str) -> None:
    """A wrong checksum: 460, the offset and the file stay exactly as before; the chunk can be resent."""
    data = payload(9000, seed=2, kind="random")
    url = t.new_upload(len(data))
    assert t.patch(url, data[:3000], 0).status_code == 204
    wrong = checksum_header(algorithm, data[3000:6000] + b"x")
    response = t.patch(url, data[3000:6000], 3000, HTTP_UPLOAD_CHECKSUM=wrong)
    assert response.status_code == 460
    assert response["Tus-Resumable"] == TUS_VERSION
    assert "Upload-Offset" not in response or response["Upload-Offset"] == "3000"
    assert_state(t, url, redis_client, data[:3000])
    assert redis_client.hget(record_key(upload_id_of(url)), "state") == b"uploading"

    # The same chunk with the right checksum goes in at the same offset.
    again = t.patch(url, data[3000:6000], 3000, HTTP_UPLOAD_CHECKSUM=checksum_header(algorithm, data[3000:6000]))
    assert again.status_code == 204
    assert_state(t, url, redis_client, data[:6000])


def test_mismatch_on_the_last_chunk_does_not_complete(
    t: Tus, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    """A mismatching final chunk neither completes the upload nor announces it."""
    data = payload(2000, seed=3, kind="random")
    url = t.new_upload(len(data))
    assert t.patch(url, data[:1000], 0).status_code == 204
    response = t.patch(url, data[1000:], 1000, HTTP_UPLOAD_CHECKSUM=checksum_header("sha256", b"other"))
    assert response.status_code == 460
    assert_state(t, url, redis_client, data[:1000])
    assert redis_client.hget(record_key(upload_id_of(url)), "state") == b"uploading"
    assert completions == []


def test_mismatch_on_an_empty_body(t: Tus, redis_client: redis.Redis) -> None:
    """An empty PATCH with a checksum that is not the empty body's: 460; with the right one: 204."""
    url = t.new_upload(10)
    assert t.patch(url, b"", 0, HTTP_UPLOAD_CHECKSUM=checksum_header("md5", b"a")).status_code == 460
    assert t.patch(url, b"", 0, HTTP_UPLOAD_CHECKSUM=checksum_header("md5", b"")).status_code == 204
    assert_state(t, url, redis_client, b"")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("sha3-256 " + base64.b64encode(hashlib.sha3_256(b"hello").digest()).decode(), id="sha3"),
        pytest.param("blake2b " + base64.b64encode(hashlib.blake2b(b"hello").digest()).decode(), id="blake2b"),
        pytest.param("SHA1 " + base64.b64encode(hashlib.sha1(b"hello").digest()).decode(), id="uppercase-sha1"),
        pytest.param("Md5 " + base64.b64encode(hashlib.md5(b"hello").digest()).decode(), id="mixed-case-md5"),
        pytest.param("crc32c " + base64.b64encode(b"\x00\x00\x00\x00").decode(), id="crc32c"),
    ],
)
def test_unknown_algorithm_is_400_and_changes_nothing(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """An algorithm the server does not support: 400, nothing written."""
    url = t.new_upload(10)
    assert t.patch(url, b"ab", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"hello", 2, HTTP_UPLOAD_CHECKSUM=value)
    assert response.status_code == 400
    assert snapshot(redis_client) == before
    assert_state(t, url, redis_client, b"ab")


MALFORMED = {
    "no-space": "sha1" + base64.b64encode(hashlib.sha1(b"hello").digest()).decode(),
    "algorithm-only": "sha1",
    "algorithm-and-space": "sha1 ",
    "empty": "",
    "digest-only": base64.b64encode(hashlib.sha1(b"hello").digest()).decode(),
    "bad-base64-chars": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0!",
    "bad-base64-padding": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0",
    "url-safe-alphabet": "sha1 Kq5sNclPz7QV2-lfQIuc6R7oRu0=",
    "non-ascii": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=\u00e9",
    "two-digests": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0= Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
    "sha1-digest-too-short": "sha1 " + base64.b64encode(hashlib.sha1(b"hello").digest()[:19]).decode(),
    "sha1-digest-too-long": "sha1 " + base64.b64encode(hashlib.sha1(b"hello").digest() + b"\x00").decode(),
    "md5-with-sha1-digest": "md5 " + base64.b64encode(hashlib.sha1(b"hello").digest()).decode(),
    "crc32-8-bytes": "crc32 " + base64.b64encode(b"\x00" * 8).decode(),
    "sha512-with-sha256-digest": "sha512 " + base64.b64encode(hashlib.sha256(b"hello").digest()).decode(),
    "empty-digest-padding": "sha256 ====",
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_checksum_is_400_and_changes_nothing(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """No space, bad base64, a digest of the wrong length: 400, nothing written."""
    url = t.new_upload(10)
    assert t.patch(url, b"ab", 0).status_code == 204
    before = snapshot(redis_client)
    response = t.patch(url, b"hello", 2, HTTP_UPLOAD_CHECKSUM=value)
    assert response.status_code == 400, response.content
    assert snapshot(redis_client) == before
    assert_state(t, url, redis_client, b"ab")


def test_correct_checksum_at_the_wrong_offset_is_409(t: Tus, redis_client: redis.Redis) -> None:
    """A correct checksum at the wrong offset is still 409 (the checksum does not bypass the offset rule)."""
    url = t.new_upload(10)
    assert t.patch(url, b"ab", 0).status_code == 204
    response = t.patch(url, b"cd", 5, HTTP_UPLOAD_CHECKSUM=checksum_header("sha1", b"cd"))
    assert response.status_code == 409
    assert_state(t, url, redis_client, b"ab")


# Creation with upload ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checksum_on_creation_with_upload(t: Tus, redis_client: redis.Redis, algorithm: str) -> None:
    """POST with a body and a matching checksum: 201 with Upload-Offset, bytes stored."""
    data = payload(5000, seed=4, kind="random")
    response = t.create(10_000, body=data, HTTP_UPLOAD_CHECKSUM=checksum_header(algorithm, data))
    assert response.status_code == 201, response.content
    assert response["Upload-Offset"] == str(len(data))
    assert_state(t, response["Location"], redis_client, data)


def test_mismatching_checksum_on_creation_with_upload_stores_no_bytes(t: Tus, redis_client: redis.Redis) -> None:
    """POST with a body whose checksum does not match: 460 and none of the bytes are stored.

    The app may create the (empty) upload and name it in Location so the
    client can resume; if it does, the upload is at offset 0 with an empty file.
    """
    data = payload(5000, seed=5, kind="random")
    response = t.create(10_000, body=data, HTTP_UPLOAD_CHECKSUM=checksum_header("sha1", data[:-1]))
    assert response.status_code == 460
    if "Location" in response:
        url = response["Location"]
        assert_state(t, url, redis_client, b"")
        ok = t.patch(url, data, 0, HTTP_UPLOAD_CHECKSUM=checksum_header("sha1", data))
        assert ok.status_code == 204
    else:
        assert snapshot(redis_client).files == {}


@pytest.mark.parametrize("value", ["sha3-256 AAAA", "sha1 not-base64!", "sha1"], ids=["unknown", "bad-b64", "no-space"])
def test_bad_checksum_on_creation_with_upload_creates_nothing(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """An unusable Upload-Checksum on a creation-with-upload POST: 400 and no upload is created."""
    before = snapshot(redis_client)
    response = t.create(100, body=b"hello", HTTP_UPLOAD_CHECKSUM=value)
    assert response.status_code == 400
    assert "Location" not in response
    assert snapshot(redis_client) == before


# Live: large bodies through gunicorn ------------------------------------------------


LARGE = 5 * 1024 * 1024 + 12_345  # several reads of TUSBRIDGE_READ_SIZE (1 MiB)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_large_body_with_checksum_live(
    gunicorn_server: GunicornServer, session: requests.Session, algorithm: str
) -> None:
    """A multi-MiB PATCH with a matching checksum through gunicorn: 204, every byte stored."""
    server = gunicorn_server
    data = payload(LARGE, seed=6, kind="random")
    url = create(server, session, len(data) + 10)
    upload_id = upload_id_of(url)
    assert live_patch(session, url, 0, b"0123456789").status_code == 204
    response = live_patch(session, url, 10, data, **{"Upload-Checksum": checksum_header(algorithm, data)})
    assert response.status_code == 204, response.text
    assert response.headers["Upload-Offset"] == str(len(data) + 10)
    assert file_sha256(data_path(server, upload_id)) == sha256(b"0123456789" + data)
    record = record_of(server, upload_id)
    assert record["state"] == "complete"
    assert record["offset"] == str(len(data) + 10)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda d: d[:-1] + bytes([d[-1] ^ 1]), id="last-byte-flipped"),
        pytest.param(lambda d: bytes([d[0] ^ 0x80]) + d[1:], id="first-byte-flipped"),
        pytest.param(
            lambda d: d[: 3 * 1024 * 1024] + bytes([d[3 * 1024 * 1024] ^ 4]) + d[3 * 1024 * 1024 + 1 :],
            id="middle-byte-flipped",
        ),
    ],
)
def test_large_body_with_mismatching_checksum_live(
    gunicorn_server: GunicornServer, session: requests.Session, corrupt: Callable[[bytes], bytes]
) -> None:
    """A multi-MiB PATCH whose bytes do not match its checksum: 460, file and offset exactly as before."""
    server = gunicorn_server
    data = payload(LARGE, seed=7, kind="random")
    prefix = payload(70_000, seed=8, kind="random")
    url = create(server, session, len(prefix) + len(data))
    upload_id = upload_id_of(url)
    assert live_patch(session, url, 0, prefix).status_code == 204
    sent = corrupt(data)
    assert sent != data and len(sent) == len(data)
    response = live_patch(session, url, len(prefix), sent, **{"Upload-Checksum": checksum_header("sha256", data)})
    assert response.status_code == 460, response.text
    poll(lambda: not is_locked(server, upload_id), "the upload's lock to be released")
    path = data_path(server, upload_id)
    assert path.stat().st_size == len(prefix)
    assert live_data_of(server, upload_id) == prefix
    assert head_offset(server, session, url) == len(prefix)
    record = record_of(server, upload_id)
    assert record["offset"] == str(len(prefix))
    assert record["state"] == "uploading"
    # The correct bytes are then accepted at the same offset.
    ok = live_patch(session, url, len(prefix), data, **{"Upload-Checksum": checksum_header("sha256", data)})
    assert ok.status_code == 204
    assert file_sha256(path) == sha256(prefix + data)


def test_chunked_body_with_checksum_live(gunicorn_server: GunicornServer, session: requests.Session) -> None:
    """A Transfer-Encoding: chunked PATCH is checked too: mismatch 460 (nothing kept), match 204."""
    server = gunicorn_server
    data = payload(2 * 1024 * 1024 + 333, seed=9, kind="random")
    url = create(server, session, len(data))
    upload_id = upload_id_of(url)
    pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
    headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": "0"})

    bad = requests.patch(
        url, data=iter(pieces), headers={**headers, "Upload-Checksum": checksum_header("md5", data[1:])}, timeout=60
    )
    assert bad.request.headers.get("Transfer-Encoding") == "chunked"
    assert bad.status_code == 460
    assert live_data_of(server, upload_id) == b""
    assert head_offset(server, session, url) == 0

    good = requests.patch(
        url, data=iter(pieces), headers={**headers, "Upload-Checksum": checksum_header("md5", data)}, timeout=60
    )
    assert good.status_code == 204, good.text
    assert file_sha256(data_path(server, upload_id)) == sha256(data)


def test_body_cut_short_with_checksum_keeps_nothing_live(
    gunicorn_server: GunicornServer, session: requests.Session
) -> None:
    """A checksummed PATCH whose connection drops mid-body keeps none of its bytes (a partial chunk cannot match)."""
    server = gunicorn_server
    data = payload(3 * 1024 * 1024, seed=10, kind="random")
    url = create(server, session, len(data) + 100)
    upload_id = upload_id_of(url)
    assert live_patch(session, url, 0, b"x" * 100).status_code == 204
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Cookie": cookie_header(session),
        "Content-Type": OFFSET_CT,
        "Upload-Offset": "100",
        "Content-Length": str(len(data)),
        "Upload-Checksum": checksum_header("sha1", data),
    }
    request = RawRequest(server, "PATCH", path_of(url), headers)
    request.send(data[: 2 * 1024 * 1024 + 5])
    poll(lambda: is_locked(server, upload_id), "the PATCH to take the upload's lock")
    request.close()
    poll(lambda: not is_locked(server, upload_id), "the cut-off PATCH to let go")
    assert live_data_of(server, upload_id) == b"x" * 100
    assert head_offset(server, session, url) == 100
    assert record_of(server, upload_id)["offset"] == "100"
