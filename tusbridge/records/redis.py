"""Upload records in Redis.

Every key of one upload carries the hash tag ``{<id>}``, so a Lua script
that touches the record and its lock runs on one Redis Cluster slot. The
expiry index is one sorted set; it is only ever written beside (never inside)
a script, for the same reason.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import redis
from django.core.checks import CheckMessage, Error, Warning
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel, SentinelConnectionPool

from .. import conf, errors
from ..holders import holder_has_ended, live_locks, new_token, process_of, this_process
from ..record import State, UploadRecord, encode_field
from .base import AdvanceResult, AdvanceStatus, LockAttempt, RecordStore, ReleaseListener
from .scripts import DirectScript

logger = logging.getLogger("tusbridge")

# KEYS: record, lock, release wanted. ARGV: token, expected, new, now, expires_at|"",
# auto_complete 1|0, length to set|"", the lock afterwards ("1" release, "0" hold, else
# the ms to keep it for), a random id of this call, then field/value pairs to set with
# the advance. Returns {status, offset, lock kept: 0 no, 1 yes, 2 yes but another request
# asked for the upload}. Safe to run twice: the record keeps the id of the last advance,
# so a repeat of a call that went through (only its reply was lost) reports the same
# outcome instead of a mismatch; any other call is judged afresh.
_ADVANCE = """
local function keep()
  if ARGV[8] == '1' or ARGV[8] == '0' or redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[2], ARGV[8])
  if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
  return 1
end
local f = redis.call('HMGET', KEYS[1], 'state', 'offset', 'length', 'advance_id')
if not f[1] then return {'missing', 0, 0} end
local new = tonumber(ARGV[3])
if f[4] == ARGV[9] then
  if f[1] == 'complete' and f[3] == ARGV[3] then return {'completed', new, 0} end
  return {'ok', new, keep()}
end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lock-lost', 0, 0} end
local offset = tonumber(f[2])
if f[1] ~= 'uploading' then return {'not-uploading', offset, 0} end
if offset ~= tonumber(ARGV[2]) then return {'offset-mismatch', offset, 0} end
local length = f[3]
if ARGV[7] ~= '' then
  if length ~= '' and length ~= ARGV[7] then return {'length-mismatch', offset, 0} end
  length = ARGV[7]
end
if new < offset then return {'offset-mismatch', offset, 0} end
if length ~= '' and new > tonumber(length) then return {'past-length', offset, 0} end
redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'updated_at', ARGV[4], 'length', length, 'advance_id', ARGV[9])
for i = 10, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'expires_at', ARGV[5]) end
if ARGV[6] == '1' and length ~= '' and new == tonumber(length) then
  if ARGV[8] ~= '0' then redis.call('DEL', KEYS[2]) end
  redis.call('HSET', KEYS[1], 'state', 'complete', 'completed_at', ARGV[4])
  return {'completed', new, 0}
end
if ARGV[8] == '1' then redis.call('DEL', KEYS[2]) end
return {'ok', new, keep()}
"""

# How long a release request stays visible to a holder that keeps its lock between requests.
_RELEASE_WANTED_MS = 1000

# KEYS: record. ARGV: now.
_COMPLETE = """
local f = redis.call('HMGET', KEYS[1], 'state', 'offset', 'length')
if not f[1] then return {'missing', 0} end
local offset = tonumber(f[2])
if f[1] ~= 'uploading' then return {'not-uploading', offset} end
if f[3] == '' or offset ~= tonumber(f[3]) then return {'offset-mismatch', offset} end
redis.call('HSET', KEYS[1], 'state', 'complete', 'completed_at', ARGV[1])
return {'completed', offset}
"""

# KEYS: the owner's active uploads (hash id -> length). ARGV: id, length, max uploads, max bytes.
_RESERVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 'ok'
end
local lengths = redis.call('HVALS', KEYS[1])
if tonumber(ARGV[3]) > 0 and #lengths >= tonumber(ARGV[3]) then return 'uploads' end
local total = tonumber(ARGV[2])
for _, n in ipairs(lengths) do total = total + tonumber(n) end
if tonumber(ARGV[4]) > 0 and total > tonumber(ARGV[4]) then return 'bytes' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 'ok'
"""

