"""Fixtures of the fault-injection tests (live gunicorn; helpers in ``tests/support/faults.py``).

``redis_back``
    The session's Redis, running (and answering) again after the test whatever it did to it.
``aof_redis``
    A Redis of the test's own that keeps an append-only file (``appendfsync
    everysec``) in its own directory, so ``kill()`` and ``start()`` restart it
    from that file on the same port.
``server_factory``
    Callable ``(redis, extra_env=None, *, extra_args=(), workers=2) -> GunicornServer``:
    a live gunicorn on any Redis, with extra gunicorn arguments; all are
    stopped when the test ends.
``tus_js_client``
    ``tests/interop`` (tus-js-client under Node) with its pinned dependencies
    installed by ``npm ci``; skips without node and npm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.node import npm_ci
from tests.support.servers import (
    ROOT,
    GunicornServer,
    RedisServer,
    copy_artifact,
    find_redis_server,
    free_port,
    start_gunicorn,
)


@pytest.fixture
def redis_back(redis_server: RedisServer) -> Iterator[RedisServer]:
    """Whatever a test does to Redis, it runs (and answers) again afterwards."""
    try:
        yield redis_server
    finally:
        if redis_server.process is not None and redis_server.process.poll() is None:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        if not redis_server.running:
            redis_server.start()


@pytest.fixture
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server with an append-only file in a directory of its own."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail("No redis-server binary found (see the redis_server fixture).", pytrace=False)
    directory = tmp_path_factory.mktemp("redis-aof")
    server: RedisServer | None = None
    last_error: Exception | None = None
    for _ in range(3):  # another process may grab the free port before we bind it
        server = RedisServer(binary, directory, free_port(), appendonly=True)
        try:
            server.start()
            break
        except RuntimeError as exc:
            last_error, server = exc, None
    if server is None:
        pytest.fail(str(last_error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
        copy_artifact(server.log_path, f"redis-aof-{server.port}.log")


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., GunicornServer]]:
    """Start gunicorn servers on any Redis, with extra command-line arguments; stopped when the test ends."""
    servers: list[GunicornServer] = []

    def factory(
        redis: RedisServer,
        extra_env: Mapping[str, str] | None = None,
        *,
        extra_args: Sequence[str] = (),
        workers: int = 2,
    ) -> GunicornServer:
        server = start_gunicorn(
            redis, tmp_path_factory.mktemp("gunicorn"), extra_env, workers=workers, extra_args=extra_args
        )
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(servers):
            server.stop()


INTEROP = ROOT / "tests" / "interop"


def _tus_js_client_versions() -> tuple[str, str | None]:
    """(pinned, installed) versions of tus-js-client in tests/interop."""
    pinned = str(json.loads((INTEROP / "package.json").read_text())["dependencies"]["tus-js-client"])
    try:
        manifest = INTEROP / "node_modules" / "tus-js-client" / "package.json"
        return pinned, str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return pinned, None


@pytest.fixture(scope="session")
def tus_js_client() -> Path:
    """tests/interop with its pinned dependencies installed (``npm ci`` when missing or stale)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the tus-js-client tests (install Node.js >= 18)")
    pinned, installed = _tus_js_client_versions()
    if installed != pinned:
        npm_ci(npm, INTEROP)
    assert _tus_js_client_versions()[1] == pinned
    return INTEROP
