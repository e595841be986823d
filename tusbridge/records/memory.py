"""Upload records in this process's memory, for the fast test tier.

The Redis store needs a redis-server; this one gives the same guarantees
(the same statuses in the same order of checks, the same lock, quota, index
and tombstone behaviour, see ``redis.py``'s scripts) without one, so that
tests of the service and the views run in milliseconds. Everything lives in
one process: it must never be used with several worker processes (each would
have its own records and locks), and its ``check()`` says so (tusbridge.W010).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.checks import CheckMessage, Warning

from ..holders import live_locks, new_token
from ..record import State, UploadRecord, encode_field
from .base import AdvanceResult, AdvanceStatus, LockAttempt, RecordStore, ReleaseListener

# How long a release request stays visible to a holder that keeps its lock between requests
# (the Redis store's _RELEASE_WANTED_MS).
_RELEASE_WANTED_FOR = 1.0


@dataclass
class _Lock:
    token: str
    until: float  # time.monotonic()


class MemoryReleaseListener(ReleaseListener):
    """One lock holder's interest in release requests for its upload."""

    def __init__(self, store: MemoryRecordStore, upload_id: str) -> None:
        self._store = store
        self.upload_id = upload_id
        self._requested = False

    def requested(self) -> bool:
        return self._requested

    def close(self) -> None:
        self._store._unwatch(self)


