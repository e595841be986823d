"""The protocol-neutral upload service.

Both protocols translate their requests into these calls: create an upload,
append a stream at an offset, read its state, complete, terminate, expire,
concatenate. The rules that keep bytes safe live here once: a write happens
only under the upload's lock, the offset moves only after the bytes reached
the data store, and completion happens once.
"""

from __future__ import annotations

import errno
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from django.core.files import File
from django.core.files.storage import Storage
from django.core.signals import setting_changed

from . import conf, errors, locking, shutdown
from .appending import (
    TUS_RULES,
    AppendResult,
    AppendSession,
    AsyncReadable,
    Digest,
    Readable,
    WriteLimits,
    WriteRules,
    advance_error,
    keep_record_copy,
)
from .data import Concatenator, DataStore, InfoKeeper, Terminator, Writer
from .data.base import Finisher
from .handover import configured_storage, hand_over
from .locking import KeptLock, Tracker
from .offload import run_blocking
from .record import State, UploadRecord, new_upload_id
from .records import RecordStore
from .records.base import AdvanceResult, AdvanceStatus, LockAttempt
from .signals import upload_completed
from .stores import configured_data_store, configured_record_store

__all__ = ["AppendResult", "AppendSession", "Digest", "Readable", "UploadService", "WriteRules", "get_service"]

logger = logging.getLogger("tusbridge")

# Where a finished file goes instead of TUSBRIDGE_STORAGE: a Storage and a name in it.
Target = tuple[Storage, str]


@dataclass(frozen=True)
class Quotas:
    """Limits on uploads in progress (0 = none): per logged-in owner, and per client address for anonymous ones."""

    uploads_per_user: int = 0
    bytes_per_user: int = 0
    uploads_per_address: int = 0
    bytes_per_address: int = 0
    creations_per_minute: int = 0

    def for_record(self, record: UploadRecord) -> tuple[int, int]:
        """(uploads, bytes) that ``record``'s owner or client may have in progress."""
        if record.owner:
            return self.uploads_per_user, self.bytes_per_user
        if record.client:
            return self.uploads_per_address, self.bytes_per_address
        return 0, 0


