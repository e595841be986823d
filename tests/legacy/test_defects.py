"""The known defects of django-chunked-upload, each shown fixed in tusbridge.

- completing twice: 400 "already complete", ``on_completion`` runs once;
- completing an expired upload: 410;
- a chunk whose END runs past TOTAL, or a TOTAL that changes: 400;
- a rejected first chunk leaves no file and no Redis key;
- concurrent chunks never interleave or duplicate bytes;
- completion uses the saved running md5, and falls back to one read when
  there is none (or it is stale, or libcrypto is missing).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from django.http import HttpResponse
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import assert_error, body_of, complete, get_record, post_chunk, upload_chunks, uploads_on_disk
from tests.support.together import run_together
from tests.support.tus import Completion, data_of, data_path, move_expiry, record_key, redis_keys
from tusbridge.chunked_upload import md5 as md5state
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

RECORDING_COMPLETE = "/variant/recording/"
ALREADY_COMPLETE = {"detail": 'Upload has already been marked as "complete"'}


# Completing twice -------------------------------------------------------------


def test_second_completion_is_400_and_on_completion_runs_once(
    client_logged_in: Client,
    redis_client: redis.Redis,
    recorded: list[tuple[str, bytes]],
    completions: list[Completion],
) -> None:
    """The original answered 200 twice and ran on_completion twice."""
    data = payload(5000)
    upload_id = upload_chunks(client_logged_in, data, 2000, filename="twice.bin")
    first = complete(client_logged_in, upload_id, md5(data), url=RECORDING_COMPLETE)
    assert first.status_code == 200, first.content
    second = complete(client_logged_in, upload_id, md5(data), url=RECORDING_COMPLETE)
    assert_error(second, 400, ALREADY_COMPLETE)
    assert recorded == [("twice.bin", data)]
    assert len(completions) == 1
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is State.COMPLETE


def test_concurrent_completions_complete_once(
    settings: Any, redis_client: redis.Redis, recorded: list[tuple[str, bytes]], completions: list[Completion]
) -> None:
    """Several completion requests at once: exactly one 200, on_completion and the signal run once."""
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True  # threads cannot see the test transaction's users
    data = payload(3000)
    upload_id = upload_chunks(Client(), data, 1000)
    responses = run_together([lambda: complete(Client(), upload_id, md5(data), url=RECORDING_COMPLETE)] * 6)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [400] * 5
    for response in responses:
        if response.status_code == 400:
            assert body_of(response) == ALREADY_COMPLETE
    assert recorded == [("data.bin", data)]
    assert len(completions) == 1


# Completing an expired upload ----------------------------------------------------------


def test_completing_an_expired_upload_is_410(
    client_logged_in: Client, redis_client: redis.Redis, recorded: list[tuple[str, bytes]]
) -> None:
    """The original completed expired uploads (200); tusbridge answers 410 and runs no hook."""
    data = payload(1000)
    upload_id = upload_chunks(client_logged_in, data, 400)
    move_expiry(redis_client, upload_id, time.time() - 1)
    response = complete(client_logged_in, upload_id, md5(data), url=RECORDING_COMPLETE)
    assert_error(response, 410, {"detail": "Upload has expired"})
    assert recorded == []
    record = get_record(redis_client, upload_id)
    assert record is not None and record.state is not State.COMPLETE


# END past TOTAL, TOTAL changed ----------------------------------------------------------


@pytest.mark.parametrize("header", ["bytes 0-10/10", "bytes 5-4/10"])
def test_first_chunk_with_end_past_total_or_before_start_is_400(
    client_logged_in: Client, redis_client: redis.Redis, header: str
) -> None:
    """A range that does not fit inside TOTAL is refused (the original accepted it)."""
    size = 11 if header == "bytes 0-10/10" else 0
    response = post_chunk(client_logged_in, b"z" * size, range_header=header)
    assert response.status_code == 400, response.content
    assert set(body_of(response)) == {"detail"}
    assert redis_keys(redis_client) == set()
    assert uploads_on_disk() == []


def test_later_chunk_with_end_past_total_is_400(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A later chunk running past TOTAL is refused and nothing of it is kept."""
    data = payload(20)
    first = post_chunk(client_logged_in, data[:10], total=20)
    upload_id = first.json()["upload_id"]
    response = post_chunk(client_logged_in, b"q" * 15, range_header="bytes 10-24/20", upload_id=upload_id)
    assert response.status_code == 400, response.content
    assert set(body_of(response)) == {"detail"}
    assert data_of(upload_id) == data[:10]
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == 10 and record.length == 20


