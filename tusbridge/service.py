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
from .data import DataStore, Terminator
from .data.filesystem import FileSystemDataStore
from .handover import configured_storage, hand_over
from .record import State, UploadRecord, new_upload_id
from .records import RecordStore
from .records.base import AdvanceResult, AdvanceStatus
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
    """A lock this request holds; renewed while a long body streams in."""

    def __init__(self, records: RecordStore, upload_id: str, token: str, ttl: float) -> None:
        self.records = records
        self.upload_id = upload_id
        self.token = token
        self.ttl = ttl
        self._renewed = time.monotonic()

    def keep_alive(self) -> None:
        """Renew once a third of the TTL has passed; raise LockLost if someone else has it now."""
        now = time.monotonic()
        if now - self._renewed < self.ttl / 3:
            return
        if not self.records.refresh_lock(self.upload_id, self.token, self.ttl):
            raise errors.LockLost()
        self._renewed = now


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
    ) -> None:
        self.records = records
        self.data = data
        self.expiry = expiry
        self.retention = retention
        self.max_size = max_size
        self.lock_ttl = lock_ttl
        self.lock_wait = lock_wait
        self.read_size = read_size

    # Reading ----------------------------------------------------------------

    def get(self, upload_id: str, owner: str) -> UploadRecord:
        """The upload as ``owner`` may see it: NotFound for others' uploads, Gone when expired."""
        record = self.records.get(upload_id)
        if record is None or not self.visible(record, owner):
            raise errors.NotFound()
        if record.state in (State.TERMINATED, State.EXPIRED):
            raise errors.Gone()
        if record.state is State.UPLOADING and record.expires_at <= time.time():
            raise errors.Gone("Upload has expired")
        return record

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

    # Writing ----------------------------------------------------------------

    @contextmanager
    def locked(self, upload_id: str) -> Iterator[HeldLock]:
        """Hold the upload's lock, waiting up to ``lock_wait`` seconds for it."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            token = self.records.acquire_lock(upload_id, self.lock_ttl)
            if token is not None:
                break
            if time.monotonic() >= deadline:
                raise errors.Locked()
            time.sleep(0.05)
        try:
            yield HeldLock(self.records, upload_id, token, self.lock_ttl)
        finally:
            self.records.release_lock(upload_id, token)

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
        writer: Any,
        limit: int | None,
        lock: HeldLock,
        digest: Digest | None,
    ) -> tuple[bool, bool]:
        """Copy the stream in bounded pieces; return (overflowed, interrupted)."""
        while True:
            want = self.read_size if limit is None else min(self.read_size, limit - writer.written)
            if want <= 0:
                # The upload is full: one more byte means the client sent too much.
                try:
                    return bool(stream.read(1)), False
                except OSError:
                    return False, True
            try:
                piece = stream.read(want)
            except OSError:
                # The client went away (reset, timeout, truncated body).
                return False, True
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
                    if record is None or record.state is not State.UPLOADING:
                        self.records.unindex([upload_id])
                    elif record.expires_at > now:
                        self.records.reindex(upload_id, record.expires_at)
                    else:
                        self._remove_data(upload_id)
                        self.records.retire(upload_id, State.EXPIRED, keep_for=self.retention)
                        expired += 1
                finally:
                    self.records.release_lock(upload_id, token)

    def _remove_data(self, upload_id: str) -> None:
        if isinstance(self.data, Terminator):
            self.data.remove(upload_id)

    @property
    def can_terminate(self) -> bool:
        return isinstance(self.data, Terminator)


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
    )
