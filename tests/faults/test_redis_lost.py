"""Redis loses upload records (restart without persistence, eviction) under a live gunicorn.

Without its record an upload is unknown: every request on it answers 404,
never a silent restart from zero over the existing data and never a
completion, and its data file stays exactly as it was. ``manage.py
tusbridge_rebuild`` (run as an operator would, ``python -m django`` with the
server's settings) recreates the records from the ``<id>.info`` copies beside
the data; each upload then resumes from its data file's size and finishes
with the source's bytes: tus, legacy (its running md5 state is gone, so the
completion's md5 is checked by reading the file), deferred-length, and one
that was already complete.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
import requests

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_complete,
    login,
    manage,
    settled_offset,
    snapshot,
    try_response,
    tus_create,
    tus_head,
    tus_patch,
)
from tests.support.live import OFFSET_CT, RawRequest, path_of, record_of, wait_drained
from tests.support.servers import GunicornServer, RedisServer

pytestmark = pytest.mark.live

LEGACY_CHUNK = 150_000


@pytest.fixture(scope="module")
def server(gunicorn_factory: Callable[..., GunicornServer]) -> GunicornServer:
    return gunicorn_factory({"TUSBRIDGE_TEST_LOCK_TTL": "3", "TUSBRIDGE_TEST_LOCK_WAIT": "2"})


def rebuild(server: GunicornServer, *args: str) -> list[str]:
    """Run tusbridge_rebuild; the ids it names (its last line is the count)."""
    done = manage(server, "tusbridge_rebuild", *args)
    assert done.returncode == 0, done.stderr
    *ids, summary = done.stdout.strip().splitlines()
    assert summary.startswith(f"{len(ids)} upload records "), done.stdout
    assert all(len(i) == 32 for i in ids), done.stdout
    return ids


def assert_unknown(server: GunicornServer, user: User, url: str, offset: int, data: bytes) -> None:
    """Every tus request on an upload without a record is 404 and writes nothing."""
    assert tus_head(url, user).status_code == 404
    for at in {offset, 0}:  # the offset the client knows, and a restart from zero
        reply = tus_patch(server, user, url, at, data[at : at + 10_000])
        assert reply.status == 404, (at, reply.status, reply.body)


def test_redis_restarted_empty_then_rebuild_resumes_every_upload(
    server: GunicornServer, redis_back: RedisServer
) -> None:
    user = login(server, "lost-restart")
    # A tus upload in progress.
    tus_data = payload(700_000, 1, kind="random")
    tus_url = tus_create(server, user, len(tus_data))
    assert tus_patch(server, user, tus_url, 0, tus_data[:250_000]).status == 204
    # A deferred-length one.
    deferred_data = payload(400_000, 2, kind="random")
    deferred_url = tus_create(server, user, None)
    assert tus_patch(server, user, deferred_url, 0, deferred_data[:120_000]).status == 204
    # A legacy one (its running md5 lives in the record).
    legacy_data = payload(5 * LEGACY_CHUNK + 1234, 3, kind="random")
    reply = legacy_chunk(server, user, None, 0, legacy_data[:LEGACY_CHUNK], len(legacy_data))
    assert reply.status == 200, reply.body
    legacy_id = json_of(reply)["upload_id"]
    reply = legacy_chunk(
        server, user, legacy_id, LEGACY_CHUNK, legacy_data[LEGACY_CHUNK : 2 * LEGACY_CHUNK], len(legacy_data)
    )
    assert reply.status == 200, reply.body
    assert record_of(server, legacy_id)["md5_state"]
    # A finished one.
    done_data = payload(90_000, 4, kind="random")
    done_url = tus_create(server, user, len(done_data))
    assert tus_patch(server, user, done_url, 0, done_data).status == 204
    done_record = record_of(server, upload_id_of(done_url))
    assert done_record["state"] == "complete"

    ids = {upload_id_of(tus_url), upload_id_of(deferred_url), legacy_id, upload_id_of(done_url)}
    before = snapshot(server.upload_dir)

    redis_back.stop()
    redis_back.start()  # empty: the test Redis persists nothing

    assert_unknown(server, user, tus_url, 250_000, tus_data)
    assert_unknown(server, user, deferred_url, 120_000, deferred_data)
    assert_unknown(server, user, done_url, len(done_data), done_data)
    assert tus_head(f"{server.files_url}{legacy_id}", user).status_code == 404
    for start in (2 * LEGACY_CHUNK, 0):
        reply = legacy_chunk(
            server, user, legacy_id, start, legacy_data[start : start + LEGACY_CHUNK], len(legacy_data)
        )
        assert reply.status == 404, (start, reply.status, reply.body)
    assert legacy_complete(server, user, legacy_id, md5(legacy_data)).status_code == 404
    assert requests.delete(tus_url, headers=user.tus(), timeout=30).status_code == 404
    assert snapshot(server.upload_dir) == before, "requests on unknown uploads changed the data files"

    # A dry run names them and changes nothing.
    assert set(rebuild(server, "--dry-run")) == ids
    assert tus_head(tus_url, user).status_code == 404

    assert set(rebuild(server)) == ids
    assert rebuild(server) == [], "a second rebuild must leave the existing records alone"

    # tus: resumes from the data file's size.
    assert settled_offset(tus_url, user) == 250_000
    reply = tus_patch(server, user, tus_url, 250_000, tus_data[250_000:])
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(tus_data))
    assert record_of(server, upload_id_of(tus_url))["state"] == "complete"
    assert sha256(file_bytes(server.upload_dir / upload_id_of(tus_url)) or b"") == sha256(tus_data)

    # Deferred length: still deferred, resumes, takes its length with the last PATCH.
    head = tus_head(deferred_url, user)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "120000" and head.headers.get("Upload-Defer-Length") == "1"
    reply = tus_patch(
        server,
        user,
        deferred_url,
        120_000,
        deferred_data[120_000:],
        **{"Upload-Length": str(len(deferred_data))},
    )
    assert reply.status == 204 and reply.headers["Upload-Offset"] == str(len(deferred_data))
    assert record_of(server, upload_id_of(deferred_url))["state"] == "complete"
    assert sha256(file_bytes(server.upload_dir / upload_id_of(deferred_url)) or b"") == sha256(deferred_data)

    # Legacy: the client re-sends from where it was; the md5 completion still verifies.
    assert not record_of(server, legacy_id).get("md5_state")
    start = 2 * LEGACY_CHUNK
    while start < len(legacy_data):
        piece = legacy_data[start : start + LEGACY_CHUNK]
        reply = legacy_chunk(server, user, legacy_id, start, piece, len(legacy_data))
        assert reply.status == 200, reply.body
        start += len(piece)
        assert json_of(reply)["offset"] == start
    wrong = legacy_complete(server, user, legacy_id, md5(legacy_data[:-1] + b"\0"))
    assert wrong.status_code == 400 and "md5" in wrong.text
    done = legacy_complete(server, user, legacy_id, md5(legacy_data))
    assert done.status_code == 200, done.text
    assert record_of(server, legacy_id)["state"] == "complete"
    assert sha256(file_bytes(server.upload_dir / legacy_id) or b"") == sha256(legacy_data)

    # The finished upload is finished again, with its length, and takes no bytes.
    head = tus_head(done_url, user)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "90000"
    assert tus_patch(server, user, done_url, len(done_data), b"").status == 204
    assert tus_patch(server, user, done_url, len(done_data), b"more").status == 413
    rebuilt = record_of(server, upload_id_of(done_url))
    assert rebuilt["state"] == "complete" and rebuilt["completed_at"] == done_record["completed_at"]
    assert file_bytes(server.upload_dir / upload_id_of(done_url)) == done_data


def test_an_evicted_record_is_404_and_rebuild_restores_only_it(server: GunicornServer) -> None:
    user = login(server, "lost-evicted")
    data_a, data_b = payload(300_000, 5, kind="random"), payload(300_000, 6, kind="random")
    url_a, url_b = tus_create(server, user, len(data_a)), tus_create(server, user, len(data_b))
    assert tus_patch(server, user, url_a, 0, data_a[:100_000]).status == 204
    assert tus_patch(server, user, url_b, 0, data_b[:200_000]).status == 204
    id_a = upload_id_of(url_a)

    client = server.redis_client()
    try:
        assert client.delete(f"{server.key_prefix}:upload:{{{id_a}}}") == 1  # what an eviction does
    finally:
        client.close()
    before = file_bytes(server.upload_dir / id_a)

    assert_unknown(server, user, url_a, 100_000, data_a)
    assert settled_offset(url_b, user) == 200_000  # the other upload is not affected
    assert file_bytes(server.upload_dir / id_a) == before == data_a[:100_000]

    rebuilt = rebuild(server)
    assert id_a in rebuilt and upload_id_of(url_b) not in rebuilt
    assert settled_offset(url_a, user) == 100_000
    assert tus_patch(server, user, url_a, 100_000, data_a[100_000:]).status == 204
    assert tus_patch(server, user, url_b, 200_000, data_b[200_000:]).status == 204
    assert file_bytes(server.upload_dir / id_a) == data_a
    assert file_bytes(server.upload_dir / upload_id_of(url_b)) == data_b


def test_redis_restarted_during_a_patch_body_keeps_the_acknowledged_bytes(
    server: GunicornServer, redis_back: RedisServer
) -> None:
    """Redis restarts empty while a PATCH body streams: that PATCH fails, the data file keeps exactly
    the acknowledged bytes, and after a rebuild the upload resumes from them."""
    user = login(server, "lost-mid-body")
    data = payload(800_000, 7, kind="random")
    url = tus_create(server, user, len(data))
    upload_id = upload_id_of(url)
    assert tus_patch(server, user, url, 0, data[:200_000]).status == 204

    headers = user.tus(
        **{"Content-Type": OFFSET_CT, "Upload-Offset": "200000", "Content-Length": str(len(data) - 200_000)}
    )
    request = RawRequest(server, "PATCH", path_of(url), headers)
    request.send(data[200_000:450_000])
    wait_drained(server, request)
    redis_back.stop()
    redis_back.start()
    try:
        request.send(data[450_000:])
    except OSError:
        pass  # it may answer before reading everything
    reply = try_response(request, timeout=60)
    assert reply is not None, "the PATCH got no answer"
    assert reply.status in (404, 409, 503), (reply.status, reply.body)  # never 204: its record is gone
    assert tus_head(url, user).status_code == 404
    # The acknowledged bytes, and perhaps bytes of the refused PATCH after them:
    # with its lock gone with Redis, that request cannot know that nobody
    # else writes the file, so it leaves what it wrote. Always the client's
    # bytes at their places.
    stored = file_bytes(server.upload_dir / upload_id)
    assert len(stored) >= 200_000 and stored == data[: len(stored)]

    assert upload_id in rebuild(server)  # (with the module's earlier uploads: Redis restarted empty)
    assert settled_offset(url, user) == len(stored)
    if len(stored) < len(data):
        assert tus_patch(server, user, url, len(stored), data[len(stored) :]).status == 204
    assert file_bytes(server.upload_dir / upload_id) == data


def test_manage_py_check_warns_about_an_evicting_redis(server: GunicornServer, redis_server: RedisServer) -> None:
    """``python -m django check`` with the server's settings names the danger (tusbridge.W002)."""
    client: redis.Redis = redis_server.client(decode_responses=True)
    original = client.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        client.config_set("maxmemory-policy", "allkeys-lru")
        evicting = manage(server, "check")
        client.config_set("maxmemory-policy", "noeviction")
        safe = manage(server, "check")
    finally:
        client.config_set("maxmemory-policy", original)
        client.close()
    assert evicting.returncode == 0, evicting.stderr  # a warning does not fail the check
    assert "tusbridge.W002" in evicting.stderr and "allkeys-lru" in evicting.stderr
    assert "tusbridge.W002" not in safe.stderr + safe.stdout
