"""Fixtures of the browser tests: the example project under gunicorn, and headless Chromium.

``example_server`` (session)
    An :class:`ExampleServer`: ``example_site.wsgi`` under gunicorn with 2 sync
    workers on a free port, the suite's private Redis (own key prefix), its own
    sqlite database, secret key and upload directory, and the ``demo`` user
    with a known password (set up by ``example/bootstrap.py``, as ``make demo``
    does). Before it starts, ``npm ci`` installs the example's JavaScript
    packages into ``example/node_modules`` if they are missing or older than
    ``example/package-lock.json``.
``browser`` (session)
    Debian's ``/usr/bin/chromium`` driven by Playwright. Tests that use it are
    skipped, with the reason printed, only when that binary is missing; no
    browser is ever downloaded.
``demo_page`` (function)
    A fresh browser context (empty localStorage) logged in as ``demo``. At the
    end of the test a full-page screenshot of it is saved under
    ``test-artifacts/screenshots/`` and its path printed.

The classes and helpers behind them are in ``tests/support/example_site.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.example_site import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ExampleServer,
    ensure_node_modules,
    save_screenshot,
    start_example_server,
)
from tests.support.servers import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page


@pytest.fixture(scope="session")
def example_server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExampleServer]:
    """The example project under gunicorn (2 workers), with its npm packages installed."""
    ensure_node_modules()
    server = start_example_server(redis_server, tmp_path_factory.mktemp("example"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium; the tests that need it skip only when it is not installed."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium); browser tests skipped"
        print(f"\nSKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def demo_page(browser: Browser, example_server: ExampleServer, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A new context logged in as ``demo``; a full-page screenshot is saved when the test ends."""
    context = browser.new_context(base_url=example_server.url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/accounts/login/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", example_server.password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{example_server.url}/")
    page.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        try:
            save_screenshot(page, request)
        except Exception as exc:  # a crashed page must not hide the test's own failure
            print(f"\nscreenshot failed: {exc}")
        context.close()
