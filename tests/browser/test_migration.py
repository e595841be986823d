"""The migration page in headless Chromium: begun by jQuery-File-Upload, finished by tus-js-client.

One upload: the legacy chunks create it, tus-js-client continues it at
``/files/<upload_id>`` (HEAD, then PATCH from the legacy offset) and the
finished-files list shows it as ``legacy -> tus`` with the file's sha256.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.data import sha256
from tests.support.example_site import ExampleServer, make_file, wait_for_finished_row

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

pytestmark = pytest.mark.live


def test_legacy_start_tus_finish(demo_page: Page, example_server: ExampleServer, tmp_path: Path) -> None:
    page = demo_page
    size = 1_234_567
    path, data = make_file(tmp_path, "migrated.bin", size)
    requests_seen: list[Request] = []
    page.on(
        "request",
        lambda req: requests_seen.append(req) if "/api/chunked_upload" in req.url or "/files/" in req.url else None,
    )
    page.goto("/migrate/?legacy_chunks=3&tus_chunk=262144")
    page.set_input_files("#migrate_upload", str(path))
    page.wait_for_function("window.migration && (window.migration.completed || window.migration.error)")
    state = page.evaluate("window.migration")
    assert state["error"] is None, state
    upload_id = state["uploadId"]
    upload_url = f"{example_server.url}/files/{upload_id}"

    legacy = [req for req in requests_seen if "/api/chunked_upload" in req.url]
    tus = [req for req in requests_seen if "/files/" in req.url]
    assert [req.headers.get("content-range") for req in legacy] == [
        f"bytes 0-99999/{size}",
        f"bytes 100000-199999/{size}",
        f"bytes 200000-299999/{size}",
    ]
    assert not any(req.url.endswith("/api/chunked_upload_complete/") for req in legacy)
    # tus-js-client continues the same upload: no creation, HEAD for the offset, PATCH from 300000.
    assert [req.method for req in tus][:2] == ["HEAD", "PATCH"]
    assert "POST" not in [req.method for req in tus]
    assert all(req.url == upload_url for req in tus)
    patch_offsets = [int(req.headers["upload-offset"]) for req in tus if req.method == "PATCH"]
    assert patch_offsets == list(range(300_000, size, 262_144))
    assert state["legacyBytes"] == state["tusStartOffset"] == 300_000

    row = wait_for_finished_row(page, path.name)
    assert row["uploadId"] == upload_id
    assert (row["protocol"], row["finishedWith"]) == ("legacy", "tus")
    assert row["sha256"] == sha256(data)
    assert int(row["size"]) == size
    assert example_server.stored_bytes(upload_id) == data
    assert page.inner_text("#finished tr[data-upload-id] td.protocol") == "legacy \u2192 tus"
    page.wait_for_selector("#status.ok")
    assert page.js_errors == []  # type: ignore[attr-defined]
