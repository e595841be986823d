"""The per-upload lock: one writer at a time, and a way to ask the writer to let go.

A server adapter may plug into how requests take locks (``hooks``): run
something before a request asks for a lock or before it waits for another
request, and keep a lock from one request to the next (a ``LockKeeper``).
The core knows no server; without an adapter every request takes its lock
from the record store and lets go when it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from . import errors
from .holders import holder_has_ended, holder_is_gone, live_locks
from .record import UploadRecord
from .records import RecordStore
from .records.base import LockAttempt, ReleaseListener

logger = logging.getLogger("tusbridge")


class Tracker(Protocol):
    """State a protocol keeps about the bytes written so far (the legacy protocol's running MD5).

    It is stored with the offset it describes, so it is only ever believed
    where the record's offset is still that offset.
    """

    def update(self, data: bytes | memoryview, /) -> None:
        """Take in bytes as they are written."""

    def fields_for_advance(self, offset: int, *, keeping: bool) -> dict[str, object] | None:
        """Fields to set with the advance to ``offset``; None to save them when the lock goes back instead."""

    def unsaved_fields(self, offset: int) -> dict[str, object] | None:
        """Fields for ``offset`` that the record does not hold yet, to save with the lock's release."""

    def settle(self) -> None:
        """Take in whatever bytes still wait (off the client's clock, once a response is out)."""

    def discard(self) -> None:
        """The bytes written since the last advance will not count: forget what was taken in of them."""


@dataclass
class KeptLock:
    """A lock a request kept for the next request of the same client, with what that request needs."""

    lock: HeldLock
    record: UploadRecord
    tracker: Tracker | None = None

    def let_go(self) -> None:
        """Release the lock, saving what the tracker has that the record does not."""
        release_tracked(self.lock, self.tracker, self.record.offset)


def release_tracked(lock: HeldLock, tracker: Tracker | None, offset: int) -> None:
    """Release ``lock``, saving what ``tracker`` knows of the first ``offset`` bytes that the record does not."""
    fields = None
    if tracker is not None:
        tracker.settle()
        fields = tracker.unsaved_fields(offset)
    lock.release(fields=fields, at_offset=offset)


class LockKeeper(Protocol):
    """Where a server adapter keeps locks between requests (see ``tusbridge.gunicorn.keeping``)."""

    def may_keep(self) -> bool:
        """Whether the current request may keep its lock for the next one."""

    def keep(self, kept: KeptLock) -> None:
        """Hold ``kept`` for the next request (or let go at once)."""

    def claim(self, upload_id: str, offset: int) -> KeptLock | None:
        """The kept lock if it is for ``upload_id`` at ``offset`` and surely still held; otherwise let any go."""

    def release(self) -> None:
        """Let go of the lock kept for the current request, if any."""


class ServerHooks:
    """What a server adapter adds to locking; the defaults do nothing."""

    def __init__(self) -> None:
        self.keeper: LockKeeper | None = None
        # Called before a request waits for another to let go of an upload.
        self.before_waiting: Callable[[], None] | None = None

    def release_kept(self) -> None:
        """Before a request asks for any lock: a lock kept for it would otherwise keep it waiting for itself."""
        if self.keeper is not None:
            self.keeper.release()


hooks = ServerHooks()


def may_keep() -> bool:
    """Whether the current request may keep its lock for the client's next one (a server adapter decides)."""
    return hooks.keeper is not None and hooks.keeper.may_keep()


def claim_kept(upload_id: str, offset: int) -> KeptLock | None:
    """The lock kept from the client's last request, if it is for ``upload_id`` at ``offset``."""
    return hooks.keeper.claim(upload_id, offset) if hooks.keeper is not None else None


class HeldLock:
    """A lock this request holds: renewed while a long body streams in, and
    listening for other requests that want the upload."""

    def __init__(
        self, records: RecordStore, upload_id: str, token: str, ttl: float, requested_at: float | None = None
    ) -> None:
        """``requested_at``: when the request that took the lock was sent (its TTL runs from there)."""
        self.records = records
        self.upload_id = upload_id
        self.token = token
        self.ttl = ttl
        self._renewed = time.monotonic() if requested_at is None else requested_at
        self._listener: ReleaseListener | None = None
        self._wanted = False
        live_locks.add(token, self)

    def needs_renewal(self) -> bool:
        """Whether ``keep_alive`` would ask the store (a third of the TTL has passed)."""
        return time.monotonic() - self._renewed >= self.ttl / 3

    def keep_alive(self) -> None:
        """Renew once a third of the TTL has passed; raise LockLost if someone else has it now."""
        now = time.monotonic()
        if now - self._renewed < self.ttl / 3:
            return
        if not self.records.refresh_lock(self.upload_id, self.token, self.ttl):
            raise errors.LockLost()
        self._renewed = now

    def resumed(self) -> None:
        """A new request goes on with the lock kept from the last one, and watches afresh.

        Release requests made meanwhile are not lost: each one also marks the
        upload for the next advance (see ``RecordStore.advance``).
        """
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def renewed(self, at: float) -> None:
        """The store renewed the lock for a whole TTL with a call sent at ``at`` (time.monotonic())."""
        self._renewed = at

    def safe_for(self) -> float:
        """Seconds the lock surely stays ours without a renewal (its TTL runs from the last request sent)."""
        return self._renewed + self.ttl - time.monotonic()

    def release_wanted(self) -> None:
        """The store said another request asked for the upload (an advance that kept the lock)."""
        self._wanted = True

    def release_requested(self) -> bool:
        """True when another request asked for the upload (a client that reconnected)."""
        if self._wanted:
            return True
        if self._listener is None:
            # Watching costs no round trip: the process's one subscription hears every release request.
            self._listener = self.records.listen_for_release(self.upload_id)
        return self._listener.requested()

    def released_by_store(self) -> None:
        """The store let go of the lock itself (an advance that released it)."""
        live_locks.discard(self.token)
        self.token = ""
        self.release()

    def release(self, *, fields: dict[str, object] | None = None, at_offset: int = 0) -> None:
        """Stop listening and let go; safe to call twice.

        ``fields`` describe the upload's first ``at_offset`` bytes; they are
        saved with the release if the offset is still that.
        """
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.token:
            # Not held by a request any more, whatever the store answers: a release
            # that fails leaves a lock that this process removes when asked for it.
            live_locks.discard(self.token)
            if fields is None:
                self.records.release_lock(self.upload_id, self.token)
            else:
                self.records.release_lock_setting(self.upload_id, self.token, offset=at_offset, fields=fields)
            self.token = ""


def lock_for_write(
    records: RecordStore,
    upload_id: str,
    *,
    ttl: float,
    wait: float,
    check: Callable[[UploadRecord | None], object] | None = None,
    first_attempt: LockAttempt | None = None,
) -> tuple[HeldLock, UploadRecord | None]:
    """Take the upload's lock; return it with the record as read under it.

    ``check`` vets the record (raising to refuse) before this request may
    disturb anyone: when another request holds the lock, it is asked to let
    go (it stops at its next piece, keeps the bytes it stored and unlocks)
    only for a request that passed the check. Gives up with Locked after
    ``wait`` seconds. ``first_attempt``, from ``records.request_lock_and_get``,
    is the first try when it was sent ahead.
    """
    hooks.release_kept()
    attempt = first_attempt or records.request_lock_and_get(upload_id, ttl)
    token, record = attempt()
    if token is None:
        if check is not None:
            check(record)
        deadline = time.monotonic() + wait
        next_request = 0.0
        while token is None:
            next_request = _ask_holder(records, upload_id, wait, deadline, next_request)
            attempt = records.request_lock_and_get(upload_id, ttl)
            token, record = attempt()
    lock = HeldLock(records, upload_id, token, ttl, requested_at=attempt.sent_at)
    if check is not None:
        try:
            check(record)
        except BaseException:
            lock.release()
            raise
    return lock, record


def read_when_idle(
    records: RecordStore, upload_id: str, *, wait: float, check: Callable[[UploadRecord | None], object]
) -> UploadRecord | None:
    """The record once no request is writing it, without taking the lock.

    A request still writing is asked to let go, as in ``lock_for_write``.
    """
    hooks.release_kept()
    unlocked, record = records.get_if_unlocked(upload_id)
    check(record)
    deadline = time.monotonic() + wait
    next_request = 0.0
    while not unlocked:
        next_request = _ask_holder(records, upload_id, wait, deadline, next_request)
        unlocked, record = records.get_if_unlocked(upload_id)
    return record


def _ask_holder(records: RecordStore, upload_id: str, wait: float, deadline: float, next_request: float) -> float:
    """One turn of waiting for a busy upload: now and then, free a dead holder's lock or ask the holder; pause."""
    if hooks.before_waiting is not None:
        hooks.before_waiting()
    now = time.monotonic()
    if now >= deadline:
        raise errors.Locked(f"Upload is busy: another request holds it and did not release it within {wait:g} s")
    if now >= next_request:
        holder = records.lock_holder(upload_id)
        if holder is not None and (holder_is_gone(holder) or records.holder_gone(holder)):
            # Its process died holding it (a killed worker, a host gone): nobody will release it before the TTL.
            logger.warning("tusbridge: upload %s was locked by a process that is gone; lock removed", upload_id)
            records.release_lock(upload_id, holder)
            return now
        if holder is not None and holder_has_ended(holder):
            # A request of this process held it and has ended without its release reaching the store.
            logger.warning("tusbridge: upload %s was locked by a request that has ended; lock removed", upload_id)
            records.release_lock(upload_id, holder)
            return now
        records.request_release(upload_id)
        next_request = now + 0.25
    # Short pauses first: a holder that only keeps the lock between requests lets go within milliseconds.
    waited = now - (deadline - wait)
    time.sleep(min(0.02, max(0.001, waited / 2)))
    return next_request


@contextmanager
def held(records: RecordStore, upload_id: str, *, ttl: float, wait: float) -> Iterator[HeldLock]:
    """``lock_for_write`` for the length of a ``with`` block."""
    lock, _ = lock_for_write(records, upload_id, ttl=ttl, wait=wait)
    try:
        yield lock
    finally:
        lock.release()
