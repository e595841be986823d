"""tus termination (DELETE) and expiration (410 for expired uploads, the cleanup command)."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.management import call_command

from tests.support.data import upload_id_of
from tests.support.together import run_threads
from tests.support.tus import (
    COLLECTION,
    TUS_VERSION,
    Tus,
    data_of,
    expiry_key,
    imf_fixdate,
    leftovers,
    move_expiry,
    record_key,
    record_store,
)

pytestmark = pytest.mark.django_db

UNKNOWN_ID = "fedcba9876543210fedcba9876543210"


def run_cleanup() -> int:
    """Run ``manage.py tusbridge_cleanup``; return the number it reports."""
    out = io.StringIO()
    call_command("tusbridge_cleanup", stdout=out)
    match = re.search(r"(\d+) expired uploads? (was|were) deleted", out.getvalue())
    assert match, out.getvalue()
    return int(match.group(1))


# Termination -------------------------------------------------------------------------


def test_delete_terminates_the_upload(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    settings.TUSBRIDGE_RETENTION = timedelta(hours=1)
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    assert t.patch(url, b"abc", 0).status_code == 204
    response = t.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    assert response["Tus-Resumable"] == TUS_VERSION
    assert leftovers(upload_id) == []
    head = t.head(url)
    assert head.status_code == 410
    assert "Upload-Offset" not in head
    # A tombstone that goes away by itself after the retention period.
    ttl = redis_client.pttl(record_key(upload_id))
    assert 0 < ttl <= 3600 * 1000
    assert redis_client.zscore(expiry_key(), upload_id) is None


def test_requests_after_delete_are_410(t: Tus) -> None:
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    assert t.delete(url).status_code == 204
    second = t.delete(url)
    assert second.status_code == 410
    assert second["Tus-Resumable"] == TUS_VERSION
    patch = t.patch(url, b"abc", 0)
    assert patch.status_code == 410
    assert "Upload-Offset" not in patch
    assert leftovers(upload_id) == []


def test_delete_of_an_unknown_upload_is_404(t: Tus) -> None:
    response = t.delete(f"{COLLECTION}{UNKNOWN_ID}")
    assert response.status_code == 404
    assert response["Tus-Resumable"] == TUS_VERSION


def test_delete_of_a_complete_upload(t: Tus) -> None:
    """Termination applies to completed uploads too."""
    url = t.upload(b"finished")
    assert data_of(upload_id_of(url)) == b"finished"
    assert t.delete(url).status_code == 204
    assert t.head(url).status_code == 410
    assert leftovers(upload_id_of(url)) == []


def test_delete_of_a_deferred_upload(t: Tus) -> None:
    url = t.new_upload(None)
    assert t.patch(url, b"abc", 0).status_code == 204
    assert t.delete(url).status_code == 204
    assert t.head(url).status_code == 410
    assert leftovers(upload_id_of(url)) == []


def test_delete_leaves_other_uploads_alone(t: Tus) -> None:
    keep = t.new_upload(3)
    assert t.patch(keep, b"abc", 0).status_code == 204
    assert t.delete(t.new_upload(3)).status_code == 204
    assert t.head(keep).status_code == 200
    assert data_of(upload_id_of(keep)) == b"abc"


# Expiration ----------------------------------------------------------------------------


def test_an_expired_upload_is_410(t: Tus, redis_client: redis.Redis) -> None:
    """Once past Upload-Expires the upload cannot be resumed; the server tracks it, so 410."""
    url = t.new_upload(10)
    upload_id = upload_id_of(url)
    assert t.patch(url, b"abc", 0).status_code == 204
    move_expiry(redis_client, upload_id, time.time() - 60)
    head = t.head(url)
    assert head.status_code == 410
    assert "Upload-Offset" not in head
    assert head["Tus-Resumable"] == TUS_VERSION
    patch = t.patch(url, b"def", 3)
    assert patch.status_code == 410
    assert data_of(upload_id) == b"abc"
    assert t.delete(url).status_code == 410


def test_a_tiny_expiry_setting_expires_uploads(t: Tus, settings: Any) -> None:
    settings.TUSBRIDGE_EXPIRY = timedelta(microseconds=1)
    response = t.create(10)
    assert response.status_code == 201
    assert imf_fixdate(response["Upload-Expires"]) <= time.time()
    assert t.head(response["Location"]).status_code == 410


def test_a_complete_upload_does_not_expire(t: Tus, redis_client: redis.Redis) -> None:
    url = t.upload(b"kept")
    head = t.head(url)
    assert head.status_code == 200
    assert "Upload-Expires" not in head
    move_expiry(redis_client, upload_id_of(url), time.time() - 60, index=False)
    assert t.head(url).status_code == 200


def test_cleanup_removes_only_expired_unfinished_uploads(t: Tus, settings: Any, redis_client: redis.Redis) -> None:
    settings.TUSBRIDGE_RETENTION = timedelta(hours=1)
    now = time.time()
    expired = t.new_upload(10)
    assert t.patch(expired, b"old", 0).status_code == 204
    move_expiry(redis_client, upload_id_of(expired), now - 60)

    live = t.new_upload(10)
    assert t.patch(live, b"new", 0).status_code == 204

    complete = t.upload(b"done")
    # Even an index entry and an old expiry time do not expire a complete upload.
    move_expiry(redis_client, upload_id_of(complete), now - 60)

    extended = t.new_upload(10)
    # Indexed as due, but its record was extended meanwhile (a PATCH in between).
    redis_client.zadd(expiry_key(), {upload_id_of(extended): now - 60})
    extended_until = record_store(redis_client).get(upload_id_of(extended)).expires_at

    terminated = t.new_upload(10)
    assert t.delete(terminated).status_code == 204
    redis_client.zadd(expiry_key(), {upload_id_of(terminated): now - 60})

    assert run_cleanup() == 1

    expired_id = upload_id_of(expired)
    assert t.head(expired).status_code == 410
    assert leftovers(expired_id) == []
    tombstone = record_store(redis_client).get(expired_id)
    assert tombstone is not None and tombstone.state.value == "expired"
    assert 0 < redis_client.pttl(record_key(expired_id)) <= 3600 * 1000
    assert redis_client.zscore(expiry_key(), expired_id) is None

    assert t.head(live).status_code == 200
    assert data_of(upload_id_of(live)) == b"new"
    assert t.patch(live, b"ish", 3).status_code == 204

    assert t.head(complete).status_code == 200
    assert data_of(upload_id_of(complete)) == b"done"
    assert redis_client.zscore(expiry_key(), upload_id_of(complete)) is None

    assert t.head(extended).status_code == 200
    assert redis_client.zscore(expiry_key(), upload_id_of(extended)) == pytest.approx(extended_until)

    assert redis_client.zscore(expiry_key(), upload_id_of(terminated)) is None
    # Nothing is left to do on a second run.
    assert run_cleanup() == 0


def test_cleanup_with_nothing_due(t: Tus) -> None:
    url = t.new_upload(10)
    assert run_cleanup() == 0
    assert t.head(url).status_code == 200


def test_concurrent_cleanups_delete_each_upload_once(t: Tus, redis_client: redis.Redis) -> None:
    """Cleanup runs from cron on several hosts; every expired upload is counted exactly once."""
    urls = [t.new_upload(10) for _ in range(40)]
    past = time.time() - 60
    for url in urls:
        move_expiry(redis_client, upload_id_of(url), past)
    live = t.new_upload(10)

    workers = 6
    counts = run_threads(workers, run_cleanup)
    assert len(counts) == workers
    assert sum(counts) == len(urls)
    for url in urls:
        assert t.head(url).status_code == 410
        assert leftovers(upload_id_of(url)) == []
    assert t.head(live).status_code == 200
    assert run_cleanup() == 0
