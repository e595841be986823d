"""The example project (``example/``) served by real gunicorn, and headless Chromium to drive it.

Used by the browser tests (``tests/browser/``); their fixtures (``example_server``,
``browser``, ``demo_page``) are in ``tests/browser/conftest.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.support.node import npm_ci
from tests.support.servers import (
    LIVE_SERVERS,
    ROOT,
    RedisServer,
    children_of,
    copy_artifact,
    run_gunicorn,
    tail,
    terminate,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

EXAMPLE_DIR = ROOT / "example"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = ROOT / "test-artifacts" / "screenshots"
DEMO_PASSWORD = "demo-" + uuid.uuid4().hex[:12]


# --- npm packages ----------------------------------------------------------------


def ensure_node_modules() -> None:
    """Run ``npm ci`` in example/ unless node_modules matches package-lock.json already."""
    lock = EXAMPLE_DIR / "package-lock.json"
    installed = EXAMPLE_DIR / "node_modules" / ".package-lock.json"  # written by npm ci/install
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is needed to install the example's JavaScript packages (npm ci in example/); "
            "install Node.js 20+ with npm.",
            pytrace=False,
        )
    npm_ci(npm, EXAMPLE_DIR)


# --- the example server ----------------------------------------------------------


@dataclass(eq=False)
class ExampleServer:
    url: str
    port: int
    var_dir: Path
    upload_dir: Path
    key_prefix: str
    redis: RedisServer
    log_path: Path
    password: str
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid)

    def stored_bytes(self, upload_id: str) -> bytes:
        """The finished file as tusbridge keeps it (the example sets no TUSBRIDGE_STORAGE)."""
        return (self.upload_dir / upload_id).read_bytes()

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log(self, offset: int = 0) -> str:
        return tail(self.log_path, offset)

    def stop(self) -> None:
        terminate(self.process, 15)
        LIVE_SERVERS.discard(self)  # type: ignore[arg-type]
        copy_artifact(self.log_path, "gunicorn-example.log")


def _example_env(redis_server: RedisServer, base_dir: Path, key_prefix: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TUSBRIDGE_", "DJANGO_", "CHUNKED_UPLOAD_")) and key != "REDIS_URL"
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "example_site.settings",
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": redis_server.url,
            "TUSBRIDGE_KEY_PREFIX": key_prefix,
            "EXAMPLE_VAR_DIR": str(base_dir / "var"),
            "TUSBRIDGE_UPLOAD_DIR": str(base_dir / "uploads"),
            "DEMO_PASSWORD": DEMO_PASSWORD,
        }
    )
    return env


def start_example_server(redis_server: RedisServer, base_dir: Path, workers: int = 2) -> ExampleServer:
    """Bootstrap the example (migrate, demo user) and serve it with gunicorn."""
    key_prefix = f"ex-{uuid.uuid4().hex}"
    env = _example_env(redis_server, base_dir, key_prefix)
    boot = subprocess.run(
        [sys.executable, str(EXAMPLE_DIR / "bootstrap.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if boot.returncode != 0 or f"demo / {DEMO_PASSWORD}" not in boot.stdout:
        pytest.fail(f"example/bootstrap.py failed:\n{boot.stdout}\n{boot.stderr}", pytrace=False)

    log_path = base_dir / "gunicorn-example.log"
    process, port = run_gunicorn(
        "example_site.wsgi:application",
        chdir=EXAMPLE_DIR,
        workers=workers,
        worker_args=["--worker-class", "sync"],
        env=env,
        log_path=log_path,
        probe="/accounts/login/",
        timeout=30,
    )
    server = ExampleServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        var_dir=base_dir / "var",
        upload_dir=base_dir / "uploads",
        key_prefix=key_prefix,
        redis=redis_server,
        log_path=log_path,
        password=DEMO_PASSWORD,
        process=process,
    )
    LIVE_SERVERS.add(server)  # type: ignore[arg-type]  (failing tests show its log)
    return server


# --- the browser -----------------------------------------------------------------


def screenshot_path(request: pytest.FixtureRequest, suffix: str = "") -> Path:
    """test-artifacts/screenshots/<test name>[-suffix]-django<version>.png (nox runs one per Django)."""
    import django

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name) + (f"-{suffix}" if suffix else "")
    return SCREENSHOT_DIR / f"{name}-django{'.'.join(map(str, django.VERSION[:2]))}.png"


def save_screenshot(page: Page, request: pytest.FixtureRequest, suffix: str = "") -> Path:
    """A full-page screenshot of ``page`` now; prints where it went."""
    path = screenshot_path(request, suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")  # no half-way progress bars
    print(f"\nscreenshot: {path}")
    return path


# --- helpers ----------------------------------------------------------------------


def wait_until(page: Page, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (bounded), letting Playwright dispatch events in between."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(50)


def make_file(directory: Path, name: str, size: int) -> tuple[Path, bytes]:
    """A file of ``size`` random bytes; returns its path and content."""
    data = os.urandom(size)
    path = directory / name
    path.write_bytes(data)
    return path, data


def finished_rows(page: Page) -> list[dict[str, str]]:
    """The rows of the page's "Finished files" table (their data attributes)."""
    return page.eval_on_selector_all("#finished tbody tr[data-upload-id]", "rows => rows.map(r => ({...r.dataset}))")


def wait_for_finished_row(page: Page, name: str, timeout: float = 60.0) -> dict[str, str]:
    """Wait until the finished table shows a file called ``name``; return its row."""
    page.wait_for_selector(f'#finished tbody tr[data-name="{name}"]', timeout=timeout * 1000)
    return next(row for row in finished_rows(page) if row["name"] == name)


def session_for(page: Page, server: ExampleServer) -> requests.Session:
    """A requests session with the browser's cookies (same user, same session)."""
    session = requests.Session()
    for cookie in page.context.cookies(server.url):
        session.cookies.set(cookie["name"], cookie["value"])
    return session


def tus_offset(page: Page, server: ExampleServer, upload_url: str) -> int:
    """The offset tusbridge reports for ``upload_url`` (HEAD, as the browser's user)."""
    response = session_for(page, server).head(upload_url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert response.status_code == 200, (response.status_code, response.headers)
    return int(response.headers["Upload-Offset"])
