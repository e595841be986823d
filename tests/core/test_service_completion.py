"""Completion: the upload_completed signal fires once, and the file is handed to TUSBRIDGE_STORAGE."""

from __future__ import annotations

import hashlib
import io
import random
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.core.files.storage import FileSystemStorage

from tests.support.data import b64, upload_id_of
from tests.support.together import run_threads
from tests.support.tus import Completion, Tus, data_of, leftovers, record_store
from tusbridge import errors, locking
from tusbridge.chunked_upload.md5 import MAX_DEFERRED as MAX_DEFERRED_MD5
from tusbridge.chunked_upload.md5 import ResumableMD5, RunningMD5
from tusbridge.chunked_upload.models import LEGACY_RULES
from tusbridge.record import State
from tusbridge.service import UploadService, WriteRules, get_service

pytestmark = pytest.mark.django_db


class TmpStorage(FileSystemStorage):
    """A FileSystemStorage subclass named by a dotted path; its place comes from a test setting."""

    def __init__(self) -> None:
        super().__init__(location=django_settings.TUSBRIDGE_TESTS_STORAGE_DIR)


class BrokenStorage(FileSystemStorage):
    """A storage whose every save fails (a full or unreachable bucket)."""

    def __init__(self) -> None:
        super().__init__(location=django_settings.TUSBRIDGE_TESTS_STORAGE_DIR)

    def _save(self, name: str, content: Any) -> str:
        raise OSError("the storage is down")


# The signal -------------------------------------------------------------------------


def test_completion_signal_fires_once_with_the_record_and_the_file(t: Tus, completions: list[Completion]) -> None:
    url = t.new_upload(11, metadata=f"filename {b64('hello.txt')}")
    assert t.patch(url, b"hello", 0).status_code == 204
    assert completions == []  # not complete yet
    assert t.patch(url, b" world", 5).status_code == 204
    assert len(completions) == 1
    seen = completions[0]
    assert seen.upload.id == upload_id_of(url)
    assert seen.upload.state is State.COMPLETE
    assert seen.upload.offset == seen.upload.length == 11
    assert seen.upload.filename == "hello.txt"
    assert seen.upload.stored_name == ""
    assert seen.was_closed is False
    assert seen.content == b"hello world"
    assert issubclass(seen.sender, UploadService)
    # Without a storage the finished file stays in the upload directory.
    assert data_of(upload_id_of(url)) == b"hello world"
    # Later requests on the finished upload announce nothing again.
    assert t.patch(url, b"", 11).status_code == 204
    assert t.head(url).status_code == 200
    assert len(completions) == 1


def test_no_signal_for_an_unfinished_or_terminated_upload(t: Tus, completions: list[Completion]) -> None:
    url = t.new_upload(10)
    assert t.patch(url, b"abc", 0).status_code == 204
    assert t.delete(url).status_code == 204
    assert completions == []


def test_concurrent_completion_requests_complete_once(completions: list[Completion]) -> None:
    """Protocols that confirm explicitly may send several confirmations; one wins."""
    service = get_service()
    record = service.create(owner="7", protocol="tus", length=5)
    appended = service.append(
        record.id, "7", offset=0, stream=io.BytesIO(b"12345"), content_length=5, rules=WriteRules(auto_complete=False)
    )
    assert appended.completed is False
    assert completions == []

    def confirm() -> str:
        try:
            get_service().complete(record.id, "7")
        except errors.AlreadyComplete:
            return "already"
        return "completed"

    outcomes = run_threads(8, confirm)
    assert outcomes.count("completed") == 1
    assert outcomes.count("already") == 7
    assert len(completions) == 1
    assert completions[0].content == b"12345"


def test_concurrent_final_appends_complete_once(completions: list[Completion]) -> None:
    """Several requests racing to send the same last bytes: one stores them, one signal."""
    service = get_service()
    record = service.create(owner="7", protocol="tus", length=6)

    def send() -> str:
        try:
            result = get_service().append(record.id, "7", offset=0, stream=io.BytesIO(b"abcdef"), content_length=6)
        except (errors.OffsetMismatch, errors.AlreadyComplete, errors.Locked):
            return "refused"
        return "completed" if result.completed else "stored"

    outcomes = run_threads(6, send)
    assert outcomes.count("completed") == 1
    assert outcomes.count("refused") == 5
    assert len(completions) == 1
    assert completions[0].content == b"abcdef"
    assert data_of(record.id) == b"abcdef"


def test_service_complete_refuses_an_unfinished_upload(completions: list[Completion]) -> None:
    service = get_service()
    record = service.create(owner="7", protocol="tus", length=5)
    service.append(
        record.id, "7", offset=0, stream=io.BytesIO(b"123"), content_length=3, rules=WriteRules(auto_complete=False)
    )
    with pytest.raises(errors.NotComplete):
        service.complete(record.id, "7")
    assert completions == []


# Storage hand-over ------------------------------------------------------------------


