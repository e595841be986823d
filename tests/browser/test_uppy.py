"""Uppy (Dashboard + tus plugin) in headless Chromium against the example project under gunicorn.

Files go in through the Dashboard's hidden file input, as a person's choice
would, and the "Upload" button of its status bar starts them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import expect

from tests.support.data import sha256
from tests.support.example_site import (
    ExampleServer,
    finished_rows,
    make_file,
    save_screenshot,
    tus_offset,
    wait_for_finished_row,
    wait_until,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request, Route

pytestmark = pytest.mark.live

FILE_INPUT = "input.uppy-Dashboard-input:not([webkitdirectory])"
UPLOAD_BUTTON = ".uppy-StatusBar-actionBtn--upload"


def uppy_events(page: Page, event: str) -> list[dict[str, str]]:
    return [e for e in page.evaluate("window.uppyEvents") if e["event"] == event]


def test_uppy_uploads_several_files(demo_page: Page, example_server: ExampleServer, tmp_path: Path) -> None:
    page = demo_page
    files = {
        "uppy-3mib.bin": make_file(tmp_path, "uppy-3mib.bin", 3 * 1024 * 1024 + 17),
        "uppy-small.txt": make_file(tmp_path, "uppy-small.txt", 123_457),
    }
    page.goto("/uppy/")
    page.set_input_files(FILE_INPUT, [str(path) for path, _ in files.values()])
    page.click(UPLOAD_BUTTON)

    wait_until(page, lambda: uppy_events(page, "complete"), what="Uppy's complete event")
    successes = {e["name"]: e["url"] for e in uppy_events(page, "upload-success")}
    assert set(successes) == set(files)
    assert not uppy_events(page, "upload-error")
    page.wait_for_selector(".uppy-StatusBar.is-complete")

    for name, (_path, data) in files.items():
        row = wait_for_finished_row(page, name)
        assert row["sha256"] == sha256(data), f"{name}: the server's sha256 differs from the file's"
        assert int(row["size"]) == len(data)
        assert (row["protocol"], row["finishedWith"]) == ("tus", "tus")
        # The row belongs to the upload Uppy made, and the bytes on disk are the file's.
        assert successes[name].endswith("/files/" + row["uploadId"])
        assert example_server.stored_bytes(row["uploadId"]) == data
    assert page.js_errors == []  # type: ignore[attr-defined]


def test_uppy_resumes_after_reload(
    demo_page: Page, example_server: ExampleServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Reload at about 30 %, add the same file again: Uppy continues the same upload from the server's offset."""
    page = demo_page
    size = 40 * 1024 * 1024
    chunk = 1024 * 1024
    path, data = make_file(tmp_path, "uppy-resume-40mib.bin", size)

    # Hold back the first PATCH that starts at or beyond 30 %: the upload stops
    # there, and the reload below cuts it off, as a closed tab would.
    hold_from = int(size * 0.3)
    holding = True
    held: list[Route] = []

    def throttle(route: Route) -> None:
        req = route.request
        if holding and req.method == "PATCH" and int(req.headers.get("upload-offset", "0")) >= hold_from:
            held.append(route)  # never answered: the request stays open until the page goes
            return
        route.continue_()

    page.route("**/files/**", throttle)
    page.goto(f"/uppy/?chunk={chunk}")
    assert page.get_attribute("#chunk-size", "data-bytes") == str(chunk)
    page.set_input_files(FILE_INPUT, str(path))
    page.click(UPLOAD_BUTTON)
    wait_until(page, lambda: held, what="a PATCH at 30 %")

    upload_url = held[0].request.url
    held_offset = int(held[0].request.headers["upload-offset"])
    server_offset = tus_offset(page, example_server, upload_url)
    assert 0.3 * size <= server_offset == held_offset < size
    # The URL is in localStorage for the next page load.
    assert any(upload_url in value for value in page.evaluate("Object.values(localStorage)"))
    # The Dashboard's progress bar stands at 30 % (Uppy refreshes its total at most twice a second).
    page.wait_for_function("window.uppy.getState().totalProgress >= 30")
    expect(page.locator(".uppy-StatusBar-statusPrimary")).to_contain_text(re.compile(r"Uploading: 3\d%"))
    save_screenshot(page, request, "before-reload")

    holding = False
    after_reload: list[Request] = []
    page.on("request", lambda req: after_reload.append(req) if "/files/" in req.url else None)
    page.reload()

    # The page lists the unfinished upload with the offset the server reports.
    item = page.wait_for_selector("#unfinished li")
    assert item.get_attribute("data-upload-url") == upload_url
    assert int(item.get_attribute("data-offset") or -1) == server_offset
    save_screenshot(page, request, "after-reload")

    page.set_input_files(FILE_INPUT, str(path))
    page.click(UPLOAD_BUTTON)
    row = wait_for_finished_row(page, path.name)
    wait_until(page, lambda: uppy_events(page, "complete"), what="Uppy's complete event")
    page.wait_for_selector(".uppy-StatusBar.is-complete")

    assert row["sha256"] == sha256(data)
    assert upload_url.endswith("/files/" + row["uploadId"]), "a new upload was made instead of resuming"
    assert example_server.stored_bytes(row["uploadId"]) == data
    assert [e["url"] for e in uppy_events(page, "upload-success")] == [upload_url]

    methods = [req.method for req in after_reload]
    assert "POST" not in methods, "Uppy created a new upload after the reload"
    patches = [req for req in after_reload if req.method == "PATCH"]
    assert patches and all(req.url == upload_url for req in patches)
    offsets = [int(req.headers["upload-offset"]) for req in patches]
    assert offsets[0] == server_offset > 0
    assert offsets == sorted(offsets)
    # What went over the wire after the reload is the rest of the file only.
    sent_after_reload = sum(req.sizes()["requestBodySize"] for req in patches)
    assert sent_after_reload == size - server_offset < size
    assert page.js_errors == []  # type: ignore[attr-defined]
    assert finished_rows(page)[0]["name"] == path.name  # newest first
    # Done: the URL is forgotten (removeFingerprintOnSuccess), so the same file again is a new upload.
    page.wait_for_selector("#unfinished-section", state="hidden")
    assert not any(upload_url in value for value in page.evaluate("Object.values(localStorage)"))
