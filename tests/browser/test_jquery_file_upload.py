"""jQuery-File-Upload (legacy chunked-upload protocol) in headless Chromium against the example project.

The page is written like django-chunked-upload's demo: chunks of 100 000 bytes
to ``/api/chunked_upload/`` with the CSRF token and the ``upload_id``, the md5
computed by SparkMD5 in the browser and posted to
``/api/chunked_upload_complete/``. These tests check what went over the wire,
what the page reports, and the bytes and sha256 the server ended up with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.data import sha256
from tests.support.example_site import ExampleServer, make_file, wait_for_finished_row

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Response, Route

pytestmark = pytest.mark.live

CHUNK_URL = "**/api/chunked_upload/"
COMPLETE_URL = "**/api/chunked_upload_complete/"


def record(page: Page, chunk_hook: Callable[[Route, int], bool] | None = None) -> dict[str, list[Any]]:
    """Chunks (Content-Range and multipart body), chunk responses and completion requests from now on.

    Chunks are seen through a route (request events carry no multipart body
    with a file part); ``chunk_hook(route, n)`` may handle the n-th chunk
    (1-based) itself and return True, else it goes on to the server.
    """
    seen: dict[str, list[Any]] = {"chunks": [], "completions": [], "responses": []}

    def on_chunk(route: Route) -> None:
        seen["chunks"].append((route.request.headers.get("content-range"), route.request.post_data_buffer or b""))
        if chunk_hook is None or not chunk_hook(route, len(seen["chunks"])):
            route.continue_()

    def on_request(req: Request) -> None:
        if req.url.endswith("/api/chunked_upload_complete/"):
            seen["completions"].append(req)

    def on_response(resp: Response) -> None:
        if resp.url.endswith("/api/chunked_upload/"):
            seen["responses"].append(resp)

    page.route(CHUNK_URL, on_chunk)
    page.on("request", on_request)
    page.on("response", on_response)
    return seen


def upload_and_wait(page: Page, path: Path) -> dict[str, Any]:
    page.set_input_files("#chunked_upload", str(path))
    page.wait_for_function("window.legacyUpload && (window.legacyUpload.completed || window.legacyUpload.error)")
    state = page.evaluate("window.legacyUpload")
    assert state["error"] is None, state
    return state


def check_finished(page: Page, server: ExampleServer, state: dict[str, Any], name: str, data: bytes) -> None:
    """The md5 the browser computed is the file's; the server's sha256 and bytes are the file's."""
    assert state["md5"] == hashlib.md5(data).hexdigest()
    row = wait_for_finished_row(page, name)
    assert row["uploadId"] == state["uploadId"]
    assert row["sha256"] == sha256(data)
    assert int(row["size"]) == len(data)
    assert (row["protocol"], row["finishedWith"]) == ("legacy", "legacy")
    assert server.stored_bytes(row["uploadId"]) == data
    page.wait_for_selector("#status.ok")
    assert page.inner_text("#progress-label").startswith("100%")
    assert page.js_errors == []  # type: ignore[attr-defined]


def file_part(body: bytes) -> bytes:
    """The content of the multipart part named "file" (the last part, as jQuery-File-Upload sends it)."""
    start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
    return body[start : body.rindex(b"\r\n--")]


def completion_fields(req: Request) -> dict[str, str]:
    from urllib.parse import parse_qs

    return {key: values[0] for key, values in parse_qs(req.post_data or "").items()}


