"""An upload's lock kept from one request to the next on the same connection.

A legacy client sends its chunks back to back on one kept-alive connection,
and under ``tusbridge.gunicorn.workers.ThreadWorker`` the thread that answered a chunk
waits a moment for the next one on that connection. Keeping the upload's lock
(with the record as it stands and the running MD5) over that moment saves the
next chunk a round trip to Redis before its first byte is written. What the
protocol tracks (the legacy MD5) rides along with the lock: the chunk that
follows is hashed after its response is out, and its state saved in the
record when the lock goes back, not with every advance.

Nothing else can miss the lock for long:

- another request that wants the upload asks for it (``request_release``),
  and the holder lets go right after its next advance;
- the lock goes back at the end of the next request, if that request did
  not use it, at once when it is for another method or path, and before
  this thread asks for any lock; no other request can run on this thread
  meanwhile;
- the worker lets go when the connection goes quiet or closes.

A connection whose kept lock went back unused when it went quiet pauses
keeping: its client did not send the next chunk at once (a browser that
takes its time, a balancer that sends the next request elsewhere, or a busy
machine that delayed the client once), so keeping would only cost it a
release and make a request on another connection wait. The pause doubles
with every miss in a row (2, 4, ... up to 64 requests), and a kept lock
that is used again ends it: a client that is late only now and then keeps
the saving, and one that is always late pays a release once in 64 requests.
Only a thread that the worker marked with ``connection()`` keeps locks;
``install`` plugs this module into ``tusbridge.locking.hooks`` and connects
its signal receivers, which the worker does when its process starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.signals import request_finished as request_finished_signal
from django.core.signals import request_started as request_started_signal

from .. import locking
from ..locking import KeptLock

logger = logging.getLogger("tusbridge")

# A kept lock is used only while this much of its TTL is surely left.
_MIN_SAFE_FRACTION = 0.5


# The longest pause of keeping after misses in a row, as a power of two (64 requests).
_MAX_PAUSE_DOUBLINGS = 6


class Connection:
    """What keeping learnt about one connection, kept by the worker as long as the connection lives."""

    def __init__(self) -> None:
        self.requests = 0  # requests started on the connection
        self.misses = 0  # kept locks in a row that went back unused
        self.keeps_from = 0  # the first request that may keep its lock again

    def missed(self) -> None:
        """A kept lock went back unused: pause keeping, for twice as long as after the last miss."""
        self.misses += 1
        self.keeps_from = self.requests + 2 ** min(self.misses, _MAX_PAUSE_DOUBLINGS)


class _Kept:
    """A kept lock and the request that kept it (its number on this thread, its method and path)."""

    def __init__(self, lock: KeptLock, request: int, method: str, path: str) -> None:
        self.lock = lock
        self.request = request
        self.method = method
        self.path = path


class _Thread(threading.local):
    connection: Connection | None = None
    requests = 0  # requests started on this thread
    method = ""  # the current request's method and path
    path = ""
    kept: _Kept | None = None


_thread = _Thread()


@contextmanager
def connection(state: Connection) -> Iterator[None]:
    """Serve requests of the connection ``state`` describes on this thread; let go at the end.

    A lock still kept at the end went unused: the connection pauses keeping.
    """
    _thread.connection = state
    try:
        yield
    finally:
        _thread.connection = None
        if _thread.kept is not None:
            state.missed()
            release()


def allowed() -> bool:
    """Whether a request on this thread may keep its lock for the next one."""
    state = _thread.connection
    return state is not None and state.requests >= state.keeps_from


def keep(kept: KeptLock) -> None:
    """Hold ``kept`` for this thread's next request (or let go at once where keeping is not allowed)."""
    release()
    if not allowed():
        _let_go(kept)
        return
    _thread.kept = _Kept(kept, _thread.requests, _thread.method, _thread.path)


def claim(upload_id: str, offset: int) -> KeptLock | None:
    """The kept lock if it is for ``upload_id`` at ``offset`` and surely still held; otherwise let any go."""
    entry, _thread.kept = _thread.kept, None
    if entry is None:
        return None
    kept = entry.lock
    usable = (
        kept.record.id == upload_id
        and kept.record.offset == offset
        and kept.lock.safe_for() > kept.lock.ttl * _MIN_SAFE_FRACTION
    )
    if not usable:
        _let_go(kept)
        return None
    if kept.tracker is not None:
        kept.tracker.settle()
    if _thread.connection is not None:
        _thread.connection.misses = 0
    return kept


def release() -> None:
    """Let go of this thread's kept lock, if any."""
    entry, _thread.kept = _thread.kept, None
    if entry is not None:
        _let_go(entry.lock)


def _let_go(kept: KeptLock) -> None:
    try:
        kept.let_go()
    except Exception as exc:  # the record store unreachable: the lock's TTL frees the upload
        logger.warning("tusbridge: could not release the kept lock of upload %s: %s", kept.record.id, exc)


class ThreadKeeper:
    """``locking.LockKeeper`` for this module: one kept lock per thread."""

    def may_keep(self) -> bool:
        return allowed()

    def keep(self, kept: KeptLock) -> None:
        keep(kept)

    def claim(self, upload_id: str, offset: int) -> KeptLock | None:
        return claim(upload_id, offset)

    def release(self) -> None:
        release()


def install() -> None:
    """Keep locks between a connection's requests in this process: plug into locking, follow Django's requests."""
    locking.hooks.keeper = ThreadKeeper()
    request_started_signal.connect(request_started, dispatch_uid="tusbridge.keeping.started")
    request_finished_signal.connect(request_finished, dispatch_uid="tusbridge.keeping.finished")


def request_started(sender: Any, environ: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Django's ``request_started``: a kept lock stays only for a request of the same method to the same path."""
    environ = environ or {}
    _thread.requests += 1
    if _thread.connection is not None:
        _thread.connection.requests += 1
    _thread.method, _thread.path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
    entry = _thread.kept
    if entry is not None and (entry.method, entry.path) != (_thread.method, _thread.path):
        release()


def request_finished(sender: Any, **kwargs: Any) -> None:
    """Django's ``request_finished``, once the response is out.

    A lock that this request kept gets its tracker settled now (the legacy
    chunk hashed), off the client's clock; one that it neither used nor kept
    goes back.
    """
    entry = _thread.kept
    if entry is None:
        return
    if entry.request == _thread.requests:
        if entry.lock.tracker is not None:
            entry.lock.tracker.settle()
    else:
        release()
