"""Lua scripts sent straight down a connection, for the calls every request makes.

redis-py's command path does work of its own on every call on top of the
round trip (observability hooks, argument checks, a readiness poll of the
socket when a connection leaves the pool). Taking the upload's lock and reading it,
advancing the offset and reading a settled record run once or twice in every
request, so they skip that path: EVALSHA on an idle connection kept for the
purpose. Anything out of the ordinary (Redis not knowing the script yet, a
broken connection) goes back to redis-py's own call, with its script loading
and retries, so errors look the same either way; a timeout is raised at once,
so a request gives up after one timeout, as with redis-py's call.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.connection import AbstractConnection


class DirectConnections:
    """Idle connections for direct calls, one set per client, shared by all its scripts.

    They are made like the client pool's (same address, timeouts,
    credentials, TLS), and as many exist at most as the pool may hold
    (``max_connections``): a call that finds them all in use waits for one,
    up to the pool's own wait, then fails as the pool does. A connection
    lent to a call that is never finished (a reply nobody asked for) comes
    back to the count when it is garbage collected. A forked child starts
    with none of its parent's.
    """

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        self._make = lambda: pool.connection_class(**pool.connection_kwargs)
        self._limit = int(getattr(pool, "max_connections", 0) or 0) or 2**31
        self._wait = getattr(pool, "timeout", None)
        self._idle: list[AbstractConnection] = []
        self._slots = threading.BoundedSemaphore(min(self._limit, 2**31 - 1))

    def take(self) -> AbstractConnection:
        if not self._slots.acquire(timeout=self._wait):
            raise redis.exceptions.ConnectionError(f"No free Redis connection within {self._wait:g} s")
        try:
            connection = self._idle.pop() if self._idle else self._make()
        except BaseException:
            self._slots.release()
            raise
        # Gives the slot back once, whether the call ends or its connection is dropped unfinished.
        connection._tusbridge_lease = weakref.finalize(connection, self._slots.release)  # type: ignore[attr-defined]
        return connection

    def give_back(self, connection: AbstractConnection) -> None:
        self._idle.append(connection)
        connection._tusbridge_lease()  # type: ignore[attr-defined]

    def discard(self, connection: AbstractConnection) -> None:
        """Close a connection that cannot be trusted any more, and free its slot."""
        try:
            connection.disconnect()
        finally:
            connection._tusbridge_lease()  # type: ignore[attr-defined]

    def forget(self) -> None:
        """Drop, without shutting them down, connections that belong to the parent of a fork."""
        self._idle = []
        self._slots = threading.BoundedSemaphore(min(self._limit, 2**31 - 1))


_by_client: weakref.WeakKeyDictionary[redis.Redis, DirectConnections] = weakref.WeakKeyDictionary()
_by_client_lock = threading.Lock()


def connections_for(client: redis.Redis) -> DirectConnections:
    with _by_client_lock:
        connections = _by_client.get(client)
        if connections is None:
            connections = _by_client[client] = DirectConnections(client)
        return connections


def _after_fork() -> None:
    for connections in list(_by_client.values()):
        connections.forget()


os.register_at_fork(after_in_child=_after_fork)


class DirectScript:
    """A registered script called by EVALSHA on the client's direct connections."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self._script = client.register_script(source)
        # A cluster client has a pool per node: its calls take redis-py's path, which routes them.
        self._connections = connections_for(client) if isinstance(client, redis.Redis) else None

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return self.send(keys, args)()

    def send(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Callable[[], Any]:
        """Send the call now; the returned function waits for the reply (call it once).

        Between the two the caller can work while the call travels and runs.
        """
        if self._connections is None:
            return functools.partial(self._script, keys=keys, args=args)
        conn = self._connections.take()
        try:
            conn.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
        except redis.exceptions.ConnectionError:
            # A connection that went stale while idle: redis-py's own call, with its retries.
            self._connections.discard(conn)
            return functools.partial(self._script, keys=keys, args=args)
        except BaseException:
            self._connections.discard(conn)
            raise
        return functools.partial(self._reply, conn, keys, args)

    def _reply(self, conn: AbstractConnection, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        connections = self._connections
        assert connections is not None
        try:
            reply = conn.read_response()
        except redis.exceptions.NoScriptError:
            # First call since Redis started (or flushed its scripts): the full call loads it.
            connections.give_back(conn)
            return self._script(keys=keys, args=args)
        except redis.exceptions.ConnectionError:
            # Lost mid-reply: the scripts are safe to repeat (see redis.py), so redis-py's
            # own call, with its retries, runs it again.
            connections.discard(conn)
            return self._script(keys=keys, args=args)
        except redis.exceptions.TimeoutError:
            # Redis did not answer within the timeout: asking again would only double the wait.
            connections.discard(conn)
            raise
        except redis.exceptions.ResponseError:
            connections.give_back(conn)
            raise
        except BaseException:
            # Interrupted halfway through a reply: the connection cannot be trusted.
            connections.discard(conn)
            raise
        connections.give_back(conn)
        return reply
