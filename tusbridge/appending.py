"""One request's write to an upload, from taking the lock to commit or abort.

Model: lock, write, advance, unlock. The session gets the stores and the
limits it needs, never the service; ``commit`` says whether this write
completed the upload, and the caller finishes it. What a protocol tracks
about the bytes (the legacy protocol's running MD5) rides along as a
``Tracker``; the tus path carries none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from . import errors, shutdown
from .data import DataStore, InfoKeeper, Terminator, Writer
from .locking import HeldLock, KeptLock, LockKeeper, Tracker, hooks, release_tracked
from .offload import run_blocking
from .record import UploadRecord
from .records import RecordStore
from .records.base import AdvanceResult, AdvanceStatus

logger = logging.getLogger("tusbridge")

T = TypeVar("T")

# The first buffer a body is read into (see ``AppendSession.pump``).
FIRST_BUFFER = 64 * 1024

# A body read on an event loop is written in batches of up to this many bytes,
# or of whatever arrived in FLUSH_INTERVAL seconds, so that a slow client's many
# small pieces cost few hand-overs to a thread.
FLUSH_SIZE = 256 * 1024
FLUSH_INTERVAL = 1.0

# Record fields that change with every write: not part of the copy kept beside the data.
_VOLATILE_FIELDS = ("offset", "md5_state", "md5_offset", "updated_at")


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class AsyncReadable(Protocol):
    """A request body that arrives on an event loop (see ``tusbridge.asgi``)."""

    async def read(self, size: int, timeout: float, /) -> bytes:
        """Up to ``size`` bytes; b"" at the end of the body.

        Raises TimeoutError when nothing arrived within ``timeout`` seconds,
        and OSError when the client went away.
        """
        ...


class Digest(Protocol):
    """A running checksum over the bytes of one request."""

    def update(self, data: bytes, /) -> None: ...

    def matches(self) -> bool: ...


@dataclass(frozen=True)
class WriteLimits:
    """The settings a write follows."""

    # Seconds an idle upload lives on after a write (when the write slides expiry).
    expiry: float
    # Largest piece read from a body at once.
    read_size: int
    # Seconds a body may stay silent before the client counts as gone.
    idle_timeout: float
    # A body that streams in counts its bytes (advances the offset) at least
    # this often, and after this many bytes, so that a killed request loses
    # at most that much (see ``AppendSession.count_progress``).
    progress_interval: float = 1.0
    progress_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class WriteRules:
    """How a protocol's writes treat the upload."""

    # Reaching the length completes the upload (tus); else the client confirms completion (legacy).
    auto_complete: bool = True
    # Every write restarts the expiry delay (tus); else the upload expires a fixed time after creation (legacy).
    slide_expiry: bool = True
    # A body read without a checksum counts its bytes while it streams (tus); else a
    # request's bytes count all together or not at all (legacy chunks).
    count_while_streaming: bool = True


TUS_RULES = WriteRules()


@dataclass(frozen=True)
class AppendResult:
    record: UploadRecord
    # Bytes of this request that were stored.
    written: int
    # True for the one request whose bytes completed the upload: its caller finishes it.
    completed: bool
    # True when the body ended before its announced length (client went away).
    interrupted: bool = False
    # True when this write set a deferred length.
    length_set: bool = False


def advance_error(result: AdvanceResult) -> errors.UploadError:
    """The error that explains a refused offset advance."""
    if result.status is AdvanceStatus.LOCK_LOST:
        return errors.LockLost()
    if result.status is AdvanceStatus.MISSING:
        return errors.NotFound()
    if result.status is AdvanceStatus.LENGTH_MISMATCH:
        return errors.InvalidRequest("Upload-Length cannot change once it is set")
    return errors.OffsetMismatch(result.offset)


def keep_record_copy(data: DataStore, record: UploadRecord) -> None:
    """Store the copy of ``record`` that a store keeps beside the data (see ``InfoKeeper``), if it keeps one:
    what does not change with every write."""
    if isinstance(data, InfoKeeper):
        info = record.to_redis()
        for volatile in _VOLATILE_FIELDS:
            info.pop(volatile, None)
        data.write_info(record.id, info)


def _read(read: Callable[[Any], T], arg: Any) -> T:
    """Call ``read(arg)``; a read timeout that a wrapper raised as another OSError is raised as TimeoutError."""
    try:
        return read(arg)
    except OSError as exc:
        if not isinstance(exc, TimeoutError) and isinstance(exc.__cause__ or exc.__context__, TimeoutError):
            raise TimeoutError(str(exc)) from exc
        raise