@pytest.mark.parametrize("new_total", [25, 15, 40])
def test_total_changed_between_chunks_is_400(
    client_logged_in: Client, redis_client: redis.Redis, new_total: int
) -> None:
    """A chunk announcing another TOTAL than the first is refused; the upload keeps its size and bytes."""
    data = payload(20)
    upload_id = post_chunk(client_logged_in, data[:10], total=20).json()["upload_id"]
    response = post_chunk(client_logged_in, b"r" * 5, start=10, total=new_total, upload_id=upload_id)
    assert response.status_code == 400, response.content
    assert set(body_of(response)) == {"detail"}
    assert data_of(upload_id) == data[:10]
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == 10 and record.length == 20
    # The upload still finishes with its real size.
    done = post_chunk(client_logged_in, data[10:], start=10, total=20, upload_id=upload_id)
    assert done.status_code == 200, done.content
    assert data_of(upload_id) == data


# A rejected first chunk leaves nothing ---------------------------------------------------


REJECTED_FIRST_CHUNKS: dict[str, dict[str, Any]] = {
    "part-shorter-than-range": {"data": b"a" * 9, "range_header": "bytes 0-9/100"},
    "part-longer-than-range": {"data": b"a" * 11, "range_header": "bytes 0-9/100"},
    "end-past-total": {"data": b"a" * 11, "range_header": "bytes 0-10/10"},
    "not-at-zero": {"data": b"a" * 10, "range_header": "bytes 10-19/100"},
    "over-max-bytes": {"data": b"a" * 10, "range_header": "bytes 0-9/5000", "max_bytes": 1000},
    "whole-file-over-max-bytes": {"data": b"a" * 1001, "start": None, "max_bytes": 1000},
    "no-header-strict": {"data": b"a" * 10, "start": None, "url": "/variant/strict/"},
    "validate-raises": {"data": b"a" * 10, "range_header": "bytes 0-9/10", "url": "/variant/reject_validate/"},
    "pre-save-raises": {"data": b"a" * 10, "range_header": "bytes 0-9/10", "url": "/variant/reject_pre_save/"},
    "pre-save-raises-no-header": {"data": b"a" * 10, "start": None, "url": "/variant/reject_pre_save/"},
}


@pytest.mark.parametrize("case", list(REJECTED_FIRST_CHUNKS))
def test_rejected_first_chunk_leaves_no_file_and_no_key(
    client_logged_in: Client, redis_client: redis.Redis, settings: Any, case: str
) -> None:
    """Whatever refuses a first chunk, the upload directory and Redis (this test's prefix) stay empty."""
    params = dict(REJECTED_FIRST_CHUNKS[case])
    if "max_bytes" in params:
        settings.CHUNKED_UPLOAD_MAX_BYTES = params.pop("max_bytes")
    data = params.pop("data")
    response = post_chunk(client_logged_in, data, **params)
    assert 400 <= response.status_code < 500, response.content
    assert set(body_of(response)) >= {"detail"}
    assert uploads_on_disk() == []
    assert redis_keys(redis_client) == set()


