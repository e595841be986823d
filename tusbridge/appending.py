"""One request's write to an upload, from taking the lock to commit or abort."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import keeping, md5state
from .data import Writer
from .locking import HeldLock
from .md5state import ResumableMD5
from .offload import run_blocking
from .record import UploadRecord
from .records.base import AdvanceStatus, LockAttempt

logger = logging.getLogger("tusbridge")

T = TypeVar("T")

# The first buffer a body is read into (see ``AppendSession.pump``).
FIRST_BUFFER = 64 * 1024

# A body read on an event loop is written in batches of up to this many bytes,
# or of whatever arrived in FLUSH_INTERVAL seconds, so that a slow client's many
# small pieces cost few hand-overs to a thread.
FLUSH_SIZE = 256 * 1024
FLUSH_INTERVAL = 1.0

# A chunk that goes on with a kept lock is hashed after its response, while the
# client prepares the next one, if it is no longer than this; a longer one is
# hashed as it is written. Hashing a large chunk later saves the client nothing
# (its next chunk is on the way already, and waits) and costs a copy of it.
MAX_DEFERRED_MD5 = 1 << 20

if TYPE_CHECKING:
    from .service import UploadService


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
class AppendResult:
    record: UploadRecord
    # Bytes of this request that were stored.
    written: int
    # True for the one request whose bytes completed the upload.
    completed: bool
    # True when the body ended before its announced length (client went away).
    interrupted: bool = False


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
        service: UploadService,
        record: UploadRecord,
        lock: HeldLock,
        writer: Writer,
        *,
        auto_complete: bool,
        slide_expiry: bool,
        md5: ResumableMD5 | None,
        new: bool,
        new_length: int | None = None,
        defer_md5: bool = False,
        md5_stored: bool = True,
    ) -> None:
        self.service = service
        self.record = record
        self.lock = lock
        self.writer = writer
        self.auto_complete = auto_complete
        self.slide_expiry = slide_expiry
        self.md5 = md5
        # With ``defer_md5`` the bytes are hashed after the response, while the
        # lock is kept (``keeping``); until then they wait here.
        self.unhashed: list[bytes] | None = [] if defer_md5 and md5 is not None else None
        self.deferred = 0  # bytes put in ``unhashed`` so far; beyond MAX_DEFERRED_MD5 they are hashed at once
        # Whether the record holds ``md5``'s state at ``record.offset`` (a kept lock's may not, yet).
        self.md5_stored = md5_stored
        self.new = new
        # A deferred length this request sets; stored with the offset at commit,
        # so a refused request leaves the upload as it was.
        self.new_length = new_length
        self._open = True
        self._created = False

    @property
    def upload_id(self) -> str:
        return self.record.id

    @property
    def written(self) -> int:
        return self.writer.written

    @property
    def room(self) -> int | None:
        """How many more bytes the upload may take from this session."""
        record = self.record
        length = record.length if self.new_length is None else self.new_length
        if length is None:
            length = self.service.deferred_limit(record)
        if length is not None:
            return length - record.offset - self.written
        return None

    def read_back(self, size: int = 1024 * 1024) -> Iterator[bytes]:
        """The bytes written so far (for a caller that must move them to another upload)."""
        remaining = self.written
        with self.service.data.open(self.record.id) as fh:
            fh.seek(self.record.offset)
            while remaining > 0 and (piece := fh.read(min(size, remaining))):
                remaining -= len(piece)
                yield piece

    def write(self, data: bytes | memoryview, *, hashed: bool = False) -> None:
        """Store bytes at the session's end; ``hashed``: the running MD5 has them already."""
        self.lock.keep_alive()
        self.writer.write(data)
        if self.md5 is not None and not hashed:
            if self.unhashed is not None and self.deferred < MAX_DEFERRED_MD5:
                self.unhashed.append(data if type(data) is bytes else bytes(data))
                self.deferred += len(data)
            else:
                self._hash_waiting()
                self.md5.update(data)

    def adopt_md5(self, md5: ResumableMD5, base: bytes) -> bool:
        """Continue with ``md5``, begun from ``base`` ahead of the session, if that is this upload's state.

        True when adopted: ``md5`` covers the bytes the caller hashed, which
        it then writes with ``hashed=True``.
        """
        if self.md5 is None or self.written or self.md5.state != base:
            return False
        self.md5 = md5
        return True

    def pump(self, stream: Readable, digest: Digest | None) -> tuple[bool, bool]:
        """Copy a stream in bounded pieces; return (overflowed, interrupted).

        Stops early, keeping what it stored, when another request asks for
        the upload, when the client goes away, or when a stream that reads
        with a timeout (see ``tus.body``) stays silent for the idle timeout.
        """
        read_size, idle_timeout = self.service.read_size, self.service.idle_timeout
        idle_since: float | None = None
        # A stream that can fill a buffer is read into one, reused for every piece. It
        # starts small and grows while reads fill it: a slow client's upload in flight
        # keeps a small buffer, a fast one's soon reads read_size at a time.
        readinto = getattr(stream, "readinto", None)
        buffer = memoryview(bytearray(min(read_size, FIRST_BUFFER))) if readinto is not None else None
        while True:
            if self.lock.release_requested():
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
                continue
            except OSError:
                # The client went away (reset, truncated body).
                return False, True
            idle_since = None
            if want <= 0:
                return bool(piece), False
            if not piece:
                return False, False
            self.write(piece)
            if digest is not None:
                digest.update(piece)
            if buffer is not None and len(piece) == len(buffer) < read_size:
                buffer = memoryview(bytearray(min(read_size, 4 * len(buffer))))

    async def pump_async(
        self, body: AsyncReadable, digest: Digest | None, *, poll_interval: float
    ) -> tuple[bool, bool]:
        """``pump`` for a body read on an event loop; the blocking writes run on ``offload``'s threads.

        The same stops as ``pump``: a release request, the client gone, a
        client silent for the idle timeout (``body`` reads time out every
        ``poll_interval`` seconds). What arrived is written before it returns.
        """
        pending = bytearray()
        try:
            return await self._pump_async(body, digest, poll_interval, pending)
        finally:
            if pending and self._open:
                await run_blocking(self._store, bytes(pending), digest)

    async def _pump_async(
        self, body: AsyncReadable, digest: Digest | None, poll_interval: float, pending: bytearray
    ) -> tuple[bool, bool]:
        read_size, idle_timeout = self.service.read_size, self.service.idle_timeout
        idle_since: float | None = None
        flushed_at = time.monotonic()
        while True:
            if self.lock.release_requested():
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

    def _store(self, data: bytes, digest: Digest | None) -> None:
        self.write(data)
        if digest is not None:
            digest.update(data)

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
        """Make the written bytes count: advance the offset, release the lock, finish if complete.

        With ``keep_lock`` the lock is kept for this thread's next request on
        the same connection (see ``keeping``), unless the upload completes or
        another request asked for it. A kept lock's running MD5 is saved when
        it is let go rather than with every advance.

        A failure before the advance, or a definite refusal of it while this
        request still holds the lock, cuts the bytes off again. Otherwise they
        stay: when Redis gave no answer it may have carried the advance out,
        and when the lock was lost another writer owns the file now. Bytes
        past the recorded offset are cut off by the next writer, under the
        lock, when it opens the file (or counted by a rebuild after Redis lost
        its data: they are the client's bytes at their places).
        """
        service, record = self.service, self.record
        try:
            self.writer.sync()
            if self.new:
                service.store_new(record)
                self._created = True
        except BaseException:
            self.abort()
            raise
        new_offset = record.offset + self.written
        length = record.length if self.new_length is None else self.new_length
        # The request that completes the upload keeps the lock until the file
        # is handed over, so that a DELETE cannot take the data from under it.
        completes = self.auto_complete and length is not None and new_offset == length
        now = time.time()
        sent_at = time.monotonic()
        keep_lock = keep_lock and not completes
        if not keep_lock:
            self._hash_unhashed()
        fields: dict[str, object] | None = None
        if self.md5 is not None and self.unhashed is None:
            fields = md5state.stored_fields(self.md5, new_offset)
        try:
            result = service.records.advance(
                record.id,
                expected=record.offset,
                new=new_offset,
                lock_token=self.lock.token,
                now=now,
                expires_at=now + service.expiry if self.slide_expiry else None,
                auto_complete=self.auto_complete,
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
            service.check_advance(result)
        if result.lock_kept:
            self.lock.renewed(sent_at)
        elif not completes:
            self.lock.released_by_store()
        written = self.written
        record.offset = result.offset
        record.updated_at = now
        if self.slide_expiry:
            record.expires_at = now + service.expiry
        if fields is not None and self.md5 is not None:
            record.md5_state, record.md5_offset = str(fields["md5_state"]), record.offset
            md5state.recent_states.remember(record.id, record.offset, self.md5.state)
        self.md5_stored = fields is not None
        try:
            if self.new_length is not None:
                record.length = self.new_length
                service.length_fixed(record)
            completed = result.status is AdvanceStatus.COMPLETED
            if completed:
                record = service.finish(record.id) or record
        except BaseException:
            self._close()
            raise
        if result.lock_kept and not result.release_wanted:
            self._keep()
        else:
            self._hash_unhashed()
            self._close()
        return AppendResult(record=record, written=written, completed=completed, interrupted=interrupted)

    def abort(self) -> None:
        """Cut off what this session wrote and let go; a no-op after commit."""
        if not self._open:
            return
        try:
            if self.new:
                self.service.remove_data(self.record.id)
                if self._created:
                    self.service.records.delete(self.record.id)
                self.service.unreserve(self.record)
            else:
                self.writer.rollback()
        except OSError as exc:
            # The disk failing again (EIO); the next writer cuts the file back anyway.
            logger.warning("tusbridge: could not cut upload %s back: %s", self.record.id, exc)
        finally:
            self._close()

    def _hash_waiting(self) -> None:
        """Hash the bytes waiting for it, in order, before any that follow them."""
        if self.unhashed and self.md5 is not None:
            for data in self.unhashed:
                self.md5.update(data)
            self.unhashed.clear()

    def _hash_unhashed(self) -> None:
        """Hash the bytes waiting for it and stop deferring; the MD5 is then current again."""
        self._hash_waiting()
        self.unhashed = None

    def _keep(self) -> None:
        """Close the file but hand the lock, record and running MD5 on to this thread's next request."""
        self._open = False
        try:
            self.writer.close()
        except BaseException:
            self._hash_unhashed()
            self._let_go()
            raise
        unhashed, self.unhashed = self.unhashed or [], None
        keeping.keep(keeping.KeptLock(self.lock, self.record, self.md5, unhashed, md5_stored=self.md5_stored))

    def _close(self) -> None:
        if self._open:
            self._open = False
            self.unhashed = None  # what was not hashed by now was not committed either
            try:
                self.writer.close()
            finally:
                self._let_go()

    def _let_go(self) -> None:
        """Release the lock, saving the running MD5 with it if the record does not have it yet."""
        self.lock.release(unsaved_md5=None if self.md5_stored else self.md5, md5_offset=self.record.offset)


class PendingAppend:
    """An ``open_append`` whose lock request was sent ahead (``UploadService.request_append``)."""

    def __init__(
        self, service: UploadService, upload_id: str, owner: str, attempt: LockAttempt, options: dict[str, Any]
    ) -> None:
        self.service = service
        self.upload_id = upload_id
        self.owner = owner
        self.attempt = attempt
        self.options = options

    def open(self) -> AppendSession:
        """The session, as ``open_append`` gives it (waiting for the lock if another request has it)."""
        return self.service.open_append(self.upload_id, self.owner, first_attempt=self.attempt, **self.options)

    def cancel(self) -> None:
        """Not wanted after all: let go of the lock if the request took it, without waiting for it."""
        token, _ = self.attempt()
        if token is not None:
            self.service.records.release_lock(self.upload_id, token)
