"""The interfaces a record store implements, one per concern.

A record store keeps upload records and advances offsets atomically
(``Records``), holds the per-upload lock and passes release requests to its
holder (``Locks``), counts owners' uploads in progress (``Quotas``), indexes
expiry times (``ExpiryIndex``) and remembers which final uploads wait for a
partial (``Concatenations``). The service relies on exactly these guarantees
and nothing else, so another backend only has to provide them. A backend
raises ``errors.StoreUnavailable`` when it cannot be reached.
"""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from django.core.checks import CheckMessage

from ..record import State, UploadRecord


class LockAttempt:
    """A request for an upload's lock on its way; calling it (once) gives (token, or None when taken; record).

    ``sent_at`` (``time.monotonic()``) is no later than the moment the lock's
    TTL started, which is where a holder must count its renewals from.
    """

    def __init__(self, result: Callable[[], tuple[str | None, UploadRecord | None]]) -> None:
        self.sent_at = time.monotonic()
        self._result = result

    def __call__(self) -> tuple[str | None, UploadRecord | None]:
        return self._result()


class AdvanceStatus(StrEnum):
    OK = "ok"
    COMPLETED = "completed"  # this advance made the upload complete (happens once)
    MISSING = "missing"
    NOT_UPLOADING = "not-uploading"
    LOCK_LOST = "lock-lost"
    OFFSET_MISMATCH = "offset-mismatch"
    PAST_LENGTH = "past-length"
    LENGTH_MISMATCH = "length-mismatch"


@dataclass(frozen=True)
class AdvanceResult:
    status: AdvanceStatus
    offset: int
    # The caller still holds the lock, renewed (asked for with ``keep_lock_for``)...
    lock_kept: bool = False
    # ...but another request asked for the upload: let go as soon as you can.
    release_wanted: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (AdvanceStatus.OK, AdvanceStatus.COMPLETED)


class ReleaseListener(abc.ABC):
    """Tells the holder of a lock that another request is waiting for the upload."""

    @abc.abstractmethod
    def requested(self) -> bool:
        """True once a release request arrived; never blocks."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Records(abc.ABC):
    """Upload records whose offset moves in one atomic step."""

    @abc.abstractmethod
    def create(self, record: UploadRecord) -> None:
        """Store a new record and index its expiry time."""

    @abc.abstractmethod
    def get(self, upload_id: str) -> UploadRecord | None:
        """The record, or None when no such upload is known."""

    @abc.abstractmethod
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
        """Move the offset from ``expected`` to ``new`` in one atomic step.

        With ``release_lock`` a successful advance also releases the lock.
        With ``keep_lock_for`` (seconds) it renews the lock for that long
        instead (``lock_kept``), and says whether another request asked for
        the upload lately (``release_wanted``, see ``request_release``). An
        advance that completes the upload releases it either way.

        ``length`` sets a deferred length in the same step (refused with
        LENGTH_MISMATCH when a different length is already set).

        ``fields`` are set in the same step (state that describes the bytes
        up to ``new``, such as a running hash).

        Refused when the record is missing or not uploading, when the lock is
        no longer held by ``lock_token``, when the offset is not ``expected``,
        when ``new`` is behind it or past the length. With ``auto_complete``
        reaching the length marks the record complete, and only the one call
        that does so reports COMPLETED.
        """

    @abc.abstractmethod
    def mark_complete(self, upload_id: str, *, now: float) -> AdvanceResult:
        """Complete an uploading record whose offset equals its length (once)."""

    @abc.abstractmethod
    def update(self, upload_id: str, **values: object) -> None:
        """Set plain fields of an existing record (not offset or state)."""

    @abc.abstractmethod
    def retire(self, upload_id: str, state: State, *, keep_for: float) -> None:
        """Turn the record into a tombstone in ``state`` that disappears after ``keep_for`` seconds."""

    @abc.abstractmethod
    def delete(self, upload_id: str) -> None:
        """Forget the record entirely."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached."""