def test_rejected_later_chunk_leaves_the_upload_as_it_was(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A refused later chunk (pre_save raises) changes neither the bytes nor the record."""
    data = payload(30)
    upload_id = post_chunk(client_logged_in, data[:10], total=30).json()["upload_id"]
    before = redis_client.hgetall(record_key(upload_id))
    response = post_chunk(
        client_logged_in, data[10:20], url="/variant/reject_pre_save/", start=10, total=30, upload_id=upload_id
    )
    assert_error(response, 400, {"detail": "refused by pre_save"})
    assert data_of(upload_id) == data[:10]
    assert redis_client.hgetall(record_key(upload_id)) == before


# Concurrent chunks ---------------------------------------------------------------------


def test_concurrent_identical_chunks_are_appended_once(settings: Any, redis_client: redis.Redis) -> None:
    """The same chunk sent by several clients at once: one 200, the others learn the new offset."""
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True  # threads cannot see the test transaction's users
    chunk = 512 * 1024
    data = payload(3 * chunk)
    upload_id = post_chunk(Client(), data[:chunk], total=len(data)).json()["upload_id"]
    for start in (chunk, 2 * chunk):
        piece = data[start : start + chunk]
        responses = run_together(
            [
                lambda piece=piece, start=start: post_chunk(
                    Client(), piece, start=start, total=len(data), upload_id=upload_id
                )
            ]
            * 4
        )
        winners = [r for r in responses if r.status_code == 200]
        assert len(winners) == 1, [(r.status_code, r.content) for r in responses]
        assert body_of(winners[0])["offset"] == start + chunk
        for response in responses:
            if response.status_code != 200:
                assert response.status_code in (400, 409), response.content
                if response.status_code == 400:
                    assert body_of(response) == {"detail": "Offsets do not match", "offset": start + chunk}
    assert data_of(upload_id) == data
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == len(data)
    done = complete(Client(), upload_id, md5(data))
    assert done.status_code == 200, done.content


def test_concurrent_different_chunks_never_interleave(settings: Any, redis_client: redis.Redis) -> None:
    """All chunks at once, each client retrying at the offset the server reports: bytes land in order, once."""
    settings.TUSBRIDGE_ALLOW_ANONYMOUS = True
    chunk = 256 * 1024
    data = payload(6 * chunk + 123)
    upload_id = post_chunk(Client(), data[:chunk], total=len(data)).json()["upload_id"]
    starts = list(range(chunk, len(data), chunk))

    def sender(start: int) -> HttpResponse:
        client = Client()
        piece = data[start : start + chunk]
        while True:
            response = post_chunk(client, piece, start=start, total=len(data), upload_id=upload_id)
            if response.status_code == 200:
                return response
            assert response.status_code in (400, 409), response.content
            if response.status_code == 400:
                body = body_of(response)
                assert body["detail"] == "Offsets do not match", body
                if body["offset"] > start:
                    return response  # someone else's copy of this range went in (cannot happen here)
            time.sleep(0.005)  # not a timing assertion: just yield to the other senders

    responses = run_together([lambda start=start: sender(start) for start in starts])
    assert all(r.status_code == 200 for r in responses), [r.content for r in responses]
    assert data_of(upload_id) == data
    record = get_record(redis_client, upload_id)
    assert record is not None and record.offset == len(data)


# md5 from the running state ---------------------------------------------------------------


def test_completion_uses_the_saved_md5_state(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """After the chunks the record's md5 state covers every byte, and completion trusts it (no re-read).

    Changing one byte of the data file behind the server's back proves it: the
    md5 of the bytes that were *received* still completes the upload.
    """
    if not md5state.available():
        pytest.skip("libcrypto's MD5 state is not usable on this machine")
    data = payload(300_000)
    upload_id = upload_chunks(client_logged_in, data, 100_000)
    record = get_record(redis_client, upload_id)
    assert record is not None
    assert record.md5_state and record.md5_offset == record.offset == len(data)
    path: Path = data_path(upload_id)
    with path.open("r+b") as fh:
        fh.seek(12345)
        fh.write(bytes([data[12345] ^ 0xFF]))
    response = complete(client_logged_in, upload_id, md5(data))
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("how", ["state-cleared", "libcrypto-missing", "state-stale"])
def test_completion_falls_back_to_reading_the_file(
    client_logged_in: Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Without a usable saved state the md5 is computed from the file, and still checked correctly."""
    data = payload(250_000, seed=7)
    if how == "libcrypto-missing":
        monkeypatch.setattr(md5state, "available", lambda: False)
        upload_id = upload_chunks(client_logged_in, data, 100_000)
        record = get_record(redis_client, upload_id)
        assert record is not None and record.md5_state == ""
    elif how == "state-cleared":
        upload_id = upload_chunks(client_logged_in, data, 100_000)
        redis_client.hset(record_key(upload_id), mapping={"md5_state": "", "md5_offset": "-1"})
    else:
        # The first chunk is hashed, the second arrives while libcrypto is "missing",
        # the third when it is back: the saved state then covers only the first chunk.
        first = post_chunk(client_logged_in, data[:100_000], total=len(data))
        upload_id = first.json()["upload_id"]
        with monkeypatch.context() as patch:
            patch.setattr(md5state, "available", lambda: False)
            second = post_chunk(
                client_logged_in, data[100_000:200_000], start=100_000, total=len(data), upload_id=upload_id
            )
            assert second.status_code == 200, second.content
        third = post_chunk(client_logged_in, data[200_000:], start=200_000, total=len(data), upload_id=upload_id)
        assert third.status_code == 200, third.content
        record = get_record(redis_client, upload_id)
        assert record is not None and record.md5_offset != record.offset
    wrong = complete(client_logged_in, upload_id, md5(data[:100_000]))
    assert_error(wrong, 400, {"detail": "md5 checksum does not match"})
    right = complete(client_logged_in, upload_id, md5(data))
    assert right.status_code == 200, right.content
    assert data_of(upload_id) == data


def test_whole_file_upload_keeps_a_current_md5_state(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """A whole-file upload (no Content-Range) also gets a current md5 state."""
    if not md5state.available():
        pytest.skip("libcrypto's MD5 state is not usable on this machine")
    data = payload(5000)
    upload_id = post_chunk(client_logged_in, data, start=None).json()["upload_id"]
    record = get_record(redis_client, upload_id)
    assert record is not None and record.md5_offset == record.offset == 5000
    assert complete(client_logged_in, upload_id, md5(data)).status_code == 200