# KEYS: lock, record. ARGV: token, ttl in ms, the latest time (Redis's clock, ms) at
# which the lock may still be taken, or "". Returns {1 taken | 0 held by another |
# -1 too late, Redis's clock in ms, record fields...}. A call that Redis runs after
# its sender stopped waiting for the reply (Redis was frozen or swamped for longer
# than the timeout) must not take the lock: nobody would use or release it, and the
# upload would stay locked for a whole TTL. Safe to run twice: a lock that already
# holds this token was taken by the first run.
_ACQUIRE_AND_GET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  taken = 1
elseif ARGV[3] ~= '' and now > tonumber(ARGV[3]) then
  taken = -1
elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  taken = 1
end
return {taken, now, redis.call('HGETALL', KEYS[2])}
"""

# KEYS: lock, record. Returns {unlocked 1|0, record fields...}.
_GET_IF_UNLOCKED = """
return {redis.call('EXISTS', KEYS[1]) == 0 and 1 or 0, redis.call('HGETALL', KEYS[2])}
"""

# KEYS: lock. ARGV: token, ttl in ms.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock, record. ARGV: token, offset, then field/value pairs to set first if the
# record's offset is still that offset.
_RELEASE_SETTING = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'offset') == ARGV[2] then
  for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
return redis.call('DEL', KEYS[1])
"""

# KEYS: lock. ARGV: token.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: the event counter. ARGV: the window in ms. Returns {count, ms left in the window}.
_COUNT_EVENT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""

# The lock script's answer to a call that arrived after its latest start (see _latest_start),
# and how many calls one attempt sends at most while Redis finds them too late.
_TOO_LATE = -1
_ASKS_WHEN_LATE = 3

_clients: dict[tuple[str, float, int], redis.Redis] = {}
_release_requests: weakref.WeakKeyDictionary[redis.Redis, ReleaseRequests] = weakref.WeakKeyDictionary()

# Release requests go to channels ``<prefix>:release:{<upload id>}``.
_CHANNEL_MARK = ":release:"
_clients_lock = threading.Lock()


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (its connections follow the primary through a failover) that waits for a free
    connection, as the plain pool does, instead of failing past ``max_connections``."""


@dataclass(frozen=True)
class SentinelSpec:
    """Where the sentinels are and which primary they watch (a ``redis+sentinel://`` URL or a settings dict)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, setting: str | Mapping[str, Any]) -> SentinelSpec:
        """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``, or
        ``{"sentinels": [(host, port), ...], "service": ..., "db": ..., "password": ..., "sentinel_password": ...}``.
        """
        if isinstance(setting, Mapping):
            return cls(
                sentinels=tuple((str(host), int(port)) for host, port in setting["sentinels"]),
                service=str(setting["service"]),
                db=int(setting.get("db", 0)),
                password=setting.get("password"),
                sentinel_password=setting.get("sentinel_password"),
            )
        rest = setting.removeprefix(SENTINEL_SCHEME)
        credentials, _, rest = rest.rpartition("@")
        hosts, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        if not hosts or not parts:
            raise ValueError(f"a Sentinel URL names its sentinels and its service: {SENTINEL_SCHEME}host:port/service")
        sentinels = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
            sentinels.append((name, int(port)))
        password = unquote(credentials.partition(":")[2]) if credentials else None
        return cls(tuple(sentinels), parts[0], int(parts[1]) if len(parts) > 1 else 0, password or None)


SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"


def uses_sentinel(setting: str | Mapping[str, Any]) -> bool:
    return isinstance(setting, Mapping) or setting.startswith(SENTINEL_SCHEME)


def cluster_nodes(url: str) -> list[ClusterNode]:
    """The startup nodes of ``redis+cluster://[:password@]host:port[,host:port...]``."""
    hosts = url.removeprefix(CLUSTER_SCHEME).rpartition("@")[2].partition("/")[0]
    nodes = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "6379")
        nodes.append(ClusterNode(name, int(port)))
    if not hosts:
        raise ValueError(f"a Cluster URL names at least one node: {CLUSTER_SCHEME}host:port")
    return nodes


