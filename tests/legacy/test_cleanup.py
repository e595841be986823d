"""The ``delete_expired_uploads`` management command (django-chunked-upload's cleanup).

It deletes uploads created longer ago than CHUNKED_UPLOAD_EXPIRATION_DELTA,
complete or not, records and files, and reports how many of each it deleted.
Uploads are made old by moving their creation time in Redis (record and the
creation index), never by waiting.
"""

from __future__ import annotations

import builtins
import io
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.test import Client

from tests.support.data import md5, payload
from tests.support.legacy import complete, get_record, post_chunk, upload_chunks, uploads_on_disk
from tests.support.tus import data_of, prefix, record_key
from tusbridge.record import State

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.legacy_urls")]

DAY = 24 * 3600


def age(client: redis.Redis, upload_id: str, seconds: float) -> None:
    """Pretend the upload was created ``seconds`` ago."""
    created = time.time() - seconds
    client.hset(record_key(upload_id), "created_at", repr(created))
    client.zadd(f"{prefix()}:created", {upload_id: created})


def new_upload(client: Client, seed: int, *, finish: bool, size: int = 3000) -> tuple[str, bytes]:
    data = payload(size, seed=seed)
    if finish:
        upload_id = upload_chunks(client, data, 1000)
        assert complete(client, upload_id, md5(data)).status_code == 200
    else:
        # Half of the bytes of a ``size``-byte upload: it stays unfinished.
        response = post_chunk(client, data[: size // 2], total=size)
        assert response.status_code == 200, response.content
        upload_id = response.json()["upload_id"]
    return upload_id, data


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("delete_expired_uploads", *args, stdout=out)
    return out.getvalue()


def assert_gone(client: redis.Redis, upload_id: str) -> None:
    assert get_record(client, upload_id) is None
    assert data_of(upload_id) is None
    assert not any(name.startswith(upload_id) for name in uploads_on_disk())


def test_deletes_only_uploads_older_than_the_delta(client_logged_in: Client, redis_client: redis.Redis) -> None:
    """Old complete and incomplete uploads go (records and files); recent ones stay; the counts are printed."""
    old_complete = [new_upload(client_logged_in, seed, finish=True) for seed in (1, 2)]
    old_incomplete = [new_upload(client_logged_in, seed, finish=False) for seed in (3, 4, 5)]
    recent_complete = new_upload(client_logged_in, 6, finish=True)
    recent_incomplete = new_upload(client_logged_in, 7, finish=False)
    for upload_id, _ in old_complete + old_incomplete:
        age(redis_client, upload_id, DAY + 60)
    age(redis_client, recent_complete[0], DAY - 60)

    assert run() == "2 complete uploads were deleted.\n3 incomplete uploads were deleted.\n"
    for upload_id, _ in old_complete + old_incomplete:
        assert_gone(redis_client, upload_id)
    record = get_record(redis_client, recent_complete[0])
    assert record is not None and record.state is State.COMPLETE
    assert data_of(recent_complete[0]) == recent_complete[1]
    record = get_record(redis_client, recent_incomplete[0])
    assert record is not None and record.state is State.UPLOADING
    assert data_of(recent_incomplete[0]) == recent_incomplete[1][:1500]

    assert run() == "0 complete uploads were deleted.\n0 incomplete uploads were deleted.\n"


def test_expiration_delta_setting_decides_what_is_old(
    client_logged_in: Client, redis_client: redis.Redis, settings: Any
) -> None:
    """Two hours old is kept under the default 1-day delta and deleted under a 1-hour delta."""
    upload_id, _ = new_upload(client_logged_in, 1, finish=False)
    age(redis_client, upload_id, 2 * 3600)
    assert run() == "0 complete uploads were deleted.\n0 incomplete uploads were deleted.\n"
    assert get_record(redis_client, upload_id) is not None
    settings.CHUNKED_UPLOAD_EXPIRATION_DELTA = timedelta(hours=1)
    assert run() == "0 complete uploads were deleted.\n1 incomplete uploads were deleted.\n"
    assert_gone(redis_client, upload_id)


def test_deletes_the_stored_file_of_a_handed_over_upload(
    client_logged_in: Client, redis_client: redis.Redis, settings: Any, tmp_path: Path
) -> None:
    """A completed upload that went to a storage (CHUNKED_UPLOAD_TO) loses that file too."""
    media = tmp_path / "media"
    media.mkdir()
    settings.MEDIA_ROOT = str(media)
    settings.CHUNKED_UPLOAD_TO = "done/"
    upload_id, data = new_upload(client_logged_in, 1, finish=True)
    stored = [p for p in media.rglob("*") if p.is_file()]
    assert [p.read_bytes() for p in stored] == [data]
    age(redis_client, upload_id, DAY + 1)
    assert run() == "1 complete uploads were deleted.\n0 incomplete uploads were deleted.\n"
    assert not stored[0].exists()
    assert get_record(redis_client, upload_id) is None


def test_interactive_skips_the_uploads_answered_no(
    client_logged_in: Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--interactive`` asks per old upload; "n" keeps it, "y" deletes it, anything else asks again."""
    keep_complete = new_upload(client_logged_in, 1, finish=True)
    drop_complete = new_upload(client_logged_in, 2, finish=True)
    keep_incomplete = new_upload(client_logged_in, 3, finish=False)
    drop_incomplete = new_upload(client_logged_in, 4, finish=False)
    recent = new_upload(client_logged_in, 5, finish=False)
    old = [keep_complete, drop_complete, keep_incomplete, drop_incomplete]
    for upload_id, _ in old:
        age(redis_client, upload_id, 2 * DAY)
    keep = {keep_complete[0], keep_incomplete[0]}
    prompts: list[str] = []

    def answer(prompt: str = "") -> str:
        prompts.append(prompt)
        asked = next(upload_id for upload_id, _ in old + [recent] if upload_id in prompt)
        if asked in keep:
            return "n"
        # First an answer the command must not accept, then yes.
        return " Y " if sum(asked in p for p in prompts) > 1 else "maybe"

    monkeypatch.setattr(builtins, "input", answer)
    output = run("--interactive")
    assert output == "1 complete uploads were deleted.\n1 incomplete uploads were deleted.\n"
    asked_ids = [next(u for u, _ in old + [recent] if u in p) for p in prompts]
    assert sorted(set(asked_ids)) == sorted(u for u, _ in old)
    assert asked_ids.count(drop_complete[0]) == 2 and asked_ids.count(keep_complete[0]) == 1
    assert_gone(redis_client, drop_complete[0])
    assert_gone(redis_client, drop_incomplete[0])
    assert data_of(keep_complete[0]) == keep_complete[1]
    assert data_of(keep_incomplete[0]) == keep_incomplete[1][:1500]
    assert get_record(redis_client, recent[0]) is not None

    # Without --interactive the declined ones go as well.
    monkeypatch.setattr(builtins, "input", lambda prompt="": pytest.fail("must not ask"))
    assert run() == "1 complete uploads were deleted.\n1 incomplete uploads were deleted.\n"
    for upload_id in keep:
        assert_gone(redis_client, upload_id)
