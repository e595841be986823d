"""Fixtures of the fault-injection tests (live gunicorn; helpers in ``tests/support/faults.py``)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from tests.support.servers import RedisServer


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