class AppendSession:
    """Exclusive write access to one upload at one offset.

    Opening it took the upload's lock and checked the offset. Bytes go
    straight into the data store; they count only when ``commit`` advances
    the offset, and ``abort`` cuts them off again. A session for a new upload
    stores no record until it commits, so an aborted one leaves nothing.
    """

    def __init__(
        self,
        records: RecordStore,
        data: DataStore,
        limits: WriteLimits,
        record: UploadRecord,
        lock: HeldLock,
        writer: Writer,
        *,
        rules: WriteRules,
        new: bool = False,
        new_length: int | None = None,
        max_length: int | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.records = records
        self.data = data
        self.limits = limits
        self.record = record
        self.lock = lock
        self.writer = writer
        self.rules = rules
        # A new upload's record is stored only when the session commits.
        self.new = new
        # A deferred length this request sets; stored with the offset at commit,
        # so a refused request leaves the upload as it was.
        self.new_length = new_length
        # The most a deferred-length upload may grow to (None: no limit).
        self.max_length = max_length
        self.tracker = tracker
        self._open = True
        self._created = False
        self._committed = False
        # Bytes of this request already counted by ``count_progress``, and when it last counted.
        self._counted = 0
        self._counted_at = time.monotonic()
        # The body's announced length, when known (see ``_count_if_due``).
        self.body_length: int | None = None

    @property
    def upload_id(self) -> str:
        return self.record.id

    @property
    def written(self) -> int:
        """Bytes of this request stored so far, counted or not."""
        return self._counted + self.writer.written

    @property
    def uncounted(self) -> int:
        """Bytes stored since the offset last moved: what ``abort`` cuts off."""
        return self.writer.written

    @property
    def room(self) -> int | None:
        """How many more bytes the upload may take from this session."""
        record = self.record
        length = record.length if self.new_length is None else self.new_length
        if length is None:
            length = self.max_length
        if length is not None:
            return length - record.offset - self.uncounted
        return None

    def read_back(self, size: int = 1024 * 1024) -> Iterator[bytes]:
        """The bytes written since the offset last moved (for a caller that must move them to another upload)."""
        remaining = self.uncounted
        with self.data.open(self.record.id) as fh:
            fh.seek(self.record.offset)
            while remaining > 0 and (piece := fh.read(min(size, remaining))):
                remaining -= len(piece)
                yield piece

    def must_stop(self) -> bool:
        """Whether the body should stop here: another request wants the upload, or the process is stopping."""
        return self.lock.release_requested() or shutdown.stopping()

    def write(self, data: bytes | memoryview) -> None:
        """Store bytes at the session's end."""
        self.lock.keep_alive()
        self.writer.write(data)
        if self.tracker is not None:
            self.tracker.update(data)

    def pump(self, stream: Readable, digest: Digest | None, *, body_length: int | None = None) -> tuple[bool, bool]:
        """Copy a stream in bounded pieces; return (overflowed, interrupted).

        Stops early, keeping what it stored, when another request asks for
        the upload, when the process is stopping (``shutdown``), when the
        client goes away, or when a stream that reads with a timeout (see
        ``tus.body``) stays silent for the idle timeout.
        """
        self.body_length = body_length
        read_size, idle_timeout = self.limits.read_size, self.limits.idle_timeout
        idle_since: float | None = None
        # A stream that can fill a buffer is read into one, reused for every piece. It
        # starts small and grows while reads fill it: a slow client's upload in flight
        # keeps a small buffer, a fast one's soon reads read_size at a time.
        readinto = getattr(stream, "readinto", None)
        buffer = memoryview(bytearray(min(read_size, FIRST_BUFFER))) if readinto is not None else None
        while True:
            if self.must_stop():
                self._store_buffered(stream, digest)
                return False, True
            room = self.room
            want = read_size if room is None else min(read_size, room)
            try:
                piece: bytes | memoryview
                if buffer is not None and want > 0:
                    piece = buffer[: _read(readinto, buffer[:want])]
                else:
                    # A full upload reads one more byte: any means the client sent too much.
                    piece = _read(stream.read, want if want > 0 else 1)
            except TimeoutError:
                # No byte for a moment: a chance to hear release requests.
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= idle_timeout:
                    self._store_buffered(stream, digest)
                    return False, True
                self.lock.keep_alive()
                self._count_if_due(digest, silent=True)
                continue
            except OSError:
                # The client went away (reset, truncated body).
                return False, True
            idle_since = None
            if want <= 0:
                return bool(piece), False
            if not piece:
                return False, False
            self._store(piece, digest)
            if buffer is not None and len(piece) == len(buffer) < read_size:
                buffer = memoryview(bytearray(min(read_size, 4 * len(buffer))))

    async def pump_async(
        self, body: AsyncReadable, digest: Digest | None, *, poll_interval: float, body_length: int | None = None
    ) -> tuple[bool, bool]:
        """``pump`` for a body read on an event loop; the blocking writes run on ``offload``'s threads.

        The same stops as ``pump``: a release request, the client gone, a
        client silent for the idle timeout (``body`` reads time out every
        ``poll_interval`` seconds). What arrived is written before it returns.
        """
        self.body_length = body_length
        pending = bytearray()
        try:
            return await self._pump_async(body, digest, poll_interval, pending)
        finally:
            if pending and self._open:
                await run_blocking(self._store, bytes(pending), digest)

    async def _pump_async(
        self, body: AsyncReadable, digest: Digest | None, poll_interval: float, pending: bytearray
    ) -> tuple[bool, bool]:
        read_size, idle_timeout = self.limits.read_size, self.limits.idle_timeout
        idle_since: float | None = None
        flushed_at = time.monotonic()
        while True:
            if self.must_stop():
                return False, True
            room = self.room
            want = read_size if room is None else min(read_size, room - len(pending))
            try:
                # A full upload reads one more byte: any means the client sent too much.
                piece = await body.read(want if want > 0 else 1, poll_interval)
            except TimeoutError:
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= idle_timeout:
                    return False, True
                if pending:
                    flushed_at = await self._flush(pending, digest)
                if self.uncounted and digest is None:
                    await run_blocking(self._count_if_due, digest, silent=True)
                elif self.lock.needs_renewal():
                    await run_blocking(self.lock.keep_alive)
                continue
            except OSError:
                return False, True
            idle_since = None
            if want <= 0:
                return bool(piece), False
            if not piece:
                return False, False
            pending += piece
            if len(pending) >= FLUSH_SIZE or time.monotonic() - flushed_at >= FLUSH_INTERVAL:
                flushed_at = await self._flush(pending, digest)

    async def _flush(self, pending: bytearray, digest: Digest | None) -> float:
        """Write what gathered in ``pending`` (then empty) on a thread; return when that was done."""
        data = bytes(pending)
        pending.clear()
        await run_blocking(self._store, data, digest)
        return time.monotonic()

    def _store(self, data: bytes | memoryview, digest: Digest | None) -> None:
        self.write(data)
        if digest is not None:
            digest.update(data)
        self._count_if_due(digest)

    def _count_if_due(self, digest: Digest | None, *, silent: bool = False) -> None:
        """Count the bytes so far when the interval or the byte budget has passed (only without a checksum).

        Not once the announced body is all here: its commit comes next.
        """
        if digest is not None or not self.rules.count_while_streaming or self.new or not self.uncounted:
            return
        if self.body_length is not None and self.written >= self.body_length:
            return
        due = time.monotonic() - self._counted_at >= self.limits.progress_interval
        if silent or due or self.uncounted >= self.limits.progress_bytes:
            self.count_progress()

    def count_progress(self) -> None:
        """Advance the offset over the bytes written so far, keeping the lock, while the body goes on.

        A request killed after this loses only what follows. The write that
        reaches the upload's length is left to ``commit``, which completes
        the upload. A refused advance raises, as in ``commit``; the bytes
        since the last count are then cut off by ``abort``.
        """
        record = self.record
        new_offset = record.offset + self.uncounted
        length = record.length if self.new_length is None else self.new_length
        if length is not None and new_offset >= length:
            return
        self.writer.sync()
        now = time.time()
        sent_at = time.monotonic()
        result = self.records.advance(
            record.id,
            expected=record.offset,
            new=new_offset,
            lock_token=self.lock.token,
            now=now,
            expires_at=now + self.limits.expiry if self.rules.slide_expiry else None,
            auto_complete=False,
            keep_lock_for=self.lock.ttl,
        )
        if not result.ok:
            raise advance_error(result)
        self.lock.renewed(sent_at)
        if result.release_wanted:
            self.lock.release_wanted()
        self._counted += self.uncounted
        self._counted_at = time.monotonic()
        record.offset = result.offset
        record.updated_at = now
        if self.rules.slide_expiry:
            record.expires_at = now + self.limits.expiry
        # What is counted stays: the next abort cuts back to here.
        self.writer.close()
        self.writer = self.data.writer(record.id, record.offset)

    def _store_buffered(self, stream: Readable, digest: Digest | None) -> None:
        """Before stopping early, write what the server received but no read returned yet."""
        drain = getattr(stream, "drain", None)
        if drain is None:
            return
        data = drain()
        room = self.room
        if room is not None:
            data = data[: max(room, 0)]
        if data:
            self.write(data)
            if digest is not None:
                digest.update(data)

    def commit(self, *, interrupted: bool = False, keep_lock: bool = False) -> AppendResult:
        """Make the written bytes count: advance the offset and let go of the lock.

        With ``keep_lock`` the lock is kept for the client's next request
        (see ``locking.LockKeeper``), unless the upload completes or another
        request asked for it. The write that completes the upload keeps the
        lock until the file is handed over (``AppendResult.completed``: the
        caller finishes the upload, then calls ``release``), so that a DELETE
        cannot take the data from under it.

        A failure before the advance, or a definite refusal of it while this
        request still holds the lock, cuts the bytes off again. Otherwise they
        stay: when the store gave no answer it may have carried the advance
        out, and when the lock was lost another writer owns the file now.
        Bytes past the recorded offset are cut off by the next writer, under
        the lock, when it opens the file (or counted by a rebuild after Redis
        lost its data: they are the client's bytes at their places).
        """
        record = self.record
        try:
            self.writer.sync()
            if self.new:
                self.records.create(record)
                self._created = True
                keep_record_copy(self.data, record)
        except BaseException:
            self.abort()
            raise
        new_offset = record.offset + self.uncounted
        length = record.length if self.new_length is None else self.new_length
        completes = self.rules.auto_complete and length is not None and new_offset == length
        keep_lock = keep_lock and not completes
        fields = self.tracker.fields_for_advance(new_offset, keeping=keep_lock) if self.tracker else None
        now = time.time()
        sent_at = time.monotonic()
        try:
            result = self.records.advance(
                record.id,
                expected=record.offset,
                new=new_offset,
                lock_token=self.lock.token,
                now=now,
                expires_at=now + self.limits.expiry if self.rules.slide_expiry else None,
                auto_complete=self.rules.auto_complete,
                fields=fields,
                length=self.new_length,
                release_lock=not completes,
                keep_lock_for=self.lock.ttl if keep_lock else None,
            )
        except BaseException:
            self._close()
            raise
        if not result.ok:
            if result.status is AdvanceStatus.LOCK_LOST:
                self._close()
            else:
                # A definite refusal while this request still holds the lock:
                # the offset did not move, so the bytes are cut off again.
                self.abort()
            raise advance_error(result)
        if result.lock_kept:
            self.lock.renewed(sent_at)
        elif not completes:
            self.lock.released_by_store()
        written = self.written
        record.offset = result.offset
        record.updated_at = now
        if self.rules.slide_expiry:
            record.expires_at = now + self.limits.expiry
        for name, value in (fields or {}).items():
            setattr(record, name, value)
        if self.new_length is not None:
            record.length = self.new_length
        completed = result.status is AdvanceStatus.COMPLETED
        self._committed = True
        if result.lock_kept and not result.release_wanted and hooks.keeper is not None:
            self._keep(hooks.keeper)
        elif not completed:
            self._close()
        return AppendResult(
            record=record,
            written=written,
            completed=completed,
            interrupted=interrupted,
            length_set=self.new_length is not None,
        )

    def release(self) -> None:
        """Let go of the lock and close (after a completed upload was finished); safe to call twice."""
        self._close()

    def abort(self) -> None:
        """Cut off what this session wrote and let go; after a commit only let go."""
        if not self._open:
            return
        if self._committed:
            self._close()
            return
        try:
            if self.new:
                if isinstance(self.data, Terminator):
                    self.data.remove(self.record.id)
                if self._created:
                    self.records.delete(self.record.id)
                if self.record.quota_key:
                    self.records.unreserve(self.record.quota_key, self.record.id)
            else:
                self.writer.rollback()
        except OSError as exc:
            # The disk failing again (EIO); the next writer cuts the file back anyway.
            logger.warning("tusbridge: could not cut upload %s back: %s", self.record.id, exc)
        finally:
            if self.tracker is not None:
                self.tracker.discard()
            self._close()

    def _keep(self, keeper: LockKeeper) -> None:
        """Close the file but hand the lock, the record and the tracker on to the client's next request."""
        self._open = False
        try:
            self.writer.close()
        except BaseException:
            release_tracked(self.lock, self.tracker, self.record.offset)
            raise
        keeper.keep(KeptLock(self.lock, self.record, self.tracker))

    def _close(self) -> None:
        if self._open:
            self._open = False
            try:
                self.writer.close()
            finally:
                release_tracked(self.lock, self.tracker, self.record.offset)