def _assert_handed_over(t: Tus, redis_client: redis.Redis, completions: list[Completion], location: Path) -> None:
    """Upload a file and check it went into the storage rooted at ``location``."""
    data = b"stored bytes \x00\x01\x02"
    url = t.upload(data, metadata=f"filename {b64('report.txt')}")
    upload_id = upload_id_of(url)
    record = record_store(redis_client).get(upload_id)
    assert record is not None
    assert record.stored_name
    assert re.fullmatch(rf"uploads/\d{{4}}/\d{{2}}/\d{{2}}/{upload_id}/report[^/]*\.txt", record.stored_name)
    stored = location / record.stored_name
    assert stored.read_bytes() == data
    assert leftovers(upload_id) == []  # the local copy is gone
    assert len(completions) == 1
    assert completions[0].upload.stored_name == record.stored_name
    assert completions[0].content == data
    head = t.head(url)
    assert head.status_code == 200
    assert head["Upload-Offset"] == str(len(data))


def test_default_storage_takes_the_finished_file(
    t: Tus, settings: Any, tmp_path: Path, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    media = tmp_path / "media"
    settings.MEDIA_ROOT = str(media)
    settings.TUSBRIDGE_STORAGE = "default"
    _assert_handed_over(t, redis_client, completions, media)


def test_a_dotted_storage_class_takes_the_finished_file(
    t: Tus, settings: Any, tmp_path: Path, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    location = tmp_path / "custom-storage"
    settings.TUSBRIDGE_TESTS_STORAGE_DIR = str(location)
    settings.TUSBRIDGE_STORAGE = f"{__name__}.TmpStorage"
    _assert_handed_over(t, redis_client, completions, location)


def test_a_hostile_filename_stays_inside_the_storage(
    t: Tus, settings: Any, tmp_path: Path, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    location = tmp_path / "storage"
    settings.TUSBRIDGE_TESTS_STORAGE_DIR = str(location)
    settings.TUSBRIDGE_STORAGE = f"{__name__}.TmpStorage"
    url = t.upload(b"x", metadata=f"filename {b64('../../../outside.txt')}")
    record = record_store(redis_client).get(upload_id_of(url))
    assert record is not None and record.stored_name
    stored = (location / record.stored_name).resolve()
    assert stored.is_relative_to(location.resolve())
    assert stored.read_bytes() == b"x"
    assert not (tmp_path / "outside.txt").exists()


def test_a_failing_storage_keeps_the_local_file(
    t: Tus, settings: Any, tmp_path: Path, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    """Nothing is lost when the hand-over fails: the bytes stay in the upload directory."""
    settings.TUSBRIDGE_TESTS_STORAGE_DIR = str(tmp_path / "broken")
    settings.TUSBRIDGE_STORAGE = f"{__name__}.BrokenStorage"
    url = t.upload(b"precious")
    upload_id = upload_id_of(url)
    record = record_store(redis_client).get(upload_id)
    assert record is not None and record.stored_name == ""
    assert data_of(upload_id) == b"precious"
    assert len(completions) == 1
    assert completions[0].content == b"precious"
    assert completions[0].upload.stored_name == ""


def test_a_failing_receiver_does_not_fail_the_completion(
    t: Tus, completions: list[Completion], caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that raises is logged; the PATCH still succeeds and later receivers still run."""
    from tusbridge.signals import upload_completed

    later: list[bytes] = []

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("the project's database is locked")

    def after(file: Any, **kwargs: Any) -> None:
        later.append(b"".join(file.chunks()))  # chunks() starts from the beginning

    upload_completed.connect(broken, dispatch_uid="broken-receiver")
    upload_completed.connect(after, dispatch_uid="later-receiver")
    try:
        url = t.create(5).headers["Location"]
        with caplog.at_level("ERROR", logger="tusbridge"):
            response = t.patch(url, b"hello", 0)
    finally:
        upload_completed.disconnect(dispatch_uid="broken-receiver")
        upload_completed.disconnect(dispatch_uid="later-receiver")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"
    assert len(completions) == 1 and completions[0].content == b"hello"
    assert later == [b"hello"]  # connected after the failing receiver, and still called
    assert "the project's database is locked" in caplog.text
    assert get_service().records.get(upload_id_of(url)).state is State.COMPLETE


@pytest.mark.parametrize("size", [MAX_DEFERRED_MD5, 3 * MAX_DEFERRED_MD5 + 12_345])
def test_a_chunk_on_a_kept_lock_is_hashed_after_its_response_only_up_to_a_mebibyte(size: int) -> None:
    """Up to MAX_DEFERRED_MD5 bytes wait to be hashed after the response; a longer chunk is hashed as it is written."""
    service = get_service()
    data = random.Random(5).randbytes(size)
    record = service.create(owner="7", protocol="legacy", length=size)
    lock, record = locking.lock_for_write(service.records, record.id, ttl=30, wait=0)
    md5 = ResumableMD5()
    tracker = RunningMD5(record.id, md5)
    tracker.fields_for_advance(0, keeping=True)  # as the chunk before it did: its lock was kept
    kept = locking.KeptLock(lock, record, tracker)
    session = service.open_write(record.id, "7", offset=0, held=kept, rules=LEGACY_RULES)
    view = memoryview(data)
    for start in range(0, size, 65_536):
        session.write(view[start : start + 65_536])
    waiting = sum(map(len, tracker._waiting or []))
    assert waiting == (size if size <= MAX_DEFERRED_MD5 else 0)
    if not waiting:
        assert md5.hexdigest() == hashlib.md5(data).hexdigest()  # every byte hashed, in order, before the commit
    service.commit(session)
    assert tracker.md5.hexdigest() == hashlib.md5(data).hexdigest()
    assert data_of(record.id) == data
