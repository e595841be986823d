"""The S3 data store against a real S3 HTTP API: moto in server mode, an S3 emulator on a free port.

``tests/support/s3.py`` runs ``python -m moto.server`` as a subprocess and
gives each test a bucket of its own; after every test it asserts that no
multipart upload in the bucket is one tusbridge forgot. The first half looks
at the objects and calls themselves (parts, tail, memory, completion in
place, UploadPartCopy, abort, cutting back); the second runs both protocols
with ``TUSBRIDGE_DATA_STORE`` naming the S3 store, as
``test_custom_data_store.py`` does for a store written outside tusbridge.
The contract every store passes is in ``test_store_contract.py``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.test import Client

from tests.support.data import md5, payload, upload_id_of
from tests.support.legacy import complete, post_chunk
from tests.support.s3 import REGION, Calls, MotoServer, multipart_uploads, object_keys, s3_bucket, s3_server
from tests.support.servers import free_port
from tests.support.tus import Completion, Tus
from tusbridge import errors
from tusbridge.data.base import Finisher
from tusbridge.record import new_upload_id
from tusbridge.service import get_service

__all__ = ["s3_bucket", "s3_server"]  # fixtures, used by name

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

from tusbridge.data.s3 import S3DataStore  # noqa: E402

MiB = 1024 * 1024
PART = 5 * MiB  # S3's minimum: the smallest parts make the quickest tests

Store = Callable[..., S3DataStore]


@pytest.fixture
def make_store(s3_server: MotoServer, s3_bucket: str) -> Store:
    """``make_store(**options)``: an S3DataStore on the test's bucket, with 5 MiB parts unless told."""

    def make(**options: Any) -> S3DataStore:
        options = {"endpoint_url": s3_server.url, "region": REGION, "part_size": PART, **options}
        return S3DataStore(s3_bucket, **options)

    return make


@pytest.fixture
def store(make_store: Store) -> S3DataStore:
    return make_store()


@pytest.fixture
def calls(store: S3DataStore) -> Calls:
    """The S3 operations ``store`` sends."""
    return Calls(store._client)


def write(store: S3DataStore, upload_id: str, offset: int, data: bytes, *, piece: int = MiB) -> None:
    writer = store.writer(upload_id, offset)
    try:
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
        writer.sync()
    finally:
        writer.close()


def read(store: S3DataStore, upload_id: str) -> bytes:
    with store.open(upload_id) as fh:
        return fh.read()


def parts_of(store: S3DataStore, upload_id: str) -> list[int]:
    """Sizes of the parts of the upload's multipart upload, in number order."""
    client = store._client
    (upload,) = [u for u in multipart_uploads(client, store.bucket) if u["Key"] == store.key(upload_id)]
    listed = client.list_parts(Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return [part["Size"] for part in sorted(listed.get("Parts", []), key=lambda p: p["PartNumber"])]


def tail_of(store: S3DataStore, upload_id: str) -> tuple[int, dict[str, str]]:
    head = store._client.head_object(Bucket=store.bucket, Key=store.key(upload_id) + ".part")
    return head["ContentLength"], head["Metadata"]


# Parts and the tail --------------------------------------------------------------------


def test_whole_parts_are_uploaded_and_the_rest_is_the_tail_object(store: S3DataStore) -> None:
    data = payload(3 * PART + 12345, seed=1, kind="random")
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data[: 2 * PART + 7])
    assert parts_of(store, upload_id) == [PART, PART]
    size, meta = tail_of(store, upload_id)
    assert (size, meta["start"], meta["part"]) == (7, str(2 * PART), "3")
    assert store.size(upload_id) == 2 * PART + 7
    # The next writer prepends the tail: part 3 starts with its 7 bytes.
    write(store, upload_id, 2 * PART + 7, data[2 * PART + 7 :])
    assert parts_of(store, upload_id) == [PART, PART, PART]
    assert tail_of(store, upload_id)[0] == 12345
    assert store.size(upload_id) == len(data)
    store.finish(upload_id)
    assert read(store, upload_id) == data
    head = store._client.head_object(Bucket=store.bucket, Key=store.key(upload_id))
    assert head["ETag"].endswith('-4"')  # three parts, and the tail as the last one


