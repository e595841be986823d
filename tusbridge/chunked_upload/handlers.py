"""Streaming a legacy chunk straight into the upload's data file.

jQuery-File-Upload sends the form fields (``upload_id``...) before the file
part. By the time the file part starts, the multipart parser has read the
``upload_id`` and the request headers carry the Content-Range, so the chunk's
place in the upload is known: this handler takes the upload's lock and
writes the part's bytes at the upload's offset, with no temporary file and
no copy. For an existing upload the lock request is sent when the part
starts, and the part's first bytes (up to ``TUSBRIDGE_READ_SIZE``) are read
and hashed while it travels (from the MD5 state this process stored with
the upload's last chunk, kept only if the record shows the same state);
they are written once the lock is held. Only an ``AppendSession`` is opened,
so if the view then rejects the request the bytes are cut off again and
nothing changed. Whenever that is not possible (fields after the file, no
Content-Range, someone else's upload, a wrong offset...) the handler steps
aside and Django's own handlers receive the part as usual; the view then
reports the problem exactly as it would have.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.http import HttpRequest

from .. import conf, errors, locking, shutdown
from ..appending import AppendSession
from ..bodies import BodyReader, polling_reads, reader_for
from ..permissions import client_address, owner_of
from ..records.base import LockAttempt
from ..service import UploadService
from .exceptions import ChunkedUploadError
from .md5 import ResumableMD5, RunningMD5, available, recent_states
from .models import LEGACY_RULES, legacy_error
from .multipart import ChunkBodyParser

# Seconds a chunk's lock request may wait for its bytes before its reply is read.
LOCK_REPLY_WAIT = 0.05


class ChunkView(Protocol):
    """What the handler needs of the view that installs it (``views.ChunkedUploadView``)."""

    service: UploadService
    field_name: str

    def chunk_span(self, request: HttpRequest) -> tuple[int, int, int] | None: ...

    def max_bytes_before_hooks(self) -> int | None: ...


class DirectChunk:
    """The file part as the view sees it when its bytes already went to the upload."""

    def __init__(
        self,
        name: str,
        size: int,
        session: AppendSession | None,
        content_type: str | None,
        failure: OSError | None = None,
    ) -> None:
        self.name = name
        self.size = size
        # None when the data store failed before the upload could be opened.
        self.session = session
        self.content_type = content_type
        # Set when the data store failed while the part streamed in (disk full...).
        self.failure = failure

    def close(self) -> None:
        """Django closes uploaded files when a request ends badly: the unsaved write is dropped."""
        if self.session is not None:
            self.session.abort()

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """Read the part back (only needed when the view files it under another upload)."""
        if self.session is None:
            return iter(())
        return self.session.read_back(chunk_size or 1024 * 1024)


class DirectChunkHandler(FileUploadHandler):
    def __init__(self, request: HttpRequest, view: ChunkView) -> None:
        super().__init__(request)
        self.view = view
        self.parser: ChunkBodyParser | None = None
        self.session: AppendSession | None = None
        # An existing upload's lock, asked for when the part began (with the
        # upload id and Content-Range). Until the session opens, the part's bytes
        # are held (and hashed ahead from the MD5 state this process last stored
        # for the upload, when it has one).
        self.opening: LockAttempt | None = None
        self.opening_for: tuple[str, int, int] = ("", 0, 0)
        self.held: list[bytes] = []
        self.held_size = 0
        self.md5_base: bytes | None = None
        self.md5_ahead: ResumableMD5 | None = None
        self.file_args: tuple[Any, ...] = ()
        self.file_kwargs: dict[str, Any] = {}
        self.expected = 0
        self.received = 0
        self.failure: OSError | None = None
        self.completed = False

    def install(self) -> None:
        """Put this handler first, and keep the parser reachable so fields read so far can be seen."""
        request = self.request
        request.upload_handlers = [self, *request.upload_handlers]

        def parse_file_upload(meta: Any, post_data: Any) -> Any:
            try:
                length = int(meta.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            stream = post_data
            if length > 0 and post_data is request:
                stream = reader_for(request, length)
                request._read_started = True  # as if Django had read it: request.body is gone now
            if not isinstance(stream, BodyReader):
                return self._parse(meta, stream)
            with polling_reads(request, float(conf.get("POLL_INTERVAL"))):
                return self._parse(meta, _WatchedBody(stream, self.between_reads))

        request.parse_file_upload = parse_file_upload  # type: ignore[method-assign]

    def _parse(self, meta: Any, stream: Any) -> Any:
        request = self.request
        self.parser = ChunkBodyParser(meta, stream, request.upload_handlers, request.encoding, self.view.field_name)
        return self.parser.parse()

    def between_reads(self, silent_for: float) -> None:
        """Called between reads of the body, with how long the client has sent nothing.

        A chunk is stored whole or not at all, so stopping drops it (the view
        answers why): when another request asks for the upload (a client that
        reconnected sends the chunk again), and when the client stays silent
        for TUSBRIDGE_IDLE_TIMEOUT. Meanwhile the lock is kept, so bytes held
        while the lock request travelled are written at the first silence.
        """
        if self.opening is not None and silent_for:
            self._open(step_aside=False)
        session = self.session
        if session is not None and not self.completed and self.failure is None:
            if session.lock.release_requested():
                raise ChunkedUploadError(409, detail="Another request took the upload over; this chunk was not stored")
            if shutdown.stopping():
                raise ChunkedUploadError(503, detail="The server is restarting; send this chunk again")
            if silent_for:
                try:
                    session.lock.keep_alive()
                except errors.UploadError as exc:
                    raise legacy_error(exc) from None
        idle = self.view.service.idle_timeout
        if silent_for and silent_for >= idle:
            raise ChunkedUploadError(408, detail=f"No data for {idle:g} s; this chunk was not stored")

    def _fields(self) -> Any:
        return getattr(self.parser, "_post", None) or {}

    def new_file(
        self, field_name: str, file_name: str, content_type: str, content_length: int | None, *args: Any, **kwargs: Any
    ) -> None:
        super().new_file(field_name, file_name, content_type, content_length, *args, **kwargs)
        if field_name != self.view.field_name or self.session is not None or self.opening is not None:
            return
        span = self.view.chunk_span(self.request)
        if span is None:
            return
        start, end, total = span
        max_bytes = self.view.max_bytes_before_hooks()
        if end < start or end >= total or (max_bytes is not None and total > max_bytes):
            return
        upload_id = self._fields().get("upload_id")
        self.expected = end - start + 1
        if upload_id and self._resume_kept(upload_id, start, total):
            raise StopFutureHandlers()
        locking.hooks.release_kept()  # another upload or offset: a lock kept for this client goes back first
        if upload_id:
            # The lock request travels while the part's bytes arrive and are hashed.
            self.opening = self.view.service.request_lock(upload_id)
            self.opening_for = (upload_id, start, total)
            if available():
                self.md5_base = recent_states.recall(upload_id, start)
                if self.md5_base is not None:
                    self.md5_ahead = ResumableMD5(self.md5_base)
            self.file_args = (field_name, file_name, content_type, content_length, *args)
            self.file_kwargs = kwargs
            raise StopFutureHandlers()
        try:
            if start == 0:
                owner = owner_of(self.request)
                client = "" if owner else client_address(self.request)
                record = self.view.service.new_record(owner=owner, client=client, protocol="legacy", length=total)
                self.session = self.view.service.open_new(record, rules=LEGACY_RULES, tracker=RunningMD5.new(record.id))
        except errors.UploadError:
            self.session = None  # the view will find the same problem and report it
        if self.session is not None:
            raise StopFutureHandlers()

    def _resume_kept(self, upload_id: str, start: int, total: int) -> bool:
        """Open the session with the lock kept from the client's previous chunk, if there is one."""
        kept = locking.claim_kept(upload_id, start)
        if kept is None:
            return False
        try:
            self.session = self.view.service.open_write(
                upload_id, owner_of(self.request), offset=start, length=total, held=kept, rules=LEGACY_RULES
            )
        except errors.UploadError:
            return False  # the lock went back; the ordinary way finds the same problem and reports it
        return True

    def _hold(self, data: bytes) -> None:
        if self.md5_ahead is not None:
            self.md5_ahead.update(data[: max(self.expected - self.held_size, 0)])
        self.held.append(data)
        self.held_size += len(data)

    def _open(self, *, step_aside: bool = True) -> bytes | None:
        """Open the session asked for in ``new_file`` and write the bytes held meanwhile.

        When the upload cannot take the chunk, the handlers after this one
        get the part after all (the held bytes are returned for them) and the
        view reports the problem; without ``step_aside`` (the body is not
        being passed on at that moment) the problem is raised at once.
        """
        opening, self.opening = self.opening, None
        held, self.held = self.held, []
        assert opening is not None
        upload_id, start, total = self.opening_for
        try:
            self.session = self.view.service.open_write(
                upload_id,
                owner_of(self.request),
                offset=start,
                length=total,
                held=opening,
                rules=LEGACY_RULES,
                track=RunningMD5.resume,
            )
        except errors.UploadError as exc:
            # A lock that did not come within TUSBRIDGE_LOCK_WAIT is reported now: stepping
            # aside would have the view wait for it once more, and answer "within 5 s" after 10.
            if not step_aside or isinstance(exc, errors.Locked):
                raise legacy_error(exc) from None
            self._step_aside()
            return b"".join(held)
        except OSError as exc:
            # The data file could not be opened (an I/O error): the part is read and
            # dropped, and the view reports the failure as a failed write.
            self.failure = exc
            return None
        tracker = self.session.tracker
        if self.md5_ahead is not None and self.md5_base is not None and isinstance(tracker, RunningMD5):
            tracker.adopt(self.md5_ahead, self.md5_base, covering=min(self.held_size, self.expected))
        for data in held:
            self._write(data)
        return None

    def _step_aside(self) -> None:
        """Let the handlers after this one take the part after all, as if this one had never claimed it."""
        handlers = self.request.upload_handlers
        for handler in handlers[handlers.index(self) + 1 :]:
            try:
                handler.new_file(*self.file_args, **self.file_kwargs)
            except StopFutureHandlers:
                break

    def _write(self, data: bytes) -> None:
        # Never write past what Content-Range announced; the size check in
        # the view rejects such a part and the session is aborted.
        room = self.expected - self.received
        if room > 0 and self.failure is None and self.session is not None:
            try:
                self.session.write(data[:room])
            except OSError as exc:
                # Read the rest of the part without writing; the view reports it.
                self.failure = exc
        self.received += len(data)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if self.opening is not None:
            self._hold(raw_data)
            # The lock's reply is read once the chunk (or a read's worth of it) is
            # here, or sooner if its bytes trickle in: until then it holds one of
            # the process's few Redis connections.
            if (
                self.held_size < min(self.expected, self.view.service.read_size)
                and time.monotonic() - self.opening.sent_at < LOCK_REPLY_WAIT
            ):
                return None
            return self._open()
        if self.session is None and self.failure is None:
            return raw_data
        self._write(raw_data)
        return None

    def file_complete(self, file_size: int) -> DirectChunk | None:
        if self.opening is not None:
            # A part shorter than its Content-Range. Should the upload refuse it,
            # the handlers after this one get the part too late for its bytes,
            # but the view reports the upload's refusal before any size.
            self._open()
        if self.session is None and self.failure is None:
            return None
        self.completed = True
        return DirectChunk(self.file_name or "", file_size, self.session, self.content_type, self.failure)

    def upload_interrupted(self) -> None:
        # Django says so when the last part of the body was cut short; that
        # concerns our part only if it was the one still open.
        if not self.completed:
            self.abort()

    def abort(self) -> None:
        if self.opening is not None:
            # Asked for but never opened (the body broke off first): let the lock go.
            opening, self.opening = self.opening, None
            self.held = []
            self.view.service.cancel_lock_request(self.opening_for[0], opening)
        if self.session is not None:
            self.session.abort()


class _WatchedBody:
    """A chunk's body read with short timeouts (``polling_reads``): every read and every silence is a moment to stop.

    ``between_reads(silent_for)`` raises to stop; the rest of the body is then
    left unread and the connection closed after the answer.
    """

    def __init__(self, stream: BodyReader, between_reads: Callable[[float], None]) -> None:
        self._stream = stream
        self._between_reads = between_reads
        self._last_data = time.monotonic()

    def read(self, size: int = -1, /) -> bytes:
        while True:
            try:
                data = self._stream.read(size)
            except TimeoutError:
                self._check(time.monotonic() - self._last_data)
                continue
            self._last_data = time.monotonic()
            self._check(0.0)
            return data

    def _check(self, silent_for: float) -> None:
        try:
            self._between_reads(silent_for)
        except BaseException:
            self._stream.abandon()
            raise
