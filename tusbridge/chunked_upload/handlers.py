"""Streaming a legacy chunk straight into the upload's data file.

jQuery-File-Upload sends the form fields (``upload_id``...) before the file
part. By the time the file part starts, the multipart parser has read the
``upload_id`` and the request headers carry the Content-Range, so the chunk's
place in the upload is known: this handler takes the upload's lock and
writes the part's bytes at the upload's offset as they arrive, with no
temporary file and no copy. Only an ``AppendSession`` is opened, so if the
view then rejects the request the bytes are cut off again and nothing
changed. Whenever that is not possible (fields after the file, no
Content-Range, someone else's upload, a wrong offset...) the handler steps
aside and Django's own handlers receive the part as usual; the view then
reports the problem exactly as it would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from django.core.files.uploadhandler import FileUploadHandler, StopFutureHandlers
from django.http import HttpRequest

from .. import errors
from ..appending import AppendSession
from ..bodies import reader_for
from ..permissions import owner_of
from .multipart import ChunkBodyParser

if TYPE_CHECKING:
    from .views import ChunkedUploadView


class DirectChunk:
    """The file part as the view sees it when its bytes already went to the upload."""

    def __init__(
        self,
        name: str,
        size: int,
        session: AppendSession,
        content_type: str | None,
        failure: OSError | None = None,
    ) -> None:
        self.name = name
        self.size = size
        self.session = session
        self.content_type = content_type
        # Set when the data store failed while the part streamed in (disk full...).
        self.failure = failure

    def close(self) -> None:
        """Django closes uploaded files when a request ends badly: the unsaved write is dropped."""
        self.session.abort()

    def chunks(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """Read the part back (only needed when the view files it under another upload)."""
        return self.session.read_back(chunk_size or 1024 * 1024)


class DirectChunkHandler(FileUploadHandler):
    def __init__(self, request: HttpRequest, view: ChunkedUploadView) -> None:
        super().__init__(request)
        self.view = view
        self.parser: ChunkBodyParser | None = None
        self.session: AppendSession | None = None
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
            self.parser = ChunkBodyParser(meta, stream, request.upload_handlers, request.encoding, self.view.field_name)
            return self.parser.parse()

        request.parse_file_upload = parse_file_upload  # type: ignore[method-assign]

    def _fields(self) -> Any:
        return getattr(self.parser, "_post", None) or {}

    def new_file(
        self, field_name: str, file_name: str, content_type: str, content_length: int | None, *args: Any, **kwargs: Any
    ) -> None:
        super().new_file(field_name, file_name, content_type, content_length, *args, **kwargs)
        if field_name != self.view.field_name or self.session is not None:
            return
        span = self.view.chunk_span(self.request)
        if span is None:
            return
        start, end, total = span
        max_bytes = self.view.max_bytes_before_hooks()
        if end < start or end >= total or (max_bytes is not None and total > max_bytes):
            return
        upload_id = self._fields().get("upload_id")
        try:
            if upload_id:
                self.session = self.view.service.open_append(
                    upload_id,
                    owner_of(self.request),
                    offset=start,
                    length=total,
                    auto_complete=False,
                    slide_expiry=False,
                )
            elif start == 0:
                record = self.view.service.new_record(owner=owner_of(self.request), protocol="legacy", length=total)
                self.session = self.view.service.open_new(record, track_md5=True, auto_complete=False)
        except errors.UploadError:
            self.session = None  # the view will find the same problem and report it
        if self.session is not None:
            self.expected = end - start + 1
            raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        if self.session is None:
            return raw_data
        # Never write past what Content-Range announced; the size check in
        # the view rejects such a part and the session is aborted.
        room = self.expected - self.received
        if room > 0 and self.failure is None:
            try:
                self.session.write(raw_data[:room])
            except OSError as exc:
                # Read the rest of the part without writing; the view reports it.
                self.failure = exc
        self.received += len(raw_data)
        return None

    def file_complete(self, file_size: int) -> DirectChunk | None:
        if self.session is None:
            return None
        self.completed = True
        return DirectChunk(self.file_name or "", file_size, self.session, self.content_type, self.failure)

    def upload_interrupted(self) -> None:
        # Django says so when the last part of the body was cut short; that
        # concerns our part only if it was the one still open.
        if not self.completed:
            self.abort()

    def abort(self) -> None:
        if self.session is not None:
            self.session.abort()