class SlowParts:
    """Wraps a store's part upload: slower than the body, and counting the parts on their way at once."""

    def __init__(self, store: S3DataStore) -> None:
        self._upload_part = store._upload_part
        self._lock = threading.Lock()
        self.uploading = 0
        self.most = 0
        store._upload_part = self  # type: ignore[method-assign]

    def __call__(self, *args: Any) -> Any:
        with self._lock:
            self.uploading += 1
            self.most = max(self.most, self.uploading)
        try:
            time.sleep(0.05)
            return self._upload_part(*args)
        finally:
            with self._lock:
                self.uploading -= 1


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_writer_never_holds_more_than_part_size_times_parts_in_flight_plus_one(
    make_store: Store, in_flight: int
) -> None:
    """Memory, measured with tracemalloc while 40 MiB stream through slowed part uploads."""
    store = make_store(parts_in_flight=in_flight)
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, b"warm up botocore's lazy loading")
    slow = SlowParts(store)
    source = bytes(MiB)
    piece = memoryview(source)[: 256 * 1024]
    writer = store.writer(upload_id, 31)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(160):
            writer.write(piece)
        writer.sync()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        writer.close()
    # Beyond the buffers: botocore's bookkeeping of the requests in flight (some KiB each).
    assert peak <= PART * (in_flight + 1) + MiB // 2, peak / MiB
    assert peak >= PART * in_flight  # the measurement sees the parts at all
    assert slow.most == in_flight
    assert store.size(upload_id) == 31 + 40 * MiB


def test_finish_completes_the_multipart_upload_in_place(store: S3DataStore, calls: Calls) -> None:
    data = payload(2 * PART + 100, seed=2, kind="random")
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data)
    store.write_info(upload_id, {"id": upload_id})
    assert isinstance(store, Finisher)
    calls.clear()
    store.finish(upload_id)
    assert calls.count("CompleteMultipartUpload") == 1
    assert calls.count("CopyObject") == 0 and calls.count("PutObject") == 0 and calls.count("UploadPart") == 0
    # The 100-byte tail became the last part by a copy inside S3; nothing passed through this process.
    assert calls.count("UploadPartCopy") == 1 and calls.count("GetObject") == 0
    key = store.key(upload_id)
    assert object_keys(store._client, store.bucket) == [key, key + ".info"]
    assert multipart_uploads(store._client, store.bucket) == []
    assert store.size(upload_id) == len(data)
    assert read(store, upload_id) == data
    calls.clear()
    store.finish(upload_id)  # a second finish changes nothing
    assert calls.names == ["HeadObject", "HeadObject"]


def test_finish_of_whole_parts_and_of_an_empty_upload(store: S3DataStore, calls: Calls) -> None:
    whole, empty = new_upload_id(), new_upload_id()
    data = payload(2 * PART, seed=3, kind="random")
    for upload_id in (whole, empty):
        store.create(upload_id)
    write(store, whole, 0, data)
    calls.clear()
    store.finish(whole)
    assert calls.count("UploadPartCopy") == 0 and calls.count("CompleteMultipartUpload") == 1
    assert read(store, whole) == data
    # S3 completes no multipart upload without a part: an empty upload becomes an empty object.
    store.finish(empty)
    assert read(store, empty) == b"" and store.size(empty) == 0
    assert multipart_uploads(store._client, store.bucket) == []


