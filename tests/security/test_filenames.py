"""Hostile file names never leave the data directory or reach a storage path unsanitised.

A name comes from the client twice: as tus ``filename`` metadata and as the
file name of the legacy multipart part. Data files are named by upload id, so
while an upload runs the name touches no path at all; when it completes and
is handed to a Storage (TUSBRIDGE_STORAGE = a FileSystemStorage in a tmp
dir), the stored name must stay under the storage root and hold no ``..``
component, no NUL and no control or bidi-override characters, and nothing
may be written anywhere else.

The legacy bodies are written by hand: Django's test client would take the
basename of the name itself before sending it.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage
from django.test import Client

from tests.support.data import md5, payload, upload_id_of
from tests.support.legacy import FILES, FILES_COMPLETE, complete
from tests.support.tus import Tus, tus, upload_dir
from tusbridge.record import UploadRecord
from tusbridge.records.redis import RedisRecordStore

pytestmark = pytest.mark.django_db

HOSTILE = {
    "parent-dir": "../escape.txt",
    "parent-dirs": "../../../../../../../../tmp/tusbridge-escape.txt",
    "parent-dirs-backslash": "..\\..\\..\\windows\\win.ini",
    "absolute": "/tmp/tusbridge-absolute-escape.txt",
    "nul": "evil\x00.txt",
    "nul-then-dirs": "a.txt\x00/../../../../etc/passwd",
    "controls": "bell\x07esc\x1b[31mred\r\nX-Injected: 1\t.txt",
    "very-long": "x" * 5000 + ".txt",
    "very-long-multibyte": "ü" * 3000 + ".pdf",
    "rtl-override": "invoice\u202efdp.exe",
    "fullwidth-solidus": "..\uff0f..\uff0f..\uff0fetc\uff0fpasswd",
    "nfd": "cafe\u0301\u0301.txt",
    "only-dots": "....",
    "dots-and-slashes": "/../..//./",
    "zero-width": "a\u200bb\u2060c.txt",
}
BAD_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn")
# Where the absolute and deep "../" names would land if they escaped (never real system files).
ESCAPES = (Path("/tmp/tusbridge-escape.txt"), Path("/tmp/tusbridge-absolute-escape.txt"))


@pytest.fixture(autouse=True)
def _no_stale_escapes() -> None:
    for path in ESCAPES:
        path.unlink(missing_ok=True)


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> FileSystemStorage:
    root = tmp_path / "storage"
    root.mkdir()
    settings.TUSBRIDGE_STORAGE = FileSystemStorage(location=str(root))
    return settings.TUSBRIDGE_STORAGE


def stored_name(upload_id: str) -> str:
    import redis
    from django.conf import settings as django_settings

    client = redis.Redis.from_url(django_settings.TUSBRIDGE_REDIS_URL)
    try:
        record = RedisRecordStore(client, django_settings.TUSBRIDGE_KEY_PREFIX).get(upload_id)
    finally:
        client.close()
    assert isinstance(record, UploadRecord)
    return record.stored_name


def assert_safely_stored(storage: FileSystemStorage, tmp_path: Path, upload_id: str, content: bytes) -> None:
    name = stored_name(upload_id)
    assert name, "the finished upload was not handed over to the storage"
    root = os.path.realpath(storage.location)
    path = os.path.realpath(storage.path(name))
    assert os.path.commonpath([root, path]) == root, f"{name!r} leaves the storage root"
    assert not os.path.isabs(name)
    assert ".." not in Path(name).parts, name
    assert "\x00" not in name
    bad = [ch for ch in name if unicodedata.category(ch) in BAD_CATEGORIES]
    assert not bad, f"stored name {name!r} holds {[unicodedata.name(c, hex(ord(c))) for c in bad]}"
    assert all(len(part.encode()) <= 255 for part in Path(name).parts), "a path component longer than 255 bytes"
    assert Path(path).read_bytes() == content
    # Nothing was written anywhere else: only the stored file below the storage root, and the
    # upload directory holds no data file any more (the bytes moved on).
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [str(Path(path).relative_to(tmp_path.resolve()))], written
    assert not any(path.exists() for path in ESCAPES)


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.real_stores  # looks at the files in the upload directory
def test_tus_filename_metadata(client_logged_in: Client, storage: FileSystemStorage, tmp_path: Path, name: str) -> None:
    t: Tus = tus(client_logged_in)
    encoded = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
    url = t.new_upload(11, metadata=f"filename {encoded},name {encoded}")
    upload_id = upload_id_of(url)
    # While it runs, the only files are named by the upload id, in the upload directory.
    assert sorted(p.name for p in upload_dir().iterdir()) == sorted([upload_id, f"{upload_id}.info"])
    assert t.head(url)["Upload-Metadata"] == f"filename {encoded},name {encoded}"
    assert t.patch(url, b"hello world", 0).status_code == 204
    assert_safely_stored(storage, tmp_path, upload_id, b"hello world")


def multipart_chunk(client: Client, filename: str, data: bytes, **extra: Any) -> Any:
    boundary = "XxBoundaryxX"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename.encode("utf-8", "surrogatepass")
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return client.post(FILES, body, content_type=f"multipart/form-data; boundary={boundary}", **extra)


LEGACY_HOSTILE = {k: v for k, v in HOSTILE.items() if "\r" not in v and "\n" not in v}


@pytest.mark.parametrize("name", list(LEGACY_HOSTILE.values()), ids=list(LEGACY_HOSTILE))
@pytest.mark.real_stores  # looks at the files in the upload directory
def test_legacy_multipart_filename(
    client_logged_in: Client, storage: FileSystemStorage, tmp_path: Path, name: str
) -> None:
    data = payload(5000)
    response = multipart_chunk(client_logged_in, name, data, HTTP_CONTENT_RANGE=f"bytes 0-4999/{len(data)}")
    if response.status_code != 200:
        # Django refuses some names itself before tusbridge sees the part: ".." sanitises to no
        # name (the part is dropped: "No chunk file was submitted"), "/../..//./" to an empty one
        # (SuspiciousFileOperation), a part header over 1 KiB is no part header. Refused, and
        # nothing was written.
        assert 400 <= response.status_code < 500, response.status_code
        assert list(upload_dir().iterdir()) == []
        return
    assert response.status_code == 200, response.content
    upload_id = response.json()["upload_id"]
    assert sorted(p.name for p in upload_dir().iterdir()) == sorted([upload_id, f"{upload_id}.info"])
    done = complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE)
    assert done.status_code == 200, done.content
    assert_safely_stored(storage, tmp_path, upload_id, data)


class RecordingStorage(FileSystemStorage):
    """CHUNKED_UPLOAD_STORAGE_CLASS for the test below: remembers the names it is asked to save."""

    names: list[str] = []

    def __init__(self) -> None:
        super().__init__(location=os.environ["TUSBRIDGE_TEST_LEGACY_STORAGE_DIR"])

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        RecordingStorage.names.append(str(name))
        return super().save(name, content, max_length)


def test_legacy_storage_settings_get_a_sanitised_name(
    client_logged_in: Client, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CHUNKED_UPLOAD_TO as a directory pattern, the file name joined to it is sanitised too.

    (django-chunked-upload never put the client's name into the path: its
    FileField ran it through Storage.get_valid_name.) Each upload is begun with
    tus, whose metadata can carry any name, and finished with legacy chunks and
    the legacy completion. One test for all the names, so that one defect is
    one failure; the message lists every name that reached the storage.
    """
    from tests.support.legacy import post_chunk

    root = tmp_path / "legacy-storage"
    root.mkdir()
    monkeypatch.setenv("TUSBRIDGE_TEST_LEGACY_STORAGE_DIR", str(root))
    settings.CHUNKED_UPLOAD_STORAGE_CLASS = f"{__name__}.RecordingStorage"
    settings.CHUNKED_UPLOAD_TO = "chunked/%Y"
    t = tus(client_logged_in)
    data = payload(64)
    unsafe: list[str] = []
    for name in HOSTILE.values():
        if os.path.basename(name) in ("", ".", ".."):
            continue  # no usable name at all: see test_legacy_completion_of_a_tus_upload_with_any_name
        RecordingStorage.names = []
        encoded = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
        url = t.new_upload(len(data), metadata=f"filename {encoded}")
        upload_id = upload_id_of(url)
        assert t.patch(url, data[:10], 0).status_code == 204
        rest = post_chunk(client_logged_in, data[10:], url=FILES, start=10, total=len(data), upload_id=upload_id)
        assert rest.status_code == 200, rest.content
        done = complete(client_logged_in, upload_id, md5(data), url=FILES_COMPLETE)
        assert done.status_code == 200, done.content
        assert RecordingStorage.names, "the completion did not hand the file to CHUNKED_UPLOAD_STORAGE_CLASS"
        for asked in RecordingStorage.names:
            if (
                os.path.isabs(asked)
                or ".." in Path(asked).parts
                or any(unicodedata.category(ch) in BAD_CATEGORIES for ch in asked)
                or any(len(part.encode()) > 255 for part in Path(asked).parts)
            ):
                unsafe.append(asked if len(asked) < 120 else asked[:60] + "..." + asked[-20:])
    assert not unsafe, f"CHUNKED_UPLOAD_STORAGE_CLASS was asked to save unsanitised names: {unsafe}"