class Locks(abc.ABC):
    """The per-upload lock: one writer at a time, and a way to ask the writer to let go."""

    @abc.abstractmethod
    def acquire_lock(self, upload_id: str, ttl: float) -> str | None:
        """Take the upload's lock; return its token, or None while someone else holds it."""

    def acquire_lock_and_get(self, upload_id: str, ttl: float) -> tuple[str | None, UploadRecord | None]:
        """``acquire_lock`` and ``get`` together (a backend may do both in one round trip)."""
        return self.acquire_lock(upload_id, ttl), self.get(upload_id)

    def request_lock_and_get(self, upload_id: str, ttl: float) -> LockAttempt:
        """``acquire_lock_and_get`` in two steps; the returned function gives its result (call it once).

        A backend that can sends the request here, so the caller works while
        it travels; by default all of it happens in the returned function.
        """
        return LockAttempt(functools.partial(self.acquire_lock_and_get, upload_id, ttl))

    def get_if_unlocked(self, upload_id: str) -> tuple[bool, UploadRecord | None]:
        """The record, and whether no lock was held when it was read."""
        token = self.acquire_lock(upload_id, 1.0)
        if token is None:
            return False, self.get(upload_id)
        try:
            return True, self.get(upload_id)
        finally:
            self.release_lock(upload_id, token)

    @abc.abstractmethod
    def refresh_lock(self, upload_id: str, token: str, ttl: float) -> bool:
        """Extend a held lock; False when it was lost."""

    @abc.abstractmethod
    def release_lock(self, upload_id: str, token: str) -> None:
        """Release the lock if ``token`` still holds it."""

    @abc.abstractmethod
    def release_lock_setting(self, upload_id: str, token: str, *, offset: int, fields: dict[str, object]) -> None:
        """Release the lock if ``token`` still holds it, first setting ``fields`` if the offset is still ``offset``."""

    @abc.abstractmethod
    def lock_holder(self, upload_id: str) -> str | None:
        """The token that holds the upload's lock, or None."""

    def holder_gone(self, token: str) -> bool:
        """True when the store knows that the process that took ``token`` is gone (on any host).

        A store that cannot tell answers False: the lock then lasts its TTL.
        """
        return False

    @abc.abstractmethod
    def request_release(self, upload_id: str) -> None:
        """Ask whoever holds the upload's lock to finish up and let go."""

    @abc.abstractmethod
    def listen_for_release(self, upload_id: str) -> ReleaseListener:
        """Start hearing release requests for an upload whose lock this process holds."""


class Quotas(abc.ABC):
    """Uploads in progress per owner, counted atomically against limits."""

    @abc.abstractmethod
    def reserve(self, owner: str, upload_id: str, length: int, *, max_uploads: int, max_bytes: int) -> str:
        """Count an upload in progress against its owner's limits (0 = no limit), atomically.

        Returns "ok", or "uploads" / "bytes" for the limit that refused it.
        Reserving an id that is already counted updates its length.
        """

    @abc.abstractmethod
    def unreserve(self, owner: str, upload_id: str) -> None:
        """Stop counting an upload against its owner's limits."""

    @abc.abstractmethod
    def count_event(self, key: str, window: float) -> tuple[int, float]:
        """Count one event under ``key`` in a window of ``window`` seconds that starts with the first.

        Returns the events counted in the current window, this one included,
        and the seconds until the window ends.
        """

    @abc.abstractmethod
    def counted_events(self, key: str) -> tuple[int, float]:
        """The events counted under ``key`` in its current window, and the seconds until it ends ((0, 0) for none)."""


class ExpiryIndex(abc.ABC):
    """When each unfinished upload expires, for the cleanup command."""

    @abc.abstractmethod
    def created_before(self, when: float, limit: int) -> list[str]:
        """Ids of known uploads (not tombstones) created before ``when``, oldest first."""

    @abc.abstractmethod
    def due_for_expiry(self, now: float, limit: int) -> list[str]:
        """Ids whose indexed expiry time is not after ``now``."""

    @abc.abstractmethod
    def unindex(self, upload_ids: Iterable[str]) -> None:
        """Drop ids from the expiry index."""

    @abc.abstractmethod
    def reindex(self, upload_id: str, expires_at: float) -> None:
        """Record a new expiry time in the index."""


class Concatenations(abc.ABC):
    """Which final uploads wait for a partial upload to complete."""

    @abc.abstractmethod
    def add_waiting_final(self, partial_id: str, final_id: str) -> None:
        """Remember that a final upload waits for this partial upload to complete."""

    @abc.abstractmethod
    def waiting_finals(self, partial_id: str) -> list[str]:
        """The final uploads waiting for this partial upload."""


class RecordStore(Records, Locks, Quotas, ExpiryIndex, Concatenations):
    """Everything the service needs from a record store; TUSBRIDGE_RECORD_STORE names the class."""

    @classmethod
    def from_settings(cls) -> RecordStore:
        """The store as the TUSBRIDGE_* settings describe it (a backend may share one per process)."""
        return cls()

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """System checks of this backend's settings (``manage.py check``)."""
        return []