def test_open_reads_a_tail_only_upload_but_not_parts_in_progress(store: S3DataStore) -> None:
    data = b"still in the tail" + payload(PART, seed=4)
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data[:17])
    assert read(store, upload_id) == data[:17]
    write(store, upload_id, 17, data[17:])
    with pytest.raises(io.UnsupportedOperation):
        store.open(upload_id)
    store.finish(upload_id)
    with store.open(upload_id) as fh:
        fh.seek(PART - 3)
        assert fh.read(100) == data[PART - 3 : PART + 97]
        assert fh.seek(0, io.SEEK_END) == len(data)
        fh.seek(6)
        assert fh.read(11) == b"in the tail"


# Cutting back: rollback, and a sync that was never counted -----------------------------------


def test_rollback_after_parts_were_stored(store: S3DataStore) -> None:
    data = payload(3 * PART, seed=5, kind="random")
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data[:1000])
    writer = store.writer(upload_id, 1000)
    try:
        writer.write(payload(2 * PART, seed=6))
        writer.sync()
        assert store.size(upload_id) == 1000 + 2 * PART
        writer.rollback()
        assert store.size(upload_id) == 1000 and writer.written == 0
        writer.write(data[1000:])
        writer.sync()
    finally:
        writer.close()
    store.finish(upload_id)
    assert read(store, upload_id) == data


def test_rollback_before_sync_ignores_the_parts_it_uploaded(store: S3DataStore) -> None:
    data = payload(2 * PART + 5, seed=7, kind="random")
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data[:10])
    writer = store.writer(upload_id, 10)
    try:
        writer.write(payload(2 * PART, seed=8))  # two parts on their way, none counted
        writer.rollback()
        assert store.size(upload_id) == 10
        writer.write(data[10:])
        writer.sync()
    finally:
        writer.close()
    store.finish(upload_id)
    assert read(store, upload_id) == data


def test_a_sync_whose_offset_never_advanced_is_cut_back(store: S3DataStore) -> None:
    """A worker killed between ``sync`` and the offset advance: the next writer opens at the old offset."""
    data = payload(3 * PART, seed=9, kind="random")
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, data[: 3 * MiB])
    write(store, upload_id, 3 * MiB, payload(8 * MiB, seed=10))  # stored, never counted
    assert store.size(upload_id) == 11 * MiB
    writer = store.writer(upload_id, 3 * MiB)  # cut back inside the parts: from the kept tail
    assert store.size(upload_id) == 3 * MiB
    writer.close()
    write(store, upload_id, 3 * MiB, data[3 * MiB :])
    store.finish(upload_id)
    assert read(store, upload_id) == data


def test_a_reopened_writer_takes_the_tail_it_was_handed(store: S3DataStore, calls: Calls) -> None:
    """The service reopens a writer at every count of a streaming body: no GET of the tail then."""
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, payload(PART + 3 * MiB, seed=11))
    calls.clear()
    write(store, upload_id, PART + 3 * MiB, b"more")
    assert calls.count("GetObject") == 0
    assert store.size(upload_id) == PART + 3 * MiB + 4


# Termination and concatenation -----------------------------------------------------------------


def test_remove_aborts_the_multipart_upload(store: S3DataStore, calls: Calls) -> None:
    upload_id = new_upload_id()
    store.create(upload_id)
    write(store, upload_id, 0, payload(PART + 10, seed=12))
    store.write_info(upload_id, {"id": upload_id})
    store.remove(upload_id)
    assert calls.count("AbortMultipartUpload") == 1
    assert multipart_uploads(store._client, store.bucket) == []
    assert object_keys(store._client, store.bucket) == []
    assert store.size(upload_id) is None


def test_concatenation_copies_parts_inside_s3(store: S3DataStore, calls: Calls) -> None:
    first, second = payload(PART + 1, seed=13, kind="random"), payload(1000, seed=14, kind="random")
    sources = [new_upload_id(), new_upload_id()]
    for upload_id, data in zip(sources, (first, second), strict=True):
        store.create(upload_id)
        write(store, upload_id, 0, data)
        store.finish(upload_id)
    target = new_upload_id()
    store.create(target)
    calls.clear()
    store.concatenate(target, sources)
    assert calls.count("UploadPartCopy") == 2 and calls.count("CompleteMultipartUpload") == 1
    assert calls.count("UploadPart") == 0 and calls.count("GetObject") == 0
    assert read(store, target) == first + second
    assert read(store, sources[0]) == first  # sources stay


