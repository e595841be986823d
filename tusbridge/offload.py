"""Blocking work started from an event loop, on a bounded pool of threads.

Under an ASGI server an upload in flight is a coroutine waiting for its next
piece of body; the calls that block (Redis, the data store) run here, so the
number of threads stays TUSBRIDGE_ASYNC_THREADS however many uploads wait.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import conf

T = TypeVar("T")

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The pool of this process at the configured size (threads do not survive a fork)."""
    key = (os.getpid(), int(conf.get("ASYNC_THREADS")))
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix="tusbridge")
        return pool


async def run_blocking(call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` on the pool; a cancelled caller does not stop a call that has begun."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(call, *args, **kwargs))
