"""One upload record, two protocols: a legacy upload finished over tus, a tus upload finished legacy-style."""

from __future__ import annotations

import pytest
import redis
from django.test import Client

from tests.support.data import b64, md5, payload, upload_id_of
from tests.support.legacy import FILES, FILES_COMPLETE, assert_error, body_of, complete, get_record, post_chunk
from tests.support.tus import data_of, tus
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]


def test_legacy_chunks_then_tus_head_and_patch(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Two legacy chunks, then HEAD shows their offset and the Content-Range total; PATCH finishes."""
    data = payload(250_000)
    first = post_chunk(client_logged_in, data[:100_000], url=FILES, total=len(data))
    upload_id = body_of(first)["upload_id"]
    second = post_chunk(
        client_logged_in, data[100_000:200_000], url=FILES, start=100_000, total=len(data), upload_id=upload_id
    )
    assert body_of(second)["offset"] == 200_000

    t = tus(client_logged_in)
    head = t.head(f"{FILES}{upload_id}")
    assert head.status_code == 200
    assert head["Upload-Offset"] == "200000"
    assert head["Upload-Length"] == "250000"

    stale = t.patch(f"{FILES}{upload_id}", data[100_000:], 100_000)
    assert stale.status_code == 409
    assert data_of(upload_id) == data[:200_000]

    patch = t.patch(f"{FILES}{upload_id}", data[200_000:], 200_000)
    assert patch.status_code == 204, patch.content
    assert patch["Upload-Offset"] == "250000"
    assert data_of(upload_id) == data
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == len(data) and record.state is State.COMPLETE


def test_legacy_chunks_then_tus_patch_then_legacy_offset_agrees(client_logged_in: Client) -> None:
    """After a tus PATCH in the middle, the legacy client learns the new offset from a mismatch."""
    data = payload(300_000)
    upload_id = body_of(post_chunk(client_logged_in, data[:100_000], url=FILES, total=len(data)))["upload_id"]
    assert tus(client_logged_in).patch(f"{FILES}{upload_id}", data[100_000:200_000], 100_000).status_code == 204
    stale = post_chunk(
        client_logged_in, data[100_000:200_000], url=FILES, start=100_000, total=len(data), upload_id=upload_id
    )
    assert_error(stale, 400, {"detail": "Offsets do not match", "offset": 200_000})
    last = post_chunk(client_logged_in, data[200_000:], url=FILES, start=200_000, total=len(data), upload_id=upload_id)
    assert body_of(last)["offset"] == 300_000
    done = complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE)
    assert done.status_code == 200, done.content
    assert data_of(upload_id) == data


@pytest.mark.parametrize("deferred", [False, True], ids=["upload-length", "defer-length"])
@pytest.mark.parametrize("metadata", [None, f"filename {b64('scan.tiff')}"], ids=["no-metadata", "filename"])
def test_tus_upload_continued_with_legacy_chunks_and_md5_completion(
    client_logged_in: Client, redis_client: redis.Redis, deferred: bool, metadata: str | None
) -> None:
    """POST + PATCH over tus, then legacy chunks on the id from Location, then completion with the md5.

    A tus upload need not have a file name (no Upload-Metadata): completing it
    legacy-style must work all the same.
    """
    data = payload(260_000, seed=3)
    t = tus(client_logged_in)
    location = t.new_upload(None if deferred else len(data), metadata=metadata)
    upload_id = upload_id_of(location)
    assert t.patch(location, data[:60_000], 0).status_code == 204

    offset = 60_000
    while offset < len(data):
        piece = data[offset : offset + 100_000]
        response = post_chunk(client_logged_in, piece, url=FILES, start=offset, total=len(data), upload_id=upload_id)
        assert response.status_code == 200, response.content
        body = body_of(response)
        assert body["upload_id"] == upload_id
        offset += len(piece)
        assert body["offset"] == offset
        assert response["Range"] == f"bytes=0-{offset - 1}"

    record = get_record(redis_client, upload_id)
    assert record is not None and record.length == len(data) and record.state is State.UPLOADING
    wrong = complete(client_logged_in, upload_id, md5(data[:-1]), url=FILES_COMPLETE)
    assert_error(wrong, 400, {"detail": "md5 checksum does not match"})
    done = complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE)
    assert done.status_code == 200, done.content
    assert data_of(upload_id) == data
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.COMPLETE
    head = t.head(location)
    assert head["Upload-Offset"] == str(len(data))


def test_legacy_chunk_with_another_total_than_tus_length_is_400(client_logged_in: Client) -> None:
    """The tus Upload-Length is the upload's size for legacy chunks too."""
    data = payload(1000)
    t = tus(client_logged_in)
    location = t.new_upload(len(data))
    upload_id = upload_id_of(location)
    response = post_chunk(client_logged_in, data[:500], url=FILES, start=0, total=2000, upload_id=upload_id)
    assert response.status_code == 400, response.content
    assert data_of(upload_id) == b""
    assert t.offset(location) == 0


def test_legacy_chunk_for_someone_elses_tus_upload_is_404(client_logged_in: Client, django_user_model: object) -> None:
    """A tus upload of one user cannot be continued legacy-style by another."""
    location = tus(client_logged_in).new_upload(100)
    other = django_user_model.objects.create_user(username="mallory", password="x")  # type: ignore[attr-defined]
    other_client = Client()
    other_client.force_login(other)
    response = post_chunk(other_client, b"x" * 100, url=FILES, upload_id=upload_id_of(location), total=100)
    assert response.status_code == 404
    assert data_of(upload_id_of(location)) == b""