def test_concatenation_streams_what_cannot_be_copied(make_store: Store) -> None:
    """A partial under 5 MiB before the last, or unequal parts for R2: streamed through a writer."""
    for equal_parts, sizes in ((False, (1000, PART)), (True, (PART + 1, PART + 2))):
        store = make_store(equal_parts=equal_parts)
        calls = Calls(store._client)
        datas = [payload(size, seed=size, kind="random") for size in sizes]
        sources = [new_upload_id() for _ in datas]
        for upload_id, data in zip(sources, datas, strict=True):
            store.create(upload_id)
            write(store, upload_id, 0, data)
            store.finish(upload_id)
        target = new_upload_id()
        store.create(target)
        calls.clear()
        store.concatenate(target, sources)
        assert calls.count("UploadPartCopy") <= 1  # at most the tail, at completion
        assert calls.count("UploadPart") >= 1 and calls.count("GetObject") >= 2
        assert read(store, target) == b"".join(datas)


# Settings and failures --------------------------------------------------------------------------


def test_an_unreachable_endpoint_is_store_unavailable(s3_server: MotoServer) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=url, region_name=REGION, config=Config(retries={"total_max_attempts": 1}, connect_timeout=1)
    )
    store = S3DataStore("nowhere", client=client)
    with pytest.raises(errors.StoreUnavailable):
        store.create(new_upload_id())
    with pytest.raises(errors.StoreUnavailable):
        store.size(new_upload_id())


def test_the_settings_build_the_store_and_are_checked(settings: Any, s3_server: MotoServer, s3_bucket: str) -> None:
    settings.TUSBRIDGE_DATA_STORE = "tusbridge.data.s3.S3DataStore"
    settings.TUSBRIDGE_S3_BUCKET = s3_bucket
    settings.TUSBRIDGE_S3_ENDPOINT_URL = s3_server.url
    settings.TUSBRIDGE_S3_REGION = REGION
    settings.TUSBRIDGE_S3_PARTS_IN_FLIGHT = 3
    settings.TUSBRIDGE_MAX_SIZE = 10 * 1024**3
    store = get_service().data
    assert isinstance(store, S3DataStore)
    assert (store.bucket, store.prefix, store.part_size, store.parts_in_flight) == (s3_bucket, "tusbridge/", 8 * MiB, 3)
    assert S3DataStore.check() == []
    settings.TUSBRIDGE_S3_BUCKET = ""
    settings.TUSBRIDGE_S3_PART_SIZE = MiB
    settings.TUSBRIDGE_S3_PARTS_IN_FLIGHT = 0
    settings.TUSBRIDGE_S3_KEY_PREFIX = ""
    ids = sorted(message.id for message in S3DataStore.check())
    assert ids == ["tusbridge.E020", "tusbridge.E021", "tusbridge.E022", "tusbridge.W020"]
    settings.TUSBRIDGE_S3_PART_SIZE = PART
    settings.TUSBRIDGE_MAX_SIZE = 0  # no limit: more than 10,000 parts could be needed
    assert "tusbridge.W021" in {message.id for message in S3DataStore.check()}


# Both protocols on the S3 store ---------------------------------------------------------------


@pytest.fixture
def s3_settings(settings: Any, s3_server: MotoServer, s3_bucket: str) -> Iterator[S3DataStore]:
    """TUSBRIDGE_DATA_STORE names the S3 store; yields the service's store."""
    settings.TUSBRIDGE_DATA_STORE = "tusbridge.data.s3.S3DataStore"
    settings.TUSBRIDGE_S3_BUCKET = s3_bucket
    settings.TUSBRIDGE_S3_ENDPOINT_URL = s3_server.url
    settings.TUSBRIDGE_S3_REGION = REGION
    settings.TUSBRIDGE_S3_PART_SIZE = PART
    store = get_service().data
    assert isinstance(store, S3DataStore)
    yield store