def client_for(url: str | Mapping[str, Any], timeout: float, max_connections: int = 16) -> redis.Redis:
    """One client per URL (or Sentinel settings), timeout and connection budget, shared by a process's requests.

    A process opens at most ``max_connections`` connections to Redis,
    whatever the number of requests in flight: half for redis-py's pool
    (which also lends the one subscription to release requests), half for
    the scripts sent directly (see ``scripts.py``). A request that finds them
    all busy waits for one, up to ``timeout``, instead of failing at once.
    Behind Sentinel the connections go to the current primary and move to
    the new one after a failover; meanwhile requests answer 503.
    """
    key = (repr(url), timeout, max_connections)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            options: dict[str, Any] = {
                "max_connections": max(2, max_connections // 2),
                "timeout": timeout,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
                "health_check_interval": 30,
            }
            if isinstance(url, str) and url.startswith(CLUSTER_SCHEME):
                # Every script of the store touches the keys of one upload, which share a hash slot.
                # Each node gets a pool of its own, bounded and waiting as the plain one does.
                credentials = url.removeprefix(CLUSTER_SCHEME).rpartition("@")[0]
                cluster = _clients[key] = RedisCluster(  # type: ignore[assignment]
                    startup_nodes=cluster_nodes(url),
                    password=unquote(credentials.partition(":")[2]) or None,
                    connection_pool_class=redis.BlockingConnectionPool,
                    max_connections=options["max_connections"],
                    timeout=timeout,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                )
                return cluster  # type: ignore[return-value]
            if uses_sentinel(url):
                spec = SentinelSpec.parse(url)
                sentinel = Sentinel(
                    list(spec.sentinels),
                    sentinel_kwargs={"socket_timeout": timeout, "password": spec.sentinel_password},
                )
                pool: redis.ConnectionPool = BlockingSentinelPool(
                    spec.service, sentinel, db=spec.db, password=spec.password, **options
                )
            else:
                pool = redis.BlockingConnectionPool.from_url(str(url), **options)
            client = _clients[key] = redis.Redis(connection_pool=pool)
        return client


class ReleaseWatch(ReleaseListener):
    """One lock holder's interest in release requests for its upload, fed by ``ReleaseRequests``."""

    def __init__(self, requests: ReleaseRequests, channel: str) -> None:
        self._requests = requests
        self.channel = channel
        self._requested = False

    def requested(self) -> bool:
        return self._requested

    def close(self) -> None:
        self._requests.unwatch(self)


class ReleaseRequests:
    """The process's one subscription to release requests (per Redis client), handed to the lock holders that watch.

    A connection per holder would tie Redis connections to the number of
    uploads in flight; here a process holds one, whatever that number and
    however many key prefixes it serves, and only while some request of the
    process holds a lock, and for LINGER seconds after: a lock of this
    process may outlive its request (its release did not reach Redis, or
    Redis lost it in a restart), and a request for such a lock goes to the
    ``unheld`` callback its store registered (``serve``), which removes it. A
    message that arrives while the subscription is down is not lost for long:
    a waiting request repeats its release request until the holder lets go.
    """

    # How long the subscription outlives the last watch (longer than a lock
    # lives), how often its thread looks up, and its longest pause between
    # attempts to subscribe again.
    LINGER = 60.0
    POLL = 0.5
    MAX_BACKOFF = 0.5

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pattern = "*" + _CHANNEL_MARK + "*"
        # By channel prefix: what to do with a request that no holder of this process watches.
        self._unheld: dict[str, Callable[[str], None]] = {}
        # By channel; weak, so that a holder dropped without closing its watch (an error path) is not kept.
        self._watches: dict[str, weakref.WeakSet[ReleaseWatch]] = {}
        self._lock = threading.Lock()
        self._running_in: int | None = None  # the PID whose thread is subscribed
        self._idle_since = time.monotonic()

    @classmethod
    def for_client(cls, client: redis.Redis) -> ReleaseRequests:
        with _clients_lock:
            requests = _release_requests.get(client)
            if requests is None:
                requests = _release_requests[client] = cls(client)
            return requests

    def serve(self, channel_prefix: str, unheld: Callable[[str], None]) -> None:
        """Pass requests on channels ``channel_prefix<upload id>`` that no holder watches to ``unheld(upload id)``."""
        with self._lock:
            self._unheld[channel_prefix] = unheld

    def watch(self, channel: str) -> ReleaseWatch:
        watch = ReleaseWatch(self, channel)
        with self._lock:
            self._watches.setdefault(channel, weakref.WeakSet()).add(watch)
            self._start()
        return watch

    def listen(self) -> None:
        """Subscribe (for LINGER seconds at least) without a watch: this process took a lock."""
        with self._lock:
            self._idle_since = time.monotonic()
            self._start()

    def _start(self) -> None:
        if self._running_in != os.getpid():
            self._running_in = os.getpid()
            threading.Thread(target=self._run, name="tusbridge-release-requests", daemon=True).start()

    def unwatch(self, watch: ReleaseWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.channel)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[watch.channel]
                    if not any(self._watches.values()):
                        self._idle_since = time.monotonic()

    @property
    def watching(self) -> int:
        """How many holders of this process listen now."""
        with self._lock:
            return sum(len(w) for w in self._watches.values())

    def _deliver(self, channel: bytes | str) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        head, _, tail = name.rpartition(_CHANNEL_MARK)
        with self._lock:
            watches = list(self._watches.get(name, ()))
            for watch in watches:
                watch._requested = True
            unheld = self._unheld.get(head + _CHANNEL_MARK)
        if not watches and unheld is not None:
            try:
                unheld(tail.strip("{}"))
            except (errors.StoreUnavailable, redis.exceptions.RedisError) as exc:
                logger.warning("tusbridge: release request for upload %s not answered: %s", tail, exc)

    def _done(self) -> bool:
        """True (and the thread's turn is over) once nobody has watched for LINGER seconds, or after a fork."""
        with self._lock:
            if self._running_in != os.getpid():
                return True
            for upload_id in [u for u, w in self._watches.items() if not w]:
                del self._watches[upload_id]
            if self._watches or time.monotonic() - self._idle_since < self.LINGER:
                return False
            self._running_in = None
            return True

    def _run(self) -> None:
        backoff = 0.1
        failing = False
        while not self._done():
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(self._pattern)
                backoff, failing = 0.1, False
                while not self._done():
                    message = pubsub.get_message(timeout=self.POLL)
                    if message is not None and message.get("type") == "pmessage":
                        self._deliver(message["channel"])
                return
            except (redis.exceptions.RedisError, OSError) as exc:
                if not failing:
                    logger.warning("tusbridge: release requests not heard (%s); subscribing again", exc)
                failing = True
            finally:
                pubsub.close()
            time.sleep(backoff)
            backoff = min(backoff * 2, self.MAX_BACKOFF)


# Redis errors that mean "not reachable now": the store raises StoreUnavailable for them.
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Only noeviction is safe: volatile-* policies may evict a held lock (it has a TTL).
_SAFE_EVICTION = ("noeviction",)

F = TypeVar("F", bound=Callable[..., Any])


def _unavailable_on_outage(call: F) -> F:
    """``call``, raising the core's StoreUnavailable where redis-py raises its connection errors."""

    @functools.wraps(call)
    def translated(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise errors.StoreUnavailable() from exc

    return translated  # type: ignore[return-value]


class Heartbeat:
    """A key that says this process is alive, while it holds locks: other hosts free the locks of a dead one.

    A lock's holder on another host cannot be checked through /proc; when
    its host dies (or its container, or the network drops it) the lock would
    last its TTL. Every process that takes locks keeps its key for TTL
    seconds, renewed every EVERY seconds while any request of the process
    holds a lock, and set before its first lock request; a waiter that
    finds the key of a lock's process gone removes the lock.
    """

    TTL = 1.5
    EVERY = 0.5

    def __init__(self, client: redis.Redis, key: str) -> None:
        self._client = client
        self._key = key
        self._beaten = -float("inf")
        self._running_in: int | None = None
        self._lock = threading.Lock()

    def keep_up(self) -> None:
        """Make sure the key is fresh (one SET at most every EVERY seconds) and kept so while locks are held."""
        if time.monotonic() - self._beaten >= self.EVERY:
            self._beat()
        with self._lock:
            if self._running_in != os.getpid():
                self._running_in = os.getpid()
                threading.Thread(target=self._run, name="tusbridge-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        self._client.set(self._key, "1", px=int(self.TTL * 1000))
        self._beaten = time.monotonic()

    def _run(self) -> None:
        while True:
            time.sleep(self.EVERY)
            with self._lock:
                if self._running_in != os.getpid() or not len(live_locks):
                    self._running_in = None
                    return
            try:
                self._beat()
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("tusbridge: heartbeat not sent (%s)", exc)


def _outages_as_store_unavailable(cls: type[RecordStore]) -> type[RecordStore]:
    """Every public operation of ``cls`` raises StoreUnavailable, not redis-py's errors, when Redis is unreachable."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _unavailable_on_outage(member))
    return cls


_stores: dict[tuple[Any, ...], RedisRecordStore] = {}


@_outages_as_store_unavailable
class RedisRecordStore(RecordStore):
    """Records, locks, quotas and the expiry index in Redis (TUSBRIDGE_REDIS_URL)."""

    @classmethod
    def from_settings(cls) -> RedisRecordStore:
        """One store per URL, timeout, prefix and connection budget, shared by the requests of a process."""
        url, timeout, prefix = conf.get("REDIS_URL"), float(conf.get("REDIS_TIMEOUT")), conf.get("KEY_PREFIX")
        max_connections = int(conf.get("REDIS_MAX_CONNECTIONS"))
        key = (cls, url, timeout, prefix, max_connections)
        with _clients_lock:
            store = _stores.get(key)
        if store is None:
            store = cls(client_for(url, timeout, max_connections), prefix)
            with _clients_lock:
                store = _stores.setdefault(key, store)
        return store

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """TUSBRIDGE_REDIS_URL is valid and reachable, and Redis does not evict keys."""
        url = conf.get("REDIS_URL")
        try:
            if isinstance(url, str) and url.startswith(CLUSTER_SCHEME):
                client = RedisCluster(startup_nodes=cluster_nodes(url), socket_timeout=2, socket_connect_timeout=2)
            elif uses_sentinel(url):
                spec = SentinelSpec.parse(url)
                sentinel = Sentinel(list(spec.sentinels), sentinel_kwargs={"socket_timeout": 2})
                client = sentinel.master_for(spec.service, socket_timeout=2, db=spec.db, password=spec.password)
            else:
                client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return [Error(f"TUSBRIDGE_REDIS_URL {url!r} is not a valid Redis URL: {exc}", id="tusbridge.E001")]
        try:
            client.ping()
        except redis.RedisError as exc:
            return [
                Warning(
                    f"Redis at TUSBRIDGE_REDIS_URL {url!r} cannot be reached: {exc}",
                    hint="Start Redis or correct the URL; uploads answer 503 until it is reachable.",
                    id="tusbridge.W001",
                )
            ]
        try:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        except redis.RedisError:
            return []  # CONFIG may be disabled on managed Redis; nothing to say then.
        finally:
            client.close()
        if policy not in _SAFE_EVICTION:
            return [
                Warning(
                    f"Redis evicts keys under memory pressure (maxmemory-policy {policy}); "
                    "an evicted upload record loses track of its data.",
                    hint="Use maxmemory-policy noeviction for the tusbridge database "
                    "(volatile-* may evict a held lock).",
                    id="tusbridge.W002",
                )
            ]
        return []

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        # The scripts of every request take the direct path (see scripts.py).
        self._advance = DirectScript(client, _ADVANCE)
        self._refresh = DirectScript(client, _REFRESH)
        self._release = DirectScript(client, _RELEASE)
        self._release_setting = client.register_script(_RELEASE_SETTING)
        self._acquire_and_get = DirectScript(client, _ACQUIRE_AND_GET)
        self._get_if_unlocked = DirectScript(client, _GET_IF_UNLOCKED)
        self._complete = client.register_script(_COMPLETE)
        self._reserve = client.register_script(_RESERVE)
        self._count_event = client.register_script(_COUNT_EVENT)
        pool = getattr(client, "connection_pool", None) or client.nodes_manager  # a cluster has one per node
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._timeout_ms: float | None = None if timeout is None else float(timeout) * 1000
        # Redis's clock less time.monotonic(), in ms, from the latest lock request (see _latest_start).
        self._redis_ahead_ms: float | None = None
        self.heartbeat = Heartbeat(client, self.alive_key(this_process())) if this_process() else None
        self.release_requests = ReleaseRequests.for_client(client)
        self.release_requests.serve(f"{prefix}{_CHANNEL_MARK}", self._release_if_ended)

    # Keys -------------------------------------------------------------------

    def record_key(self, upload_id: str) -> str:
        return f"{self.prefix}:upload:{{{upload_id}}}"

    def lock_key(self, upload_id: str) -> str:
        return f"{self.prefix}:lock:{{{upload_id}}}"

    def finals_key(self, partial_id: str) -> str:
        return f"{self.prefix}:finals:{{{partial_id}}}"

    def active_key(self, owner: str) -> str:
        return f"{self.prefix}:active:{{{owner}}}"

    def release_channel(self, upload_id: str) -> str:
        return f"{self.prefix}{_CHANNEL_MARK}{{{upload_id}}}"

    def alive_key(self, process: str) -> str:
        return f"{self.prefix}:alive:{{{process}}}"

    def events_key(self, key: str) -> str:
        return f"{self.prefix}:events:{{{key}}}"

    def release_wanted_key(self, upload_id: str) -> str:
        return f"{self.prefix}:release-wanted:{{{upload_id}}}"

    @property
    def expiry_key(self) -> str:
        return f"{self.prefix}:expiry"

    @property
    def created_key(self) -> str:
        return f"{self.prefix}:created"

    # Records ----------------------------------------------------------------

    def create(self, record: UploadRecord) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.record_key(record.id), mapping=record.to_redis())
        pipe.zadd(self.expiry_key, {record.id: record.expires_at})
        pipe.zadd(self.created_key, {record.id: record.created_at})
        pipe.execute()

    def get(self, upload_id: str) -> UploadRecord | None:
        raw = self.client.hgetall(self.record_key(upload_id))
        return UploadRecord.from_redis(raw) if raw else None

    def advance(
        self,
        upload_id: str,
        *,
        expected: int,
        new: int,
        lock_token: str,
        now: float,
        expires_at: float | None,
        auto_complete: bool,
        fields: dict[str, object] | None = None,
        length: int | None = None,
        release_lock: bool = False,
        keep_lock_for: float | None = None,
    ) -> AdvanceResult:
        extra = [item for name, value in (fields or {}).items() for item in (name, encode_field(name, value))]
        if keep_lock_for is not None:
            lock_after = str(max(1, int(keep_lock_for * 1000)))
        else:
            lock_after = "1" if release_lock else "0"
        # The expiry index is not touched: its entry (from creation) is never
        # later than the record's expiry, and cleanup reads the record and
        # moves the entry on when the expiry slid. One round trip per write.
        status, offset, kept = self._advance(
            keys=[self.record_key(upload_id), self.lock_key(upload_id), self.release_wanted_key(upload_id)],
            args=[
                lock_token,
                expected,
                new,
                repr(now),
                "" if expires_at is None else repr(expires_at),
                "1" if auto_complete else "0",
                "" if length is None else str(length),
                lock_after,
                secrets.token_hex(8),
                *extra,
            ],
        )
        result = AdvanceResult(
            AdvanceStatus(status.decode()), int(offset), lock_kept=kept > 0, release_wanted=kept == 2
        )
        if result.status is AdvanceStatus.COMPLETED:
            self.unindex([upload_id])
        return result

    def mark_complete(self, upload_id: str, *, now: float) -> AdvanceResult:
        status, offset = self._complete(keys=[self.record_key(upload_id)], args=[repr(now)])
        result = AdvanceResult(AdvanceStatus(status.decode()), int(offset))
        if result.status is AdvanceStatus.COMPLETED:
            self.unindex([upload_id])
        return result

    def update(self, upload_id: str, **values: object) -> None:
        if {"offset", "state"} & values.keys():
            raise ValueError("offset and state change only through advance, complete and retire")
        mapping = {name: encode_field(name, value) for name, value in values.items()}
        self.client.hset(self.record_key(upload_id), mapping=mapping)

    def retire(self, upload_id: str, state: State, *, keep_for: float) -> None:
        key = self.record_key(upload_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, "state", state.value)
        pipe.pexpire(key, max(1, int(keep_for * 1000)))
        pipe.delete(self.finals_key(upload_id))
        pipe.execute()
        self.unindex([upload_id])
        self.client.zrem(self.created_key, upload_id)

    def delete(self, upload_id: str) -> None:
        self.client.delete(self.record_key(upload_id), self.finals_key(upload_id))
        self.unindex([upload_id])
        self.client.zrem(self.created_key, upload_id)

    def add_waiting_final(self, partial_id: str, final_id: str) -> None:
        self.client.sadd(self.finals_key(partial_id), final_id)

    def waiting_finals(self, partial_id: str) -> list[str]:
        return sorted(i.decode() for i in self.client.smembers(self.finals_key(partial_id)))

    # Lock -------------------------------------------------------------------

    def acquire_lock(self, upload_id: str, ttl: float) -> str | None:
        return self.acquire_lock_and_get(upload_id, ttl)[0]

    def acquire_lock_and_get(self, upload_id: str, ttl: float) -> tuple[str | None, UploadRecord | None]:
        token, record = self.request_lock_and_get(upload_id, ttl)()
        if token is not None:
            live_locks.pin(token)  # held by the caller, who has only the token, until release_lock
        return token, record

    def request_lock_and_get(self, upload_id: str, ttl: float) -> LockAttempt:
        token = new_token()
        keys = [self.lock_key(upload_id), self.record_key(upload_id)]
        ttl_ms = max(1, int(ttl * 1000))

        def send() -> tuple[float, Callable[[], Any]]:
            if self._timeout_ms is not None and self._redis_ahead_ms is None:
                self._learn_redis_clock()  # before ``sent``: the limit must not count its round trip
            sent = time.monotonic()
            return sent, self._acquire_and_get.send(keys=keys, args=[token, ttl_ms, self._latest_start(sent)])

        def result() -> tuple[str | None, UploadRecord | None]:
            sent, reply = first
            for _ in range(_ASKS_WHEN_LATE):
                taken, redis_now, raw = reply()
                self._redis_ahead_ms = redis_now + 1 - sent * 1000
                if taken != _TOO_LATE:
                    return (token if taken == 1 else None), _record(raw)
                # Still waiting, so not too late after all: the view of Redis's clock
                # was behind (its clock was set forward, or the reply was read late).
                # The view is corrected now; ask again.
                sent, reply = send()
            return None, _record(raw)

        # Made before sending: its sent_at may not be later than the call.
        attempt = LockAttempt(_unavailable_on_outage(result))
        # The lock may be taken before anyone reads the reply: it is live from now on,
        # and this process hears release requests for it and says that it is alive.
        live_locks.add(token, attempt)
        self.release_requests.listen()
        if self.heartbeat is not None:
            self.heartbeat.keep_up()
        first = send()
        return attempt

    def _latest_start(self, sent: float) -> str:
        """The latest start for a lock request sent at ``sent`` (``time.monotonic()``), on Redis's clock.

        A sender waits for its reply for the read timeout at least, so a call
        that Redis starts later than ``sent`` plus the timeout may have been
        given up: it is refused. One that was not (its sender read the reply
        late) is sent again by ``result``. Redis's clock is known from its last
        reply, as "Redis's time when it ran a call, less ours when we sent it",
        which is never less than the true difference: the limit errs late, never
        early. Without a timeout a sender never gives up.
        """
        if self._timeout_ms is None or self._redis_ahead_ms is None:
            return ""
        return str(int(sent * 1000 + self._redis_ahead_ms + self._timeout_ms))

    def _learn_redis_clock(self) -> None:
        """Ask Redis the time, for a store whose first lock request this is."""
        before = time.monotonic()
        seconds, micros = self.client.time()
        self._redis_ahead_ms = seconds * 1000 + micros // 1000 + 1 - before * 1000

    def get_if_unlocked(self, upload_id: str) -> tuple[bool, UploadRecord | None]:
        unlocked, raw = self._get_if_unlocked(keys=[self.lock_key(upload_id), self.record_key(upload_id)])
        return bool(unlocked), _record(raw)

    def refresh_lock(self, upload_id: str, token: str, ttl: float) -> bool:
        return bool(self._refresh(keys=[self.lock_key(upload_id)], args=[token, max(1, int(ttl * 1000))]))

    def release_lock(self, upload_id: str, token: str) -> None:
        live_locks.discard(token)
        self._release(keys=[self.lock_key(upload_id)], args=[token])

    def release_lock_setting(self, upload_id: str, token: str, *, offset: int, fields: dict[str, object]) -> None:
        extra = [item for name, value in fields.items() for item in (name, encode_field(name, value))]
        self._release_setting(keys=[self.lock_key(upload_id), self.record_key(upload_id)], args=[token, offset, *extra])

    def holder_gone(self, token: str) -> bool:
        process = process_of(token)
        if not process or process == this_process():
            return False  # this process is alive; its ended requests are ``holder_has_ended``'s
        return not self.client.exists(self.alive_key(process))

    def lock_holder(self, upload_id: str) -> str | None:
        token = self.client.get(self.lock_key(upload_id))
        return token.decode() if isinstance(token, bytes) else token

    def request_release(self, upload_id: str) -> None:
        # The key reaches a holder that keeps the lock between requests (it looks at its
        # next advance); the message reaches one that is streaming a body.
        if isinstance(self.client, RedisCluster):  # no PUBLISH in a cluster pipeline
            self.client.set(self.release_wanted_key(upload_id), "1", px=_RELEASE_WANTED_MS)
            self.client.publish(self.release_channel(upload_id), "release")
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.release_wanted_key(upload_id), "1", px=_RELEASE_WANTED_MS)
        pipe.publish(self.release_channel(upload_id), "release")
        pipe.execute()

    def listen_for_release(self, upload_id: str) -> ReleaseWatch:
        return self.release_requests.watch(self.release_channel(upload_id))

    def _release_if_ended(self, upload_id: str) -> None:
        """Remove the upload's lock if a request of this process held it and has ended (see ``LiveLocks``)."""
        holder = self.lock_holder(upload_id)
        if holder is not None and holder_has_ended(holder):
            logger.warning("tusbridge: upload %s was locked by a request that has ended; lock removed", upload_id)
            self.release_lock(upload_id, holder)

    # Expiry index -----------------------------------------------------------

    def due_for_expiry(self, now: float, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(self.expiry_key, "-inf", now, start=0, num=limit)
        return [i.decode() for i in ids]

    def reserve(self, owner: str, upload_id: str, length: int, *, max_uploads: int, max_bytes: int) -> str:
        result = self._reserve(keys=[self.active_key(owner)], args=[upload_id, length, max_uploads, max_bytes])
        return result.decode() if isinstance(result, bytes) else str(result)

    def unreserve(self, owner: str, upload_id: str) -> None:
        self.client.hdel(self.active_key(owner), upload_id)

    def counted_events(self, key: str) -> tuple[int, float]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.events_key(key))
        pipe.pttl(self.events_key(key))
        count, ttl_ms = pipe.execute()
        if count is None or ttl_ms < 0:
            return 0, 0.0
        return int(count), ttl_ms / 1000

    def count_event(self, key: str, window: float) -> tuple[int, float]:
        count, ttl_ms = self._count_event(keys=[self.events_key(key)], args=[max(1, int(window * 1000))])
        return int(count), max(int(ttl_ms), 0) / 1000

    def created_before(self, when: float, limit: int) -> list[str]:
        ids = self.client.zrangebyscore(self.created_key, "-inf", f"({when!r}", start=0, num=limit)
        return [i.decode() for i in ids]

    def unindex(self, upload_ids: Iterable[str]) -> None:
        ids = list(upload_ids)
        if ids:
            self.client.zrem(self.expiry_key, *ids)

    def reindex(self, upload_id: str, expires_at: float) -> None:
        self.client.zadd(self.expiry_key, {upload_id: expires_at})

    def ping(self) -> None:
        self.client.ping()


def _record(flat: list[bytes]) -> UploadRecord | None:
    """A record from HGETALL's reply as a script returns it (a flat field, value list)."""
    if not flat:
        return None
    return UploadRecord.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))