def test_legacy_completion_of_a_tus_upload_with_any_name(client_logged_in: Client) -> None:
    """An upload begun with tus (any metadata name) and completed by a legacy page completes normally.

    The completion must answer 200 and hand ``on_completion`` its file, whatever
    the name: the upload is marked complete before the hook runs, so a failure
    there can never be retried (a second completion is "already complete").
    """
    from tests.support.legacy import post_chunk

    t = tus(client_logged_in)
    data = payload(64)
    failed: dict[str, Any] = {}
    sender = Client(raise_request_exception=False)
    sender.cookies = client_logged_in.cookies
    for label, name in {**HOSTILE, "trailing-slash": "report.pdf/", "slash": "/", "dot-dot": ".."}.items():
        encoded = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
        url = t.new_upload(len(data), metadata=f"filename {encoded}")
        upload_id = upload_id_of(url)
        assert t.patch(url, data[:10], 0).status_code == 204
        rest = post_chunk(client_logged_in, data[10:], url=FILES, start=10, total=len(data), upload_id=upload_id)
        assert rest.status_code == 200, rest.content
        done = sender.post(FILES_COMPLETE, {"upload_id": upload_id, "md5": md5(data)})
        if done.status_code != 200:
            failed[label] = (done.status_code, done["Content-Type"])
    assert not failed, f"legacy completion failed after marking the upload complete: {failed}"
