"""A data store written outside tusbridge, named by TUSBRIDGE_DATA_STORE, serves both protocols.

``tests.support.part_files_store.PartFilesDataStore`` keeps every write as a part file
of its own and offers no local path, no record copies and no concatenation.
Nothing else is configured: the service, tus and the legacy protocol must use
it through the data store interface alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.files import File
from django.test import Client

from tests.support.data import md5, payload, upload_id_of
from tests.support.legacy import complete, post_chunk
from tests.support.part_files_store import PartFilesDataStore
from tests.support.tus import OFFSET_CT, TUS_VERSION
from tusbridge.service import get_service
from tusbridge.signals import upload_completed


@pytest.fixture(autouse=True)
def part_files(settings: Any, tmp_path: Path) -> Path:
    directory = tmp_path / "parts"
    settings.TUSBRIDGE_DATA_STORE = "tests.support.part_files_store.PartFilesDataStore"
    settings.TEST_PART_FILES_DIR = str(directory)
    return directory


@pytest.fixture
def completions() -> Iterator[list[bytes]]:
    received: list[bytes] = []

    def receiver(sender: object, upload: object, file: File, **kwargs: object) -> None:
        received.append(file.read())

    upload_completed.connect(receiver, dispatch_uid="part-files-test")
    yield received
    upload_completed.disconnect(dispatch_uid="part-files-test")


def _tus(client: Client, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
    meta = {"HTTP_TUS_RESUMABLE": TUS_VERSION, **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}}
    return client.generic(method, path, body, content_type=OFFSET_CT if body else "", **meta)


def test_the_setting_selects_the_store(part_files: Path) -> None:
    store = get_service().data
    assert isinstance(store, PartFilesDataStore) and store.directory == part_files


def test_a_tus_upload_in_three_patches(client_logged_in: Client, part_files: Path, completions: list[bytes]) -> None:
    data = payload(300_000, seed=3)
    created = _tus(client_logged_in, "POST", "/files/", **{"Upload-Length": str(len(data))})
    assert created.status_code == 201
    url = created["Location"]
    upload_id = upload_id_of(url)
    for start in (0, 100_000, 200_000):
        reply = _tus(client_logged_in, "PATCH", url, data[start : start + 100_000], **{"Upload-Offset": str(start)})
        assert reply.status_code == 204, reply.content
        assert reply["Upload-Offset"] == str(start + 100_000)
        assert _tus(client_logged_in, "HEAD", url)["Upload-Offset"] == str(start + 100_000)
    assert PartFilesDataStore(str(part_files)).part_count(upload_id) == 3  # every write a part of its own
    assert completions == [data]
    # The store offers no concatenation, so none is advertised; termination it does offer.
    extensions = _tus(client_logged_in, "OPTIONS", "/files/")["Tus-Extension"].split(",")
    assert "termination" in extensions and "concatenation" not in extensions


def test_a_refused_patch_leaves_the_store_as_it_was(client_logged_in: Client, part_files: Path) -> None:
    data = payload(10_000, seed=4)
    url = _tus(client_logged_in, "POST", "/files/", **{"Upload-Length": str(len(data))})["Location"]
    assert _tus(client_logged_in, "PATCH", url, data[:4_000], **{"Upload-Offset": "0"}).status_code == 204
    checksum = {"Upload-Checksum": "sha1 " + "A" * 27 + "="}
    refused = _tus(client_logged_in, "PATCH", url, data[4_000:], **{"Upload-Offset": "4000"}, **checksum)
    assert refused.status_code == 460
    store = PartFilesDataStore(str(part_files))
    assert store.size(upload_id_of(url)) == 4_000
    assert store.open(upload_id_of(url)).read() == data[:4_000]


def test_termination_removes_the_data(client_logged_in: Client, part_files: Path) -> None:
    url = _tus(client_logged_in, "POST", "/files/", **{"Upload-Length": "10"})["Location"]
    assert _tus(client_logged_in, "PATCH", url, b"12345", **{"Upload-Offset": "0"}).status_code == 204
    assert _tus(client_logged_in, "DELETE", url).status_code == 204
    assert PartFilesDataStore(str(part_files)).size(upload_id_of(url)) is None


def test_a_legacy_upload_with_md5_completion(
    client_logged_in: Client, part_files: Path, completions: list[bytes]
) -> None:
    data = payload(250_000, seed=5)
    first = post_chunk(client_logged_in, data[:100_000], url="/files/", start=0, total=len(data))
    assert first.status_code == 200, first.content
    upload_id = first.json()["upload_id"]
    for start in (100_000, 200_000):
        chunk = data[start : start + 100_000]
        reply = post_chunk(client_logged_in, chunk, url="/files/", start=start, total=len(data), upload_id=upload_id)
        assert reply.status_code == 200, reply.content
        assert reply.json()["offset"] == start + len(chunk)
    assert PartFilesDataStore(str(part_files)).open(upload_id).read() == data
    assert complete(client_logged_in, upload_id, md5(b"wrong"), url="/files/complete/").status_code == 400
    done = complete(client_logged_in, upload_id, md5(data), url="/files/complete/")
    assert done.status_code == 200, done.content
    assert completions == [data]


def test_a_legacy_upload_begun_and_finished_over_tus(client_logged_in: Client, part_files: Path) -> None:
    data = payload(60_000, seed=6)
    first = post_chunk(client_logged_in, data[:20_000], url="/files/", start=0, total=len(data))
    upload_id = first.json()["upload_id"]
    url = f"/files/{upload_id}"
    assert _tus(client_logged_in, "HEAD", url)["Upload-Offset"] == "20000"
    assert _tus(client_logged_in, "PATCH", url, data[20_000:], **{"Upload-Offset": "20000"}).status_code == 204
    assert PartFilesDataStore(str(part_files)).open(upload_id).read() == data
