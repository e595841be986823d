"""System checks for the TUSBRIDGE_* settings (``manage.py check``)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from tests.support.servers import free_port
from tusbridge.checks import check_settings

pytestmark = pytest.mark.real_stores  # the Redis and filesystem stores' own checks


def ids(messages: list[Any]) -> set[str]:
    return {m.id for m in messages}


def tusbridge_messages(messages: list[Any]) -> list[Any]:
    return [m for m in messages if str(m.id).startswith("tusbridge.")]


@pytest.fixture
def eviction_policy(redis_server: Any) -> Iterator[redis.Redis]:
    """A client on the test Redis; its maxmemory-policy is restored afterwards."""
    client = redis_server.client(decode_responses=True)
    original = client.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        yield client
    finally:
        client.config_set("maxmemory-policy", original)
        client.close()


def test_the_test_settings_pass(eviction_policy: redis.Redis) -> None:
    """The baseline: with a reachable, non-evicting Redis and a writable directory nothing is reported."""
    eviction_policy.config_set("maxmemory-policy", "noeviction")
    assert tusbridge_messages(check_settings()) == []
    out, err = io.StringIO(), io.StringIO()
    call_command("check", stdout=out, stderr=err)
    assert "tusbridge." not in out.getvalue() + err.getvalue()


@pytest.mark.parametrize("url", ["http://x", "localhost:6379", "redis//127.0.0.1"])
def test_a_malformed_redis_url_is_an_error(settings: Any, url: str) -> None:
    settings.TUSBRIDGE_REDIS_URL = url
    messages = tusbridge_messages(check_settings())
    errors_ = [m for m in messages if m.id == "tusbridge.E001"]
    assert len(errors_) == 1
    assert isinstance(errors_[0], Error)
    with pytest.raises(SystemCheckError, match="tusbridge.E001"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_an_upload_dir_under_a_regular_file_is_an_error(settings: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.TUSBRIDGE_UPLOAD_DIR = str(blocker / "uploads")
    messages = [m for m in check_settings() if m.id == "tusbridge.E002"]
    assert len(messages) == 1
    assert isinstance(messages[0], Error)
    with pytest.raises(SystemCheckError, match="tusbridge.E002"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_an_upload_dir_that_does_not_exist_yet_is_fine(settings: Any, tmp_path: Path) -> None:
    settings.TUSBRIDGE_UPLOAD_DIR = str(tmp_path / "new" / "deeper")
    assert "tusbridge.E002" not in ids(check_settings())


def test_an_unreachable_redis_is_a_warning(settings: Any) -> None:
    settings.TUSBRIDGE_REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    messages = [m for m in check_settings() if m.id == "tusbridge.W001"]
    assert len(messages) == 1
    assert isinstance(messages[0], Warning)
    assert not isinstance(messages[0], Error)
    # A warning does not stop manage.py check, but it is shown.
    err = io.StringIO()
    call_command("check", stdout=io.StringIO(), stderr=err)
    assert "tusbridge.W001" in err.getvalue()


def test_an_evicting_redis_is_a_warning(eviction_policy: redis.Redis) -> None:
    eviction_policy.config_set("maxmemory-policy", "allkeys-lru")
    messages = [m for m in check_settings() if m.id == "tusbridge.W002"]
    assert len(messages) == 1
    assert isinstance(messages[0], Warning)
    assert "allkeys-lru" in messages[0].msg
    err = io.StringIO()
    call_command("check", stdout=io.StringIO(), stderr=err)
    assert "tusbridge.W002" in err.getvalue()


@pytest.mark.parametrize("policy", ["allkeys-lfu", "allkeys-random"])
def test_every_allkeys_policy_is_a_warning(eviction_policy: redis.Redis, policy: str) -> None:
    eviction_policy.config_set("maxmemory-policy", policy)
    assert "tusbridge.W002" in ids(check_settings())


def test_noeviction_is_fine(eviction_policy: redis.Redis) -> None:
    eviction_policy.config_set("maxmemory-policy", "noeviction")
    assert "tusbridge.W002" not in ids(check_settings())


@pytest.mark.parametrize("value", [-0.001, "0.002", True, None])
def test_a_keepalive_linger_out_of_range_is_an_error(settings: Any, value: Any) -> None:
    settings.TUSBRIDGE_KEEPALIVE_LINGER = value
    assert "tusbridge.E010" in ids(check_settings())


@pytest.mark.parametrize("value", [0, 0.002, 60])
def test_a_non_negative_keepalive_linger_is_fine(settings: Any, value: Any) -> None:
    settings.TUSBRIDGE_KEEPALIVE_LINGER = value
    assert "tusbridge.E010" not in ids(check_settings())
