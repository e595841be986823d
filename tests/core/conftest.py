"""Fixtures of the core tests (the shared ones are in ``tests/conftest.py``): a Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import RedisClusterGroup
from tests.support.servers import find_redis_server


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    """Three redis-server processes as one Redis Cluster, for the module's tests."""
    binary = find_redis_server()
    assert binary is not None
    group = RedisClusterGroup(binary, Path(tmp_path_factory.mktemp("cluster")))
    group.start()
    try:
        yield group
    finally:
        group.stop()