def test_chunked_upload_completed_with_browser_md5(
    demo_page: Page, example_server: ExampleServer, tmp_path: Path
) -> None:
    page = demo_page
    path, data = make_file(tmp_path, "legacy-350000.bin", 350_000)
    page.goto("/legacy/")
    seen = record(page)
    state = upload_and_wait(page, path)

    assert [content_range for content_range, _ in seen["chunks"]] == [
        "bytes 0-99999/350000",
        "bytes 100000-199999/350000",
        "bytes 200000-299999/350000",
        "bytes 300000-349999/350000",
    ]
    bodies = [body for _, body in seen["chunks"]]
    assert all(b'name="csrfmiddlewaretoken"' in body for body in bodies)
    assert b'name="upload_id"' not in bodies[0]
    assert all(f'name="upload_id"\r\n\r\n{state["uploadId"]}'.encode() in body for body in bodies[1:])
    # jQuery-File-Upload sends the form fields before the file part (tusbridge streams it in place).
    assert all(body.index(b'name="csrfmiddlewaretoken"') < body.index(b'name="file"') for body in bodies)
    assert b"".join(file_part(body) for body in bodies) == data  # the chunks are the file, in order
    assert [resp.status for resp in seen["responses"]] == [200] * 4

    (completion,) = seen["completions"]
    assert completion_fields(completion) == {
        "csrfmiddlewaretoken": completion_fields(completion)["csrfmiddlewaretoken"],
        "upload_id": state["uploadId"],
        "md5": hashlib.md5(data).hexdigest(),
    }
    assert state["resumedAt"] == []
    check_finished(page, example_server, state, path.name, data)


def test_file_smaller_than_one_chunk(demo_page: Page, example_server: ExampleServer, tmp_path: Path) -> None:
    page = demo_page
    path, data = make_file(tmp_path, "legacy-small.txt", 4_321)
    page.goto("/legacy/")
    seen = record(page)
    state = upload_and_wait(page, path)

    ((content_range, _body),) = seen["chunks"]  # one plain multipart POST, no Content-Range
    assert content_range is None
    assert completion_fields(seen["completions"][0])["md5"] == hashlib.md5(data).hexdigest()
    check_finished(page, example_server, state, path.name, data)


@pytest.mark.parametrize("lost", ["request", "response"])
def test_resume_after_a_failed_chunk(demo_page: Page, example_server: ExampleServer, tmp_path: Path, lost: str) -> None:
    """The 2nd chunk fails once; the page asks the server where it stands and carries on.

    ``request``: the chunk never reaches the server (connection refused), the
    page resends it. ``response``: the server stores the chunk but its answer
    is lost; the resent chunk is answered 400 "Offsets do not match" with the
    server's offset, and the page continues from there.
    """
    page = demo_page
    path, data = make_file(tmp_path, f"legacy-lost-{lost}.bin", 350_000)

    def fail_second_chunk_once(route: Route, n: int) -> bool:
        if n != 2:
            return False
        if lost == "request":
            route.abort("connectionrefused")
        else:
            route.fetch()  # the server gets the chunk and answers ...
            route.abort("connectionreset")  # ... but the browser never hears it
        return True

    page.goto("/legacy/")
    seen = record(page, fail_second_chunk_once)
    state = upload_and_wait(page, path)

    ranges = [content_range for content_range, _ in seen["chunks"]]
    statuses = [resp.status for resp in seen["responses"]]
    if lost == "request":
        assert state["resumedAt"] == [100_000]
        assert ranges == [
            "bytes 0-99999/350000",
            "bytes 100000-199999/350000",  # refused
            "bytes 100000-199999/350000",
            "bytes 200000-299999/350000",
            "bytes 300000-349999/350000",
        ]
        assert statuses == [200, 200, 200, 200]
    else:
        # Resent from where the browser believed it was, told the server's offset, continued from it.
        assert state["resumedAt"] == [100_000, 200_000]
        assert ranges == [
            "bytes 0-99999/350000",
            "bytes 100000-199999/350000",  # stored, answer lost
            "bytes 100000-199999/350000",  # 400 Offsets do not match, offset 200000
            "bytes 200000-299999/350000",
            "bytes 300000-349999/350000",
        ]
        assert statuses == [200, 400, 200, 200]
        assert seen["responses"][1].json() == {"detail": "Offsets do not match", "offset": 200_000}
    assert page.locator("#messages li.error").count() >= 1  # the failure is shown, not hidden
    check_finished(page, example_server, state, path.name, data)