def _checksum(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


@pytest.mark.django_db
def test_a_tus_upload_in_three_patches(s3_settings: S3DataStore, t: Tus, completions: list[Completion]) -> None:
    data = payload(2 * PART + 300_000, seed=20, kind="random")
    calls = Calls(s3_settings._client)
    url = t.new_upload(len(data))
    upload_id = upload_id_of(url)
    third = len(data) // 3
    for start in (0, third, 2 * third):
        chunk = data[start : start + third] if start < 2 * third else data[start:]
        reply = t.patch(url, chunk, start)
        assert reply.status_code == 204, reply.content
        assert t.offset(url) == start + len(chunk)
    assert [c.content for c in completions] == [data]
    assert calls.count("CompleteMultipartUpload") == 1 and calls.count("CopyObject") <= 2  # .prev copies only
    assert read(s3_settings, upload_id) == data
    assert multipart_uploads(s3_settings._client, s3_settings.bucket) == []
    extensions = t.options()["Tus-Extension"].split(",")
    assert "termination" in extensions and "concatenation" in extensions


@pytest.mark.django_db
def test_a_patch_counted_while_it_streams(
    s3_settings: S3DataStore, settings: Any, t: Tus, completions: list[Completion]
) -> None:
    """The service syncs, advances and reopens the writer every 3 MiB: the reopened writer is handed its tail."""
    settings.TUSBRIDGE_PROGRESS_BYTES = 3 * MiB
    store = get_service().data
    assert isinstance(store, S3DataStore)
    calls = Calls(store._client)
    data = payload(3 * PART + 1234, seed=28, kind="random")
    url = t.new_upload(len(data))
    assert t.patch(url, data, 0).status_code == 204
    assert [c.content for c in completions] == [data]
    assert calls.count("PutObject") >= 5  # the tail stored at every count
    assert [key for name, key in calls.keys if name == "GetObject" and key.endswith(".part")] == []
    assert multipart_uploads(store._client, store.bucket) == []


@pytest.mark.django_db
def test_the_expiry_sweep_aborts_a_multipart_upload_a_crash_left_without_its_tail(
    s3_settings: S3DataStore, settings: Any
) -> None:
    """A worker killed inside ``create``, between CreateMultipartUpload and the tail: found and aborted."""
    settings.TUSBRIDGE_EXPIRY = 0
    store = get_service().data
    assert isinstance(store, S3DataStore)
    orphan = new_upload_id()
    store._client.create_multipart_upload(Bucket=store.bucket, Key=store.key(orphan))
    assert orphan in list(store.upload_ids()) and store.age(orphan) is not None
    get_service().expire_due()
    assert multipart_uploads(store._client, store.bucket) == []


@pytest.mark.django_db
def test_creation_with_upload(s3_settings: S3DataStore, t: Tus, completions: list[Completion]) -> None:
    data = payload(PART + 1000, seed=21, kind="random")
    created = t.create(len(data) + 10, body=data)
    assert created.status_code == 201, created.content
    assert created["Upload-Offset"] == str(len(data))
    url = created["Location"]
    assert s3_settings.size(upload_id_of(url)) == len(data)
    assert t.patch(url, b"0123456789", len(data)).status_code == 204
    assert [c.content for c in completions] == [data + b"0123456789"]


@pytest.mark.django_db
def test_a_checksum_mismatch_leaves_the_store_as_it_was(
    s3_settings: S3DataStore, t: Tus, completions: list[Completion]
) -> None:
    data = payload(2 * PART, seed=22, kind="random")
    url = t.new_upload(len(data))
    upload_id = upload_id_of(url)
    first = data[: PART + 1000]
    assert t.patch(url, first, 0, HTTP_UPLOAD_CHECKSUM=_checksum(first)).status_code == 204
    rest = data[len(first) :]
    refused = t.patch(url, rest, len(first), HTTP_UPLOAD_CHECKSUM=_checksum(rest + b"x"))
    assert refused.status_code == 460
    assert s3_settings.size(upload_id) == len(first) and t.offset(url) == len(first)
    assert parts_of(s3_settings, upload_id) in ([PART], [PART, PART])  # a part beyond the tail is ignored
    assert t.patch(url, rest, len(first), HTTP_UPLOAD_CHECKSUM=_checksum(rest)).status_code == 204
    assert [c.content for c in completions] == [data]


@pytest.mark.django_db
def test_termination_aborts_and_deletes(s3_settings: S3DataStore, t: Tus) -> None:
    url = t.new_upload(2 * PART)
    assert t.patch(url, payload(PART + 5, seed=23), 0).status_code == 204
    assert t.delete(url).status_code == 204
    assert s3_settings.size(upload_id_of(url)) is None
    assert multipart_uploads(s3_settings._client, s3_settings.bucket) == []
    assert object_keys(s3_settings._client, s3_settings.bucket) == []


@pytest.mark.django_db
def test_a_legacy_upload_with_md5_completion(
    s3_settings: S3DataStore, client_logged_in: Client, completions: list[Completion]
) -> None:
    data = payload(PART + 250_000, seed=24)
    chunk = 2 * MiB
    first = post_chunk(client_logged_in, data[:chunk], url="/files/", start=0, total=len(data))
    assert first.status_code == 200, first.content
    upload_id = first.json()["upload_id"]
    for start in range(chunk, len(data), chunk):
        piece = data[start : start + chunk]
        reply = post_chunk(client_logged_in, piece, url="/files/", start=start, total=len(data), upload_id=upload_id)
        assert reply.status_code == 200, reply.content
        assert reply.json()["offset"] == start + len(piece)
    assert s3_settings.size(upload_id) == len(data)
    assert complete(client_logged_in, upload_id, md5(b"wrong"), url="/files/complete/").status_code == 400
    done = complete(client_logged_in, upload_id, md5(data), url="/files/complete/")
    assert done.status_code == 200, done.content
    assert [c.content for c in completions] == [data]
    assert read(s3_settings, upload_id) == data


@pytest.mark.django_db
def test_a_legacy_upload_begun_and_finished_over_tus(
    s3_settings: S3DataStore, client_logged_in: Client, t: Tus, completions: list[Completion]
) -> None:
    data = payload(PART + 60_000, seed=25)
    first = post_chunk(client_logged_in, data[:20_000], url="/files/", start=0, total=len(data))
    upload_id = first.json()["upload_id"]
    url = f"/files/{upload_id}"
    assert t.offset(url) == 20_000
    assert t.patch(url, data[20_000:], 20_000).status_code == 204
    assert [c.content for c in completions] == [data]
    assert read(s3_settings, upload_id) == data


@pytest.mark.django_db
def test_concatenation_over_tus(s3_settings: S3DataStore, t: Tus, completions: list[Completion]) -> None:
    datas = [payload(PART + 7, seed=26, kind="random"), payload(3000, seed=27, kind="random")]
    calls = Calls(s3_settings._client)
    urls = []
    for data in datas:
        created = t.create(len(data), HTTP_UPLOAD_CONCAT="partial")
        assert created.status_code == 201, created.content
        assert t.patch(created["Location"], data, 0).status_code == 204
        urls.append(created["Location"])
    calls.clear()
    final = t.create(None, HTTP_UPLOAD_CONCAT="final;" + " ".join(urls))
    assert final.status_code == 201, final.content
    assert calls.count("UploadPartCopy") == 2 and calls.count("UploadPart") == 0
    assert t.offset(final["Location"]) == sum(map(len, datas))
    assert [c.content for c in completions] == [b"".join(datas)]
    assert read(s3_settings, upload_id_of(final["Location"])) == b"".join(datas)