class MemoryRecordStore(RecordStore):
    """Every record, lock and index in dicts behind one ``threading.Lock``.

    Records are kept as the string fields the Redis store keeps
    (``UploadRecord.to_redis()``), so a caller never shares an object with the
    store. The lock is only held for dict operations, never across anything
    that blocks, so it is safe under gevent too. Locks, release requests and
    tombstones expire by time, judged on access.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._records: dict[str, dict[str, str]] = {}
        self._tombstone_until: dict[str, float] = {}  # time.monotonic() at which a tombstone vanishes
        self._locks: dict[str, _Lock] = {}
        self._release_wanted_until: dict[str, float] = {}
        self._listeners: dict[str, weakref.WeakSet[MemoryReleaseListener]] = {}
        self._finals: dict[str, set[str]] = {}
        self._active: dict[str, dict[str, int]] = {}  # owner -> upload id -> length
        self._expiry: dict[str, float] = {}
        self._created: dict[str, float] = {}
        self._events: dict[str, tuple[int, float]] = {}  # key -> (count, time.monotonic() the window ends)

    @classmethod
    def from_settings(cls) -> MemoryRecordStore:
        """The process's one store, shared by all its requests."""
        return _shared

    @classmethod
    def check(cls) -> list[CheckMessage]:
        return [
            Warning(
                "The in-memory record store keeps uploads in one process only; "
                "several worker processes would each see their own records and locks.",
                hint="Use it for tests with a single process; use RedisRecordStore in production.",
                id="tusbridge.W010",
            )
        ]

    def reset(self) -> None:
        """Forget everything (between tests)."""
        with self._mutex:
            for collection in (
                self._records,
                self._tombstone_until,
                self._locks,
                self._release_wanted_until,
                self._listeners,
                self._finals,
                self._active,
                self._expiry,
                self._created,
                self._events,
            ):
                collection.clear()

    # Helpers (call with the mutex held) ---------------------------------------

    def _record(self, upload_id: str) -> dict[str, str] | None:
        """The stored fields, once a tombstone whose time ran out is gone."""
        until = self._tombstone_until.get(upload_id)
        if until is not None and time.monotonic() >= until:
            del self._tombstone_until[upload_id]
            self._records.pop(upload_id, None)
        return self._records.get(upload_id)

    def _holder(self, upload_id: str) -> str | None:
        lock = self._locks.get(upload_id)
        if lock is None:
            return None
        if time.monotonic() >= lock.until:
            del self._locks[upload_id]
            return None
        return lock.token

    def _release_wanted(self, upload_id: str) -> bool:
        until = self._release_wanted_until.get(upload_id)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._release_wanted_until[upload_id]
            return False
        return True

    def _keep(self, upload_id: str, token: str, keep_lock_for: float | None) -> tuple[bool, bool]:
        """(lock kept, release wanted) after an advance that asked to keep the lock."""
        if keep_lock_for is None or self._holder(upload_id) != token:
            return False, False
        self._locks[upload_id].until = time.monotonic() + _ttl(keep_lock_for)
        return True, self._release_wanted(upload_id)

    # Records ----------------------------------------------------------------

    def create(self, record: UploadRecord) -> None:
        with self._mutex:
            self._records[record.id] = record.to_redis()
            self._tombstone_until.pop(record.id, None)
            self._expiry[record.id] = record.expires_at
            self._created[record.id] = record.created_at

    def get(self, upload_id: str) -> UploadRecord | None:
        with self._mutex:
            raw = self._record(upload_id)
            raw = None if raw is None else dict(raw)
        return None if raw is None else UploadRecord.from_redis(raw)

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
        extra = {name: encode_field(name, value) for name, value in (fields or {}).items()}
        with self._mutex:
            raw = self._record(upload_id)
            if raw is None:
                return AdvanceResult(AdvanceStatus.MISSING, 0)
            if self._holder(upload_id) != lock_token:
                return AdvanceResult(AdvanceStatus.LOCK_LOST, 0)
            offset = int(raw["offset"])
            if raw["state"] != State.UPLOADING.value:
                return AdvanceResult(AdvanceStatus.NOT_UPLOADING, offset)
            if offset != expected:
                return AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, offset)
            known = int(raw["length"]) if raw.get("length") else None
            if length is not None:
                if known is not None and known != length:
                    return AdvanceResult(AdvanceStatus.LENGTH_MISMATCH, offset)
                known = length
            if new < offset:
                return AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, offset)
            if known is not None and new > known:
                return AdvanceResult(AdvanceStatus.PAST_LENGTH, offset)
            raw.update(offset=str(new), updated_at=repr(now), length=encode_field("length", known))
            raw.update(extra)
            if expires_at is not None:
                raw["expires_at"] = repr(expires_at)
            if auto_complete and known is not None and new == known:
                if release_lock or keep_lock_for is not None:
                    self._locks.pop(upload_id, None)
                raw.update(state=State.COMPLETE.value, completed_at=repr(now))
                self._expiry.pop(upload_id, None)
                return AdvanceResult(AdvanceStatus.COMPLETED, new)
            if release_lock and keep_lock_for is None:
                self._locks.pop(upload_id, None)
            kept, wanted = self._keep(upload_id, lock_token, keep_lock_for)
            return AdvanceResult(AdvanceStatus.OK, new, lock_kept=kept, release_wanted=wanted)

    def mark_complete(self, upload_id: str, *, now: float) -> AdvanceResult:
        with self._mutex:
            raw = self._record(upload_id)
            if raw is None:
                return AdvanceResult(AdvanceStatus.MISSING, 0)
            offset = int(raw["offset"])
            if raw["state"] != State.UPLOADING.value:
                return AdvanceResult(AdvanceStatus.NOT_UPLOADING, offset)
            if not raw.get("length") or offset != int(raw["length"]):
                return AdvanceResult(AdvanceStatus.OFFSET_MISMATCH, offset)
            raw.update(state=State.COMPLETE.value, completed_at=repr(now))
            self._expiry.pop(upload_id, None)
            return AdvanceResult(AdvanceStatus.COMPLETED, offset)

    def update(self, upload_id: str, **values: object) -> None:
        if {"offset", "state"} & values.keys():
            raise ValueError("offset and state change only through advance, complete and retire")
        encoded = {name: encode_field(name, value) for name, value in values.items()}
        with self._mutex:
            raw = self._record(upload_id)
            if raw is not None:
                raw.update(encoded)

    def retire(self, upload_id: str, state: State, *, keep_for: float) -> None:
        with self._mutex:
            raw = self._record(upload_id)
            if raw is not None:
                raw["state"] = state.value
                self._tombstone_until[upload_id] = time.monotonic() + _ttl(keep_for)
            self._finals.pop(upload_id, None)
            self._expiry.pop(upload_id, None)
            self._created.pop(upload_id, None)

    def delete(self, upload_id: str) -> None:
        with self._mutex:
            self._records.pop(upload_id, None)
            self._tombstone_until.pop(upload_id, None)
            self._finals.pop(upload_id, None)
            self._expiry.pop(upload_id, None)
            self._created.pop(upload_id, None)

    def ping(self) -> None:
        return None

    # Concatenations -----------------------------------------------------------

    def add_waiting_final(self, partial_id: str, final_id: str) -> None:
        with self._mutex:
            self._finals.setdefault(partial_id, set()).add(final_id)

    def waiting_finals(self, partial_id: str) -> list[str]:
        with self._mutex:
            return sorted(self._finals.get(partial_id, ()))

    # Lock -------------------------------------------------------------------

    def acquire_lock(self, upload_id: str, ttl: float) -> str | None:
        return self.acquire_lock_and_get(upload_id, ttl)[0]

    def acquire_lock_and_get(self, upload_id: str, ttl: float) -> tuple[str | None, UploadRecord | None]:
        token, record = self._take(upload_id, ttl)
        if token is not None:
            live_locks.pin(token)  # held by the caller, who has only the token, until release_lock
        return token, record

    def request_lock_and_get(self, upload_id: str, ttl: float) -> LockAttempt:
        taken = self._take(upload_id, ttl)
        attempt = LockAttempt(lambda: taken)
        if taken[0] is not None:
            live_locks.add(taken[0], attempt)  # live while its attempt, then its HeldLock, exists
        return attempt

    def _take(self, upload_id: str, ttl: float) -> tuple[str | None, UploadRecord | None]:
        token = new_token()
        with self._mutex:
            taken = self._holder(upload_id) is None
            if taken:
                self._locks[upload_id] = _Lock(token, time.monotonic() + _ttl(ttl))
            raw = self._record(upload_id)
            raw = None if raw is None else dict(raw)
        return (token if taken else None), None if raw is None else UploadRecord.from_redis(raw)

    def get_if_unlocked(self, upload_id: str) -> tuple[bool, UploadRecord | None]:
        with self._mutex:
            unlocked = self._holder(upload_id) is None
            raw = self._record(upload_id)
            raw = None if raw is None else dict(raw)
        return unlocked, None if raw is None else UploadRecord.from_redis(raw)

    def refresh_lock(self, upload_id: str, token: str, ttl: float) -> bool:
        with self._mutex:
            if self._holder(upload_id) != token:
                return False
            self._locks[upload_id].until = time.monotonic() + _ttl(ttl)
            return True

    def release_lock(self, upload_id: str, token: str) -> None:
        live_locks.discard(token)
        with self._mutex:
            if self._holder(upload_id) == token:
                del self._locks[upload_id]

    def release_lock_setting(self, upload_id: str, token: str, *, offset: int, fields: dict[str, object]) -> None:
        encoded = {name: encode_field(name, value) for name, value in fields.items()}
        live_locks.discard(token)
        with self._mutex:
            if self._holder(upload_id) != token:
                return
            raw = self._record(upload_id)
            if raw is not None and raw.get("offset") == str(offset):
                raw.update(encoded)
            del self._locks[upload_id]

    def lock_holder(self, upload_id: str) -> str | None:
        with self._mutex:
            return self._holder(upload_id)

    def request_release(self, upload_id: str) -> None:
        with self._mutex:
            self._release_wanted_until[upload_id] = time.monotonic() + _RELEASE_WANTED_FOR
            for listener in self._listeners.get(upload_id, ()):
                listener._requested = True

    def listen_for_release(self, upload_id: str) -> MemoryReleaseListener:
        listener = MemoryReleaseListener(self, upload_id)
        with self._mutex:
            self._listeners.setdefault(upload_id, weakref.WeakSet()).add(listener)
        return listener

    def _unwatch(self, listener: MemoryReleaseListener) -> None:
        with self._mutex:
            listeners = self._listeners.get(listener.upload_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[listener.upload_id]

    @property
    def watching(self) -> int:
        """How many holders listen for release requests now."""
        with self._mutex:
            return sum(len(listeners) for listeners in self._listeners.values())

    # Quotas -------------------------------------------------------------------

    def reserve(self, owner: str, upload_id: str, length: int, *, max_uploads: int, max_bytes: int) -> str:
        with self._mutex:
            active = self._active.setdefault(owner, {})
            if upload_id in active:
                active[upload_id] = length
                return "ok"
            if max_uploads > 0 and len(active) >= max_uploads:
                return "uploads"
            if max_bytes > 0 and length + sum(active.values()) > max_bytes:
                return "bytes"
            active[upload_id] = length
            return "ok"

    def counted_events(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        with self._mutex:
            count, until = self._events.get(key, (0, 0.0))
        return (count, until - now) if until > now else (0, 0.0)

    def count_event(self, key: str, window: float) -> tuple[int, float]:
        now = time.monotonic()
        with self._mutex:
            count, until = self._events.get(key, (0, 0.0))
            if until <= now:
                count, until = 0, now + max(window, 0.001)
            self._events[key] = (count + 1, until)
            return count + 1, until - now

    def unreserve(self, owner: str, upload_id: str) -> None:
        with self._mutex:
            active = self._active.get(owner)
            if active is not None:
                active.pop(upload_id, None)
                if not active:
                    del self._active[owner]

    # Expiry index -----------------------------------------------------------

    def created_before(self, when: float, limit: int) -> list[str]:
        with self._mutex:
            found = sorted((at, upload_id) for upload_id, at in self._created.items() if at < when)
        return _first(found, limit)

    def due_for_expiry(self, now: float, limit: int) -> list[str]:
        with self._mutex:
            found = sorted((at, upload_id) for upload_id, at in self._expiry.items() if at <= now)
        return _first(found, limit)

    def unindex(self, upload_ids: Iterable[str]) -> None:
        ids = list(upload_ids)
        with self._mutex:
            for upload_id in ids:
                self._expiry.pop(upload_id, None)

    def reindex(self, upload_id: str, expires_at: float) -> None:
        with self._mutex:
            self._expiry[upload_id] = expires_at


def _first(found: list[tuple[float, str]], limit: int) -> list[str]:
    """The ids of the first ``limit`` entries (all of them for a negative limit, as Redis's LIMIT)."""
    return [upload_id for _, upload_id in (found if limit < 0 else found[:limit])]


def _ttl(seconds: float) -> float:
    """A TTL as Redis would keep it: whole milliseconds, at least one."""
    return max(1, int(seconds * 1000)) / 1000


_shared = MemoryRecordStore()
