"""The protocol-neutral upload service.

Both protocols translate their requests into these calls: create an upload,
append a stream at an offset, read its state, complete, terminate, expire.
The rules that keep bytes safe live here once: a write happens only under the
upload's lock, the offset moves only after the bytes reached the data store,
and completion happens once.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.files import File

from . import conf, errors
from .data import Concatenator, DataStore, Terminator, Writer
from .data.filesystem import FileSystemDataStore
from .handover import configured_storage, hand_over
from .record import State, UploadRecord, new_upload_id
from .records import RecordStore
from .records.base import AdvanceResult, AdvanceStatus, ReleaseListener
from .records.redis import RedisRecordStore, client_for
from .signals import upload_completed

logger = logging.getLogger("tusbridge")


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class Digest(Protocol):
    """A running checksum over the bytes of one request."""

    def update(self, data: bytes, /) -> None: ...

    def matches(self) -> bool: ...


@dataclass(frozen=True)
class AppendResult:
    record: UploadRecord
    # Bytes of this request that were stored.
    written: int
    # True for the one request whose bytes completed the upload.
    completed: bool
    # True when the body ended before its announced length (client went away).
    interrupted: bool


class HeldLock:
    """A lock this request holds: renewed while a long body streams in, and
    listening for other requests that want the upload."""

    # A request shorter than this never subscribes to release requests; a
    # waiting request repeats its request, so it is heard once we listen.
    LISTEN_AFTER = 0.2

    def __init__(self, records: RecordStore, upload_id: str, token: str, ttl: float) -> None:
        self.records = records
        self.upload_id = upload_id
        self.token = token
        self.ttl = ttl
        self._acquired = self._renewed = time.monotonic()
        self._listener: ReleaseListener | None = None

    def keep_alive(self) -> None:
        """Renew once a third of the TTL has passed; raise LockLost if someone else has it now."""
        now = time.monotonic()
        if now - self._renewed < self.ttl / 3:
            return
        if not self.records.refresh_lock(self.upload_id, self.token, self.ttl):
            raise errors.LockLost()
        self._renewed = now

    def release_requested(self) -> bool:
        """True when another request asked for the upload (a client that reconnected)."""
        if self._listener is None:
            if time.monotonic() - self._acquired < self.LISTEN_AFTER:
                return False
            self._listener = self.records.listen_for_release(self.upload_id)
        return self._listener.requested()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None


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

    # Reading ----------------------------------------------------------------

    def get(self, upload_id: str, owner: str) -> UploadRecord:
        """The upload as ``owner`` may see it: NotFound for others' uploads, Gone when expired."""
        record = self.records.get(upload_id)
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

    def _missing_partials(self, final: UploadRecord) -> list[str]:
        """Partials of a pending final upload that no longer exist or are no longer usable."""
        missing = []
        for partial_id in dict.fromkeys(final.partials):
            partial = self.records.get(partial_id)
            if partial is None or partial.state in (State.TERMINATED, State.EXPIRED) or (
                partial.state is State.UPLOADING and partial.expires_at <= time.time()
            ):
                missing.append(partial_id)
        return missing

    @staticmethod
    def visible(record: UploadRecord, owner: str) -> bool:
        """Anonymous uploads are reachable by their unguessable URL; others only by their owner."""
        return record.owner == "" or record.owner == owner

    # Creating ---------------------------------------------------------------

    def check_length(self, length: int | None) -> None:
        if length is not None and self.max_size and length > self.max_size:
            raise errors.TooLarge(f"Upload length {length} exceeds the maximum size of {self.max_size} bytes")

    def create(
        self,
        *,
        owner: str,
        protocol: str,
        length: int | None,
        metadata_raw: str = "",
        metadata: dict[str, str | None] | None = None,
        filename: str = "",
        concat: str = "",
        concat_raw: str = "",
        extra: dict[str, Any] | None = None,
    ) -> UploadRecord:
        """Create an upload; one of length 0 is complete at once."""
        self.check_length(length)
        now = time.time()
        record = UploadRecord(
            id=new_upload_id(),
            owner=owner,
            protocol=protocol,
            length=length,
            metadata_raw=metadata_raw,
            metadata=metadata or {},
            filename=filename,
            created_at=now,
            updated_at=now,
            expires_at=now + self.expiry,
            concat=concat,
            concat_raw=concat_raw,
            extra=extra or {},
        )
        self.data.create(record.id)
        try:
            self.records.create(record)
        except BaseException:
            # No record, so no file either: nothing is left half-made.
            self._remove_data(record.id)
            raise
        if length == 0 and self._complete(record.id):
            record = self._finish(record.id) or record
        return record

    def create_final(
        self,
        *,
        owner: str,
        partial_ids: list[str],
        concat_raw: str,
        metadata_raw: str = "",
        metadata: dict[str, str | None] | None = None,
        filename: str = "",
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
        partials = []
        for partial_id in partial_ids:
            try:
                partial = self.get(partial_id, owner)
            except errors.Gone:
                raise errors.InvalidRequest(f"Partial upload {partial_id} is gone (expired or terminated)") from None
            if partial.concat != "partial":
                raise errors.InvalidRequest(f"Upload {partial_id} is not a partial upload (Upload-Concat: partial)")
            partials.append(partial)
        lengths = [p.length for p in partials]
        length = None if None in lengths else sum(lengths)  # type: ignore[arg-type]
        self.check_length(length)
        now = time.time()
        record = UploadRecord(
            id=new_upload_id(),
            owner=owner,
            protocol="tus",
            length=length,
            metadata_raw=metadata_raw,
            metadata=metadata or {},
            filename=filename,
            created_at=now,
            updated_at=now,
            expires_at=now + self.expiry,
            concat="final",
            concat_raw=concat_raw,
            partials=list(partial_ids),
        )
        self.data.create(record.id)
        try:
            self.records.create(record)
            for partial_id in dict.fromkeys(partial_ids):
                self.records.add_waiting_final(partial_id, record.id)
        except BaseException:
            self._remove_data(record.id)
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
            if final.length is None and not self.records.set_length(final_id, length, lock_token=lock.token):
                return None
            assert isinstance(self.data, Concatenator)
            self.data.concatenate(final_id, final.partials)
            result = self._advance(final, length, lock, auto_complete=True)
        if result.status is AdvanceStatus.COMPLETED:
            return self._finish(final_id)
        return None

    # Writing ----------------------------------------------------------------

    @contextmanager
    def locked(self, upload_id: str) -> Iterator[HeldLock]:
        """Hold the upload's lock.

        When another request holds it, ask that request to let go (it stops
        at its next piece, keeps the bytes it stored and unlocks) and wait up
        to ``lock_wait`` seconds; then give up with Locked.
        """
        token = self.records.acquire_lock(upload_id, self.lock_ttl)
        if token is None:
            token = self._wait_for_lock(upload_id)
        lock = HeldLock(self.records, upload_id, token, self.lock_ttl)
        try:
            yield lock
        finally:
            lock.close()
            self.records.release_lock(upload_id, token)

    def _wait_for_lock(self, upload_id: str) -> str:
        deadline = time.monotonic() + self.lock_wait
        next_request = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise errors.Locked(
                    f"Upload is busy: another request holds it and did not release it within {self.lock_wait:g} s"
                )
            if now >= next_request:
                self.records.request_release(upload_id)
                next_request = now + 0.25
            time.sleep(0.02)
            token = self.records.acquire_lock(upload_id, self.lock_ttl)
            if token is not None:
                return token

    def settled(self, upload_id: str, owner: str) -> UploadRecord:
        """The upload once no request is writing it, so its offset is final for now.

        A client that reconnects asks here first; a request still streaming
        its old connection's body is asked to let go instead of being waited out.
        """
        self.get(upload_id, owner)
        with self.locked(upload_id):
            return self.get(upload_id, owner)

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
        auto_complete: bool = True,
    ) -> AppendResult:
        """Store the bytes of ``stream`` at ``offset`` and advance the offset by what was stored.

        ``length`` fixes a deferred length. Bytes that would run past the
        length are refused without being written. A body cut short keeps
        what arrived (unless a digest was given: a partial chunk cannot match
        it). Raises the errors of ``get`` plus OffsetMismatch, ExceedsLength,
        AlreadyComplete, ChecksumMismatch, Locked, LockLost.
        """
        self.get(upload_id, owner)  # cheap refusals before queueing for the lock
        with self.locked(upload_id) as lock:
            record = self.get(upload_id, owner)
            if record.concat == "final":
                raise errors.FinalUploadImmutable()
            if length is not None:
                record = self._fix_length(record, length, lock)
            if record.state is State.COMPLETE:
                raise errors.AlreadyComplete()
            if offset != record.offset:
                raise errors.OffsetMismatch(record.offset)
            limit = self._room(record)
            if content_length is not None and limit is not None and content_length > limit:
                raise self._overflow(record)

            writer = self.data.writer(upload_id, record.offset)
            try:
                try:
                    overflow, interrupted = self._pump(stream, writer, limit, lock, digest)
                except OSError as exc:
                    # The data store failed (disk full, I/O error): keep what
                    # was really written (a checksummed chunk cannot be kept
                    # in part), then report the failure.
                    if digest is not None:
                        writer.rollback()
                    elif writer.written:
                        writer.sync()
                        self._advance(record, writer.written, lock, auto_complete)
                    raise self._storage_error(exc) from exc
                if content_length is not None and writer.written < content_length:
                    interrupted = True
                if overflow:
                    writer.rollback()
                    raise self._overflow(record)
                if digest is not None and (interrupted or not digest.matches()):
                    # The chunk was written in place and is cut off again.
                    # Staging it in a side file would cost a second write of
                    # every byte on the (usual) success path; truncating costs
                    # one ftruncate on the rare failure, and the offset in the
                    # record never counted these bytes anyway.
                    writer.rollback()
                    raise errors.ChecksumMismatch()
                writer.sync()
            finally:
                writer.close()
            result = self._advance(record, writer.written, lock, auto_complete)
            written = writer.written
        record.offset = result.offset
        completed = result.status is AdvanceStatus.COMPLETED
        if completed:
            record = self._finish(upload_id) or record
        return AppendResult(record=record, written=written, completed=completed, interrupted=interrupted)

    def _room(self, record: UploadRecord) -> int | None:
        """How many more bytes this upload may take."""
        if record.length is not None:
            return record.length - record.offset
        if self.max_size:
            return self.max_size - record.offset
        return None

    def _overflow(self, record: UploadRecord) -> errors.UploadError:
        if record.length is None:
            return errors.TooLarge(f"The upload exceeds the maximum size of {self.max_size} bytes")
        return errors.ExceedsLength(
            f"The request body runs past the upload's length of {record.length} bytes (offset {record.offset})"
        )

    def _pump(
        self,
        stream: Readable,
        writer: Writer,
        limit: int | None,
        lock: HeldLock,
        digest: Digest | None,
    ) -> tuple[bool, bool]:
        """Copy the stream in bounded pieces; return (overflowed, interrupted).

        Stops early, keeping what it stored, when another request asks for
        the upload, when the client goes away, or when a stream that reads
        with a timeout (see ``tus.body``) stays silent for ``idle_timeout``.
        """
        idle_since: float | None = None
        while True:
            if lock.release_requested():
                return False, True
            want = self.read_size if limit is None else min(self.read_size, limit - writer.written)
            try:
                # A full upload reads one more byte: any means the client sent too much.
                piece = stream.read(want if want > 0 else 1)
            except TimeoutError:
                # No byte for a moment: a chance to hear release requests.
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= self.idle_timeout:
                    return False, True
                lock.keep_alive()
                continue
            except OSError:
                # The client went away (reset, truncated body).
                return False, True
            idle_since = None
            if want <= 0:
                return bool(piece), False
            if not piece:
                return False, False
            lock.keep_alive()
            writer.write(piece)
            if digest is not None:
                digest.update(piece)

    def _advance(self, record: UploadRecord, written: int, lock: HeldLock, auto_complete: bool) -> AdvanceResult:
        now = time.time()
        result = self.records.advance(
            record.id,
            expected=record.offset,
            new=record.offset + written,
            lock_token=lock.token,
            now=now,
            expires_at=now + self.expiry,
            auto_complete=auto_complete,
        )
        if result.status is AdvanceStatus.LOCK_LOST:
            raise errors.LockLost()
        if result.status is AdvanceStatus.MISSING:
            raise errors.NotFound()
        if not result.ok:
            raise errors.OffsetMismatch(result.offset)
        return result

    def _fix_length(self, record: UploadRecord, length: int, lock: HeldLock) -> UploadRecord:
        if record.length == length:
            return record
        if record.length is not None:
            raise errors.InvalidRequest("Upload-Length cannot change once it is set")
        if length < record.offset:
            raise errors.InvalidRequest("Upload-Length is smaller than the bytes already uploaded")
        self.check_length(length)
        if not self.records.set_length(record.id, length, lock_token=lock.token):
            raise errors.InvalidRequest("Upload-Length cannot change once it is set")
        record.length = length
        return record

    @staticmethod
    def _storage_error(exc: OSError) -> errors.UploadError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errors.StorageFull()
        return errors.UploadError(f"The upload data could not be written: {exc.strerror or exc}")

    # Completing -------------------------------------------------------------

    def complete(self, upload_id: str, owner: str) -> UploadRecord:
        """Complete an upload whose bytes have all arrived (protocols that confirm explicitly)."""
        record = self.get(upload_id, owner)
        if record.state is State.COMPLETE:
            raise errors.AlreadyComplete()
        if not self._complete(upload_id):
            current = self.get(upload_id, owner)
            if current.state is State.COMPLETE:
                raise errors.AlreadyComplete()
            raise errors.NotComplete()
        return self._finish(upload_id) or record

    def _complete(self, upload_id: str) -> bool:
        """Mark complete; True only for the one caller that made the change."""
        result = self.records.mark_complete(upload_id, now=time.time())
        return result.status is AdvanceStatus.COMPLETED

    def _finish(self, upload_id: str) -> UploadRecord | None:
        """Hand the file to the configured Storage and announce it; runs once per upload."""
        record = self.records.get(upload_id)
        if record is None:
            return None
        if record.concat == "partial":
            return self._finish_partial(record)
        storage = configured_storage()
        with self.data.open(upload_id) as fh:
            file = File(fh, name=record.filename or upload_id)
            if storage is not None:
                try:
                    record.stored_name = hand_over(record, file, storage)
                    self.records.update(upload_id, stored_name=record.stored_name)
                except Exception:
                    # The bytes stay in the upload directory; nothing is lost.
                    logger.exception("tusbridge: handing upload %s to storage failed", upload_id)
                file.seek(0)
            upload_completed.send(sender=type(self), upload=record, file=file)
        if record.stored_name:
            self._remove_data(upload_id)
        return record

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

    def terminate(self, upload_id: str, owner: str) -> None:
        """Delete the upload's data; the id answers Gone for the retention period."""
        self.get(upload_id, owner)
        with self.locked(upload_id):
            self.get(upload_id, owner)
            self._remove_data(upload_id)
            self.records.retire(upload_id, State.TERMINATED, keep_for=self.retention)

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
                return expired
            for upload_id in due:
                token = self.records.acquire_lock(upload_id, self.lock_ttl)
                if token is None:
                    skipped.add(upload_id)
                    continue
                try:
                    record = self.records.get(upload_id)
                    if record is None or not self._expirable(record):
                        self.records.unindex([upload_id])
                    elif record.expires_at > now:
                        self.records.reindex(upload_id, record.expires_at)
                    elif record.concat == "final" and not self._missing_partials(record):
                        # Its partials are alive, so the final upload waits with them.
                        self.records.reindex(upload_id, now + self.expiry)
                    else:
                        self._remove_data(upload_id)
                        self.records.retire(upload_id, State.EXPIRED, keep_for=self.retention)
                        expired += 1
                finally:
                    self.records.release_lock(upload_id, token)

    @staticmethod
    def _expirable(record: UploadRecord) -> bool:
        """Unfinished uploads expire; so do complete partials, which are only raw material."""
        if record.state is State.UPLOADING:
            return True
        return record.state is State.COMPLETE and record.concat == "partial"

    def _remove_data(self, upload_id: str) -> None:
        if isinstance(self.data, Terminator):
            self.data.remove(upload_id)

    @property
    def can_terminate(self) -> bool:
        return isinstance(self.data, Terminator)

    @property
    def can_concatenate(self) -> bool:
        return isinstance(self.data, Concatenator)


_stores: dict[tuple[Any, ...], RedisRecordStore] = {}


def get_service() -> UploadService:
    """The service as the current settings describe it (read on every request)."""
    url, timeout, prefix = conf.get("REDIS_URL"), float(conf.get("REDIS_TIMEOUT")), conf.get("KEY_PREFIX")
    key = (url, timeout, prefix)
    records = _stores.get(key)
    if records is None:
        records = _stores[key] = RedisRecordStore(client_for(url, timeout), prefix)
    return UploadService(
        records,
        FileSystemDataStore(conf.upload_dir(), fsync=bool(conf.get("FSYNC"))),
        expiry=conf.seconds(conf.get("EXPIRY")),
        retention=conf.seconds(conf.get("RETENTION")),
        max_size=int(conf.get("MAX_SIZE") or 0),
        lock_ttl=float(conf.get("LOCK_TTL")),
        lock_wait=float(conf.get("LOCK_WAIT")),
        read_size=int(conf.get("READ_SIZE")),
        idle_timeout=conf.seconds(conf.get("IDLE_TIMEOUT")),
    )