class UploadService:
    def __init__(
        self,
        records: RecordStore,
        data: DataStore,
        *,
        expiry: float,
        retention: float,
        max_size: int = 0,
        lock_ttl: float = 30.0,
        lock_wait: float = 5.0,
        read_size: int = 1024 * 1024,
        idle_timeout: float = 60.0,
        quotas: Quotas | None = None,
        progress_interval: float = 1.0,
        progress_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.records = records
        self.data = data
        self.expiry = expiry
        self.retention = retention
        self.max_size = max_size
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.read_size = read_size
        self.idle_timeout = idle_timeout
        self.quotas = quotas or Quotas()
        self.limits = WriteLimits(
            expiry=expiry,
            read_size=read_size,
            idle_timeout=idle_timeout,
            progress_interval=progress_interval,
            progress_bytes=progress_bytes,
        )

    @property
    def can_terminate(self) -> bool:
        return isinstance(self.data, Terminator)

    @property
    def can_concatenate(self) -> bool:
        return isinstance(self.data, Concatenator)

    # Reading ----------------------------------------------------------------

    def get(self, upload_id: str, owner: str) -> UploadRecord:
        """The upload as ``owner`` may see it: NotFound for others' uploads, Gone when expired."""
        return self.usable(self.records.get(upload_id), owner)

    def usable(self, record: UploadRecord | None, owner: str) -> UploadRecord:
        """``record`` if ``owner`` may use it now; else NotFound or Gone, as ``get`` says."""
        if record is None or not self.visible(record, owner):
            raise errors.NotFound()
        if record.state in (State.TERMINATED, State.EXPIRED):
            raise errors.Gone()
        if record.state is State.UPLOADING:
            if record.concat == "final":
                # A final upload waiting for its partials lives as long as they do.
                if self._missing_partials(record):
                    raise errors.Gone("A partial upload of this final upload is gone")
            elif record.expires_at <= time.time():
                raise errors.Gone("Upload has expired")
        return record

    @staticmethod
    def visible(record: UploadRecord, owner: str) -> bool:
        """Anonymous uploads are reachable by their unguessable URL; others only by their owner."""
        return record.owner == "" or record.owner == owner

    def read_when_idle(self, upload_id: str, owner: str) -> UploadRecord:
        """The upload once no request is writing it, so its offset is final for now.

        A client that reconnects asks here first; a request still streaming
        its old connection's body is asked to let go instead of being waited out.
        """
        record = locking.read_when_idle(
            self.records, upload_id, wait=self.lock_wait, check=lambda record: self.usable(record, owner)
        )
        return self.usable(record, owner)

    def lock_for_write(
        self,
        upload_id: str,
        owner: str,
        authorize: Callable[[UploadRecord], object] | None = None,
        first_attempt: LockAttempt | None = None,
    ) -> tuple[locking.HeldLock, UploadRecord]:
        """Lock an upload ``owner`` may use (and ``authorize`` accepts); return the lock and the record.

        Requests that would be refused never disturb a request writing the upload.
        ``first_attempt`` is a lock request already sent (see ``request_lock``).
        """

        def check(record: UploadRecord | None) -> None:
            record = self.usable(record, owner)
            if authorize is not None:
                authorize(record)

        lock, record = locking.lock_for_write(
            self.records, upload_id, ttl=self.lock_ttl, wait=self.lock_wait, check=check, first_attempt=first_attempt
        )
        return lock, self.usable(record, owner)

    # Creating ---------------------------------------------------------------

    def check_length(self, length: int | None) -> None:
        if length is not None and self.max_size and length > self.max_size:
            raise errors.TooLarge(f"Upload length {length} exceeds the maximum size of {self.max_size} bytes")

    def new_record(
        self,
        *,
        owner: str,
        protocol: str,
        length: int | None,
        expires_at: float | None = None,
        **values: Any,
    ) -> UploadRecord:
        """An upload record that is not stored yet."""
        self.check_length(length)
        now = time.time()
        return UploadRecord(
            id=new_upload_id(),
            owner=owner,
            protocol=protocol,
            length=length,
            created_at=now,
            updated_at=now,
            expires_at=now + self.expiry if expires_at is None else expires_at,
            **values,
        )

    def create(self, *, owner: str, protocol: str, length: int | None, **values: Any) -> UploadRecord:
        """Create an upload; one of length 0 is complete at once.

        ``values`` are further UploadRecord fields (metadata, filename, concat...).
        """
        record = self.new_record(owner=owner, protocol=protocol, length=length, **values)
        self.reserve(record)
        try:
            self.data.create(record.id)
            self.store_new(record)
        except BaseException as exc:
            # Nothing is left half-made: no file, no record, no reservation.
            self.undo_creation(record)
            if isinstance(exc, OSError):
                raise self._storage_error(exc) from exc
            raise
        if length == 0 and self.records.mark_complete(record.id, now=time.time()).status is AdvanceStatus.COMPLETED:
            record = self.finish(record.id) or record
        return record

    def open_new(
        self, record: UploadRecord, *, rules: WriteRules = TUS_RULES, tracker: Tracker | None = None
    ) -> AppendSession:
        """Start writing a new upload whose record is stored only when the session commits."""
        self.reserve(record)
        lock, _ = locking.lock_for_write(self.records, record.id, ttl=self.lock_ttl, wait=self.lock_wait)
        try:
            self.data.create(record.id)
            writer = self.data.writer(record.id, 0)
        except BaseException:
            lock.release()
            self.unreserve(record)
            self.remove_data(record.id)
            raise
        return self._session(record, lock, writer, rules=rules, new=True, tracker=tracker)

    def reserve(self, record: UploadRecord) -> None:
        """Count a new upload against its owner's limits, or for an anonymous one its client address's.

        An anonymous client also has a creation rate; a refusal says when to try again.
        """
        quotas = self.quotas
        if not record.owner and record.client and quotas.creations_per_minute:
            # Counted when a creation is stored (``count_creation``): a refused one costs nothing.
            count, reset_in = self.records.counted_events(_creations_key(record))
            if count >= quotas.creations_per_minute:
                raise errors.QuotaExceeded(
                    f"More than {quotas.creations_per_minute} uploads created from your address in a minute",
                    retry_after=max(1, math.ceil(reset_in)),
                )
        max_uploads, max_bytes = quotas.for_record(record)
        if not record.quota_key or not (max_uploads or max_bytes):
            return
        verdict = self.records.reserve(
            record.quota_key, record.id, self.reserved_length(record), max_uploads=max_uploads, max_bytes=max_bytes
        )
        whose = "Your" if record.owner else "Your address's"
        if verdict == "uploads":
            raise errors.QuotaExceeded(
                f"{whose} {max_uploads} uploads in progress are the most at once; finish or delete one first"
            )
        if verdict == "bytes":
            raise errors.QuotaExceeded(
                f"{whose} uploads in progress would exceed {max_bytes} bytes; finish or delete some first"
            )

    def deferred_limit(self, record: UploadRecord) -> int | None:
        """The most a deferred-length upload may grow to: TUSBRIDGE_MAX_SIZE, and its owner's byte budget."""
        limits = [self.max_size, self.quotas.for_record(record)[1]]
        limits = [n for n in limits if n]
        return min(limits) if limits else None

    def reserved_length(self, record: UploadRecord) -> int:
        """What an upload counts against its owner's byte budget: its length, or all it may grow to."""
        if record.length is not None:
            return record.length
        return self.deferred_limit(record) or 0

    def unreserve(self, record: UploadRecord) -> None:
        if record.quota_key:
            self.records.unreserve(record.quota_key, record.id)

    def store_new(self, record: UploadRecord) -> None:
        """Store a new record, and its copy beside the data (see InfoKeeper)."""
        self.records.create(record)
        self.keep_info(record)
        self.count_creation(record)

    def count_creation(self, record: UploadRecord) -> None:
        """Count a stored anonymous creation against its address's rate."""
        if not record.owner and record.client and self.quotas.creations_per_minute:
            self.records.count_event(_creations_key(record), 60.0)

    def undo_creation(self, record: UploadRecord) -> None:
        """Remove what a failed creation made, step by step, each step whatever the others do."""
        for step in (
            lambda: self.remove_data(record.id),
            lambda: self.records.delete(record.id),
            lambda: self.unreserve(record),
        ):
            try:
                step()
            except Exception as exc:  # the failure that got us here is what the client hears about
                logger.warning("tusbridge: cleaning up the failed creation of %s: %s", record.id, exc)

    def keep_info(self, record: UploadRecord) -> None:
        keep_record_copy(self.data, record)

    def refresh_info(self, record: UploadRecord) -> None:
        """Update the copy beside the data after a change that already counts; a failure only costs recovery."""
        try:
            self.keep_info(record)
        except OSError as exc:
            logger.warning("tusbridge: could not update the record copy of %s: %s", record.id, exc)

    # Writing ----------------------------------------------------------------

    @contextmanager
    def locked(self, upload_id: str) -> Iterator[locking.HeldLock]:
        with locking.held(self.records, upload_id, ttl=self.lock_ttl, wait=self.lock_wait) as lock:
            yield lock

    def request_lock(self, upload_id: str) -> LockAttempt:
        """Send the upload's lock request ahead, to pass to ``open_write`` as ``held``.

        The round trip to the record store then overlaps whatever the caller
        does in between (hashing the first bytes of a legacy chunk). Until
        ``open_write`` or ``cancel_lock_request`` the upload may be locked for
        this request.
        """
        return self.records.request_lock_and_get(upload_id, self.lock_ttl)

    def cancel_lock_request(self, upload_id: str, attempt: LockAttempt) -> None:
        """A lock request sent ahead is not wanted after all: let go if it took the lock, without waiting."""
        token, _ = attempt()
        if token is not None:
            self.records.release_lock(upload_id, token)

    def open_write(
        self,
        upload_id: str,
        owner: str,
        *,
        offset: int,
        length: int | None = None,
        held: LockAttempt | KeptLock | None = None,
        rules: WriteRules = TUS_RULES,
        track: Callable[[UploadRecord], Tracker | None] | None = None,
        authorize: Callable[[UploadRecord], object] | None = None,
    ) -> AppendSession:
        """Take the upload for writing at ``offset``: the one way a write to an existing upload starts.

        ``held`` is where the lock comes from when not from a fresh request:
        a request sent ahead (``request_lock``), or a lock kept from the
        client's last request (checked without asking the store: nobody else
        could change the record meanwhile). ``length`` fixes a deferred
        length; ``authorize`` may refuse the record by raising; ``track``
        gives the tracker a protocol keeps for this record (a kept lock brings
        its own). Raises the errors of ``get`` plus FinalUploadImmutable,
        AlreadyComplete, OffsetMismatch, InvalidRequest (a length that
        contradicts the upload) and Locked; lets go of the lock when refusing.
        """
        if isinstance(held, KeptLock):
            lock, record, tracker = held.lock, held.record, held.tracker
            lock.resumed()
        else:
            lock, record = self.lock_for_write(upload_id, owner, authorize, held)
            tracker = None
        try:
            self.usable(record, owner)
            if record.concat == "final":
                raise errors.FinalUploadImmutable()
            if record.state is State.COMPLETE:
                raise errors.AlreadyComplete()
            if offset != record.offset:
                raise errors.OffsetMismatch(record.offset)
            new_length = self._new_length(record, length)
            writer = self.data.writer(upload_id, record.offset)
        except BaseException:
            locking.release_tracked(lock, tracker, record.offset)
            raise
        if tracker is None and track is not None:
            tracker = track(record)
        return self._session(record, lock, writer, rules=rules, new_length=new_length, tracker=tracker)

    def _session(self, record: UploadRecord, lock: locking.HeldLock, writer: Writer, **options: Any) -> AppendSession:
        limit = self.deferred_limit(record)
        return AppendSession(self.records, self.data, self.limits, record, lock, writer, max_length=limit, **options)

    def commit(self, session: AppendSession, *, interrupted: bool = False, keep_lock: bool = False) -> AppendResult:
        """Commit a session's bytes, then do what follows: count a length it set, finish a completed upload."""
        try:
            result = session.commit(interrupted=interrupted, keep_lock=keep_lock)
            if session.new:
                self.count_creation(result.record)
            if result.length_set:
                self.length_fixed(result.record)
            if result.completed:
                # Under the lock: a DELETE cannot take the data while it is handed over.
                result = replace(result, record=self.finish(result.record.id) or result.record)
        finally:
            session.release()
        return result

    def append(
        self,
        upload_id: str,
        owner: str,
        *,
        offset: int,
        stream: Readable,
        content_length: int | None,
        length: int | None = None,
        digest: Digest | None = None,
        rules: WriteRules = TUS_RULES,
        authorize: Callable[[UploadRecord], object] | None = None,
    ) -> AppendResult:
        """Store the bytes of ``stream`` at ``offset`` and advance the offset by what was stored.

        Bytes that would run past the length are refused without being
        written. A body cut short keeps what arrived, unless a digest was
        given: a partial chunk cannot match it. Raises the errors of
        ``open_write`` plus ExceedsLength, TooLarge, ChecksumMismatch,
        StorageFull and LockLost.
        """
        session = self.open_write(upload_id, owner, offset=offset, length=length, rules=rules, authorize=authorize)
        try:
            self.check_room(session, content_length)
            try:
                overflow, interrupted = session.pump(stream, digest, body_length=content_length)
            except OSError as exc:
                raise self.write_failed(session, digest, exc) from exc
            except BaseException as exc:
                self.torn_down(session, digest, exc)
                raise
            return self.end_append(session, content_length, digest, overflow=overflow, interrupted=interrupted)
        finally:
            session.abort()

    async def append_async(
        self,
        upload_id: str,
        owner: str,
        *,
        offset: int,
        body: AsyncReadable,
        content_length: int | None,
        poll_interval: float,
        length: int | None = None,
        digest: Digest | None = None,
        authorize: Callable[[UploadRecord], object] | None = None,
    ) -> AppendResult:
        """``append`` for a body that arrives on an event loop: the coroutine waits for the body,
        and only the blocking calls take a thread (``offload``), so an upload in flight holds none.
        """
        session = await run_blocking(
            self.open_write, upload_id, owner, offset=offset, length=length, authorize=authorize
        )
        try:
            self.check_room(session, content_length)
            try:
                overflow, interrupted = await session.pump_async(
                    body, digest, poll_interval=poll_interval, body_length=content_length
                )
            except OSError as exc:
                raise await run_blocking(self.write_failed, session, digest, exc) from exc
            except BaseException as exc:
                await run_blocking(self.torn_down, session, digest, exc)
                raise
            return await run_blocking(
                self.end_append, session, content_length, digest, overflow=overflow, interrupted=interrupted
            )
        finally:
            await run_blocking(session.abort)

    def check_room(self, session: AppendSession, content_length: int | None) -> None:
        """Refuse, before a byte is read, a body announced longer than the upload has room for."""
        room = session.room
        if content_length is not None and room is not None and content_length > room:
            raise self._overflow(session.record)

    def write_failed(self, session: AppendSession, digest: Digest | None, exc: OSError) -> errors.UploadError:
        """The data store failed (disk full, I/O error): keep what was really written, say why.

        A checksummed chunk cannot be kept in part.
        """
        if digest is None and session.written:
            self.commit(session, interrupted=True)
        return self._storage_error(exc)

    def torn_down(self, session: AppendSession, digest: Digest | None, exc: BaseException) -> None:
        """The server tears the request down (a worker's graceful timeout, a cancelled task): count what was written.

        Only for what is not an ``Exception`` (GreenletExit, CancelledError,
        SystemExit): errors keep their own handling. A checksummed body
        cannot count in part; a failure to count leaves the bytes to ``abort``.
        """
        if isinstance(exc, Exception) or digest is not None or not session.uncounted:
            return
        try:
            self.commit(session, interrupted=True)
        except Exception as failure:
            logger.warning("tusbridge: upload %s left without counting: %s", session.upload_id, failure)

    def end_append(
        self,
        session: AppendSession,
        content_length: int | None,
        digest: Digest | None,
        *,
        overflow: bool,
        interrupted: bool,
    ) -> AppendResult:
        """Judge a pumped body and commit it: the rules every way of reading a body shares."""
        if content_length is not None and session.written < content_length:
            interrupted = True
        if overflow:
            raise self._overflow(session.record)
        if interrupted and not session.written and shutdown.stopping():
            # Taken in while the process stops: send the client elsewhere, not back at once.
            raise errors.Stopping()
        if digest is not None and (interrupted or not digest.matches()):
            # The chunk was written in place and is cut off again by
            # abort(). Staging it in a side file would cost a second write
            # of every byte on the (usual) success path; truncating costs
            # one ftruncate on the rare failure, and the offset in the
            # record never counted these bytes anyway.
            raise errors.ChecksumMismatch()
        return self.commit(session, interrupted=interrupted)

    @staticmethod
    def check_advance(result: AdvanceResult) -> None:
        """Turn a refused offset advance into the error that explains it."""
        if not result.ok:
            raise advance_error(result)

    def _overflow(self, record: UploadRecord) -> errors.UploadError:
        if record.length is None:
            return errors.TooLarge(f"The upload exceeds the {self.deferred_limit(record)} bytes it may grow to")
        return errors.ExceedsLength(
            f"The request body runs past the upload's length of {record.length} bytes (offset {record.offset})"
        )

    def _new_length(self, record: UploadRecord, length: int | None) -> int | None:
        """Check a length sent for a deferred upload; it is set only when the write commits.

        Returns the length to set, or None when there is nothing to set.
        """
        if length is None or record.length == length:
            return None
        if record.length is not None:
            raise errors.InvalidRequest("Upload-Length cannot change once it is set")
        if length < record.offset:
            raise errors.InvalidRequest("Upload-Length is smaller than the bytes already uploaded")
        limit = self.deferred_limit(record)
        if limit is not None and length > limit:
            raise errors.TooLarge(f"Upload length {length} exceeds the {limit} bytes this upload may grow to")
        return length

    def length_fixed(self, record: UploadRecord) -> None:
        """After a deferred length was set: count the real length (never more than was reserved), update the copy."""
        self.reserve_rebuilt(record)
        self.refresh_info(record)

    @staticmethod
    def _storage_error(exc: OSError) -> errors.UploadError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.StorageFull()
        return errors.UploadError(f"The upload data could not be written: {exc.strerror or exc}")

    # Concatenating ----------------------------------------------------------

    def create_final(
        self,
        *,
        owner: str,
        partial_ids: list[str],
        concat_raw: str,
        **values: Any,
    ) -> UploadRecord:
        """Create a final upload from partial uploads, in order (a partial may repeat).

        When every partial is complete the data is joined at once; otherwise
        the final upload waits and is joined when its last partial completes.
        Nothing is created when a partial is unknown, someone else's, gone,
        or not a partial upload.
        """
        if not partial_ids:
            raise errors.InvalidRequest("Upload-Concat: final needs at least one partial upload")
        if not isinstance(self.data, Concatenator):
            raise errors.InvalidRequest("This data store cannot concatenate uploads")
        lengths = []
        for partial_id in partial_ids:
            try:
                partial = self.get(partial_id, owner)
            except errors.Gone:
                raise errors.InvalidRequest(f"Partial upload {partial_id} is gone (expired or terminated)") from None
            if partial.concat != "partial":
                raise errors.InvalidRequest(f"Upload {partial_id} is not a partial upload (Upload-Concat: partial)")
            lengths.append(partial.length)
        length = None if None in lengths else sum(n for n in lengths if n is not None)
        record = self.new_record(
            owner=owner,
            protocol="tus",
            length=length,
            concat="final",
            concat_raw=concat_raw,
            partials=list(partial_ids),
            **values,
        )
        try:
            self.data.create(record.id)
            self.store_new(record)
            for partial_id in dict.fromkeys(partial_ids):
                self.records.add_waiting_final(partial_id, record.id)
        except BaseException as exc:
            self.undo_creation(record)
            if isinstance(exc, OSError):
                raise self._storage_error(exc) from exc
            raise
        return self.assemble(record.id) or record

    def assemble(self, final_id: str) -> UploadRecord | None:
        """Join a final upload's data once all its partials are complete; None while they are not."""
        with self.locked(final_id) as lock:
            final = self.records.get(final_id)
            if final is None or final.state is not State.UPLOADING:
                return None
            partials = [self.records.get(p) for p in final.partials]
            if not all(p is not None and p.state is State.COMPLETE for p in partials):
                return None
            length = sum(p.length or 0 for p in partials if p is not None)
            assert isinstance(self.data, Concatenator)
            self.data.concatenate(final_id, final.partials)
            now = time.time()
            result = self.records.advance(
                final_id,
                expected=0,
                new=length,
                lock_token=lock.token,
                now=now,
                expires_at=None,
                auto_complete=True,
                length=None if final.length is not None else length,
            )
            self.check_advance(result)
        if result.status is AdvanceStatus.COMPLETED:
            return self.finish(final_id)
        return None

    def _missing_partials(self, final: UploadRecord) -> list[str]:
        """Partials of a pending final upload that no longer exist or are no longer usable."""
        missing = []
        for partial_id in dict.fromkeys(final.partials):
            partial = self.records.get(partial_id)
            if (
                partial is None
                or partial.state in (State.TERMINATED, State.EXPIRED)
                or (partial.state is State.UPLOADING and partial.expires_at <= time.time())
            ):
                missing.append(partial_id)
        return missing

    # Completing -------------------------------------------------------------

    def complete(self, upload_id: str, owner: str, *, target: Target | None = None) -> UploadRecord:
        """Complete an upload whose bytes have all arrived (for protocols that confirm explicitly).

        ``target`` (a Storage and a name in it) overrides TUSBRIDGE_STORAGE for this upload.
        """
        lock, record = self.lock_for_write(upload_id, owner)
        try:
            if record.state is State.COMPLETE:
                raise errors.AlreadyComplete()
            result = self.records.mark_complete(upload_id, now=time.time())
            if result.status is not AdvanceStatus.COMPLETED:
                raise errors.NotComplete()
            # Under the lock: a DELETE cannot take the data while it is handed over.
            return self.finish(upload_id, target=target) or record
        finally:
            lock.release()

    def finish(self, upload_id: str, *, target: Target | None = None) -> UploadRecord | None:
        """Hand the file to the configured Storage and announce it; called once per upload."""
        record = self.records.get(upload_id)
        if record is None:
            return None
        self.unreserve(record)
        if isinstance(self.data, Finisher):
            # Before anything reads it (partials too: a concatenation copies finished data).
            self.data.finish(upload_id)
        if record.concat == "partial":
            return self._finish_partial(record)
        storage, name = target if target is not None else (configured_storage(), None)
        with self.data.open(upload_id) as fh:
            file = File(fh, name=record.filename or upload_id)
            if storage is not None:
                try:
                    record.stored_name = hand_over(record, file, storage, name)
                    self.records.update(upload_id, stored_name=record.stored_name)
                except Exception:
                    # The bytes stay in the upload directory; nothing is lost.
                    logger.exception("tusbridge: handing upload %s to storage failed", upload_id)
                file.seek(0)
            self._announce(record, file)
        if record.stored_name:
            self.remove_data(upload_id)
        else:
            self.refresh_info(record)
        return record

    def _announce(self, record: UploadRecord, file: File) -> None:
        """Send upload_completed. The upload is complete whatever a receiver does: a receiver
        that fails is logged, and neither fails the request nor keeps other receivers from running."""
        for receiver, result in upload_completed.send_robust(sender=type(self), upload=record, file=file):
            if isinstance(result, Exception):
                logger.error(
                    "tusbridge: upload_completed receiver %r failed for upload %s",
                    receiver,
                    record.id,
                    exc_info=(type(result), result, result.__traceback__),
                )

    def _finish_partial(self, record: UploadRecord) -> UploadRecord:
        """A partial upload is not a file of its own: it only completes the finals that wait for it.

        It stays usable in later concatenations until it expires.
        """
        expires_at = time.time() + self.expiry
        self.records.update(record.id, expires_at=expires_at)
        self.records.reindex(record.id, expires_at)
        for final_id in self.records.waiting_finals(record.id):
            try:
                self.assemble(final_id)
            except errors.UploadError:
                # A final that cannot be joined now is joined by the next partial or HEAD.
                logger.warning("tusbridge: final upload %s could not be assembled yet", final_id, exc_info=True)
        return record

    # Ending -----------------------------------------------------------------

    def terminate(self, upload_id: str, owner: str, authorize: Callable[[UploadRecord], object] | None = None) -> None:
        """Delete the upload's data; the id answers Gone for the retention period."""
        lock, record = self.lock_for_write(upload_id, owner, authorize)
        try:
            self.remove_data(upload_id)
            self.records.retire(upload_id, State.TERMINATED, keep_for=self.retention)
            self.unreserve(record)
        finally:
            lock.release()

    def forget(self, record: UploadRecord, *, delete_data: bool = True) -> None:
        """Delete an upload outright: no tombstone (the legacy protocol's delete)."""
        self.records.delete(record.id)
        self.unreserve(record)
        if delete_data:
            self.remove_data(record.id)

    def expire_due(self, now: float | None = None, batch: int = 500) -> int:
        """Remove every unfinished upload whose expiry time has passed; return how many.

        Safe to run on several hosts at once: each upload is expired under
        its lock, and one that another process holds is left for the next run.
        """
        now = time.time() if now is None else now
        expired = 0
        skipped: set[str] = set()
        while True:
            due = [i for i in self.records.due_for_expiry(now, batch + len(skipped)) if i not in skipped]
            if not due:
                return expired + self._sweep_orphans(now)
            for upload_id in due:
                token = self.records.acquire_lock(upload_id, self.lock_ttl)
                if token is None:
                    skipped.add(upload_id)
                    continue
                try:
                    expired += self._expire_one(upload_id, now)
                finally:
                    self.records.release_lock(upload_id, token)

    def _expire_one(self, upload_id: str, now: float) -> int:
        record = self.records.get(upload_id)
        if record is None or not self._expirable(record):
            self.records.unindex([upload_id])
        elif record.expires_at > now:
            self.records.reindex(upload_id, record.expires_at)
        elif record.concat == "final" and not self._missing_partials(record):
            # Its partials are alive, so the final upload waits with them.
            self.records.reindex(upload_id, now + self.expiry)
        else:
            self.remove_data(upload_id)
            self.records.retire(upload_id, State.EXPIRED, keep_for=self.retention)
            self.unreserve(record)
            return 1
        return 0

    # Recovering -------------------------------------------------------------

    def rebuild(self, *, dry_run: bool = False) -> list[str]:
        """Recreate lost records from the copies kept beside the data; return the ids rebuilt.

        For use after Redis lost data. An unfinished upload's offset becomes
        the size of its data file: every byte in it was sent by the client
        for exactly that position. Its expiry restarts, so its client can
        still resume it. Records that still exist are left alone.
        """
        if not isinstance(self.data, InfoKeeper):
            return []
        rebuilt = []
        now = time.time()
        for upload_id in self.data.upload_ids():
            if self.records.get(upload_id) is not None:
                continue
            info = self.data.read_info(upload_id)
            size = self.data.size(upload_id)
            if info is None or size is None or info.get("id") != upload_id:
                continue
            record = UploadRecord.from_redis(info)
            if record.state is State.UPLOADING:
                record.offset = size if record.length is None else min(size, record.length)
                record.expires_at = max(record.expires_at, now + self.expiry)
            elif record.state is State.COMPLETE:
                record.offset = record.length or size
            else:
                continue
            rebuilt.append(upload_id)
            if not dry_run:
                self.records.create(record)
                if record.state is State.UPLOADING:
                    self.reserve_rebuilt(record)
        return rebuilt

    def reserve_rebuilt(self, record: UploadRecord) -> None:
        """Count a rebuilt upload against its owner's limits without refusing it."""
        if record.quota_key and any(self.quotas.for_record(record)):
            self.records.reserve(record.quota_key, record.id, self.reserved_length(record), max_uploads=0, max_bytes=0)

    def _sweep_orphans(self, now: float) -> int:
        """Delete data that no record or record copy claims and that is older than the expiry delay.

        Such data is left by a worker killed while writing the first chunk of
        a new legacy upload: the record is stored only when that chunk commits.
        """
        if not isinstance(self.data, InfoKeeper) or not isinstance(self.data, Terminator):
            return 0
        swept = 0
        for upload_id in list(self.data.upload_ids()):
            age = self.data.age(upload_id)
            if age is None or age < self.expiry or self.data.read_info(upload_id) is not None:
                continue
            if self.records.get(upload_id) is None:
                self.data.remove(upload_id)
                swept += 1
        return swept

    @staticmethod
    def _expirable(record: UploadRecord) -> bool:
        """Unfinished uploads expire; so do complete partials, which are only raw material."""
        if record.state is State.UPLOADING:
            return True
        return record.state is State.COMPLETE and record.concat == "partial"

    def remove_data(self, upload_id: str) -> None:
        if isinstance(self.data, Terminator):
            self.data.remove(upload_id)


_services: dict[str, UploadService] = {}


def _creations_key(record: UploadRecord) -> str:
    return f"creations@{record.client}"


def get_service() -> UploadService:
    """The service as the current settings describe it.

    Built on first use and kept until Django announces a settings change
    (see ``conf``); it holds no state of its own between requests.
    """
    service = _services.get("current")
    if service is None:
        service = _services["current"] = _build_service()
    return service


def _forget_service(**kwargs: Any) -> None:
    _services.clear()


setting_changed.connect(_forget_service, dispatch_uid="tusbridge.service")


def _build_service() -> UploadService:
    return UploadService(
        configured_record_store(),
        configured_data_store(),
        expiry=conf.seconds(conf.get("EXPIRY")),
        retention=conf.seconds(conf.get("RETENTION")),
        max_size=int(conf.get("MAX_SIZE") or 0),
        lock_ttl=float(conf.get("LOCK_TTL")),
        lock_wait=float(conf.get("LOCK_WAIT")),
        read_size=int(conf.get("READ_SIZE")),
        idle_timeout=conf.seconds(conf.get("IDLE_TIMEOUT")),
        quotas=Quotas(
            uploads_per_user=int(conf.get("MAX_UPLOADS_PER_USER") or 0),
            bytes_per_user=int(conf.get("MAX_BYTES_PER_USER") or 0),
            uploads_per_address=int(conf.get("MAX_UPLOADS_PER_ADDRESS") or 0),
            bytes_per_address=int(conf.get("MAX_BYTES_PER_ADDRESS") or 0),
            creations_per_minute=int(conf.get("CREATIONS_PER_MINUTE") or 0),
        ),
        progress_interval=float(conf.get("PROGRESS_INTERVAL")),
        progress_bytes=int(conf.get("PROGRESS_BYTES")),
    )
