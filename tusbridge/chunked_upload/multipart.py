"""A multipart parser for the body jQuery-File-Upload sends with every chunk.

Django's ``MultiPartParser`` handles every shape of multipart body, through
several layers of generators that pass the file part along in 64 KiB pieces.
A chunk request has one simple shape: a few short form fields, then the file
part, then the closing delimiter. ``ChunkBodyParser`` reads that shape itself
(fields parsed from the first read, the file part passed to the upload
handlers in pieces of up to 1 MiB, found with one ``bytes.find`` per piece)
and hands anything else to Django's parser unchanged:

- when the fields or the file part's headers are not of that simple shape
  (a transfer encoding, parameters beyond ``name``/``filename``, a file that
  is not the chunk, too many or too long fields...), Django parses the whole
  body, starting with the bytes read so far;
- when more parts follow the file part, Django parses those, and their fields
  and files are added to the ones read here.

The upload handlers see the same calls, in the same order, as Django's parser
makes (``handle_raw_input``, ``new_file``, ``receive_data_chunk``,
``file_complete`` or ``upload_interrupted``, ``upload_complete``).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import SkipFile, StopFutureHandlers, StopUpload
from django.http import QueryDict
from django.http.multipartparser import MultiPartParser
from django.utils.datastructures import MultiValueDict
from django.utils.encoding import force_str

# All the fields and the file part's headers must arrive within this many bytes.
_PREFIX_LIMIT = 64 * 1024
_MAX_FIELDS = 32
_PIECE = 1024 * 1024

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_DISPOSITION = re.compile(
    rb'content-disposition:[ \t]*form-data;[ \t]*name="([^"\\\r\n]*)"(?:;[ \t]*filename="([^"\\\r\n]*)")?[ \t]*',
    re.IGNORECASE,
)
_CONTENT_TYPE = re.compile(rb"content-type:[ \t]*(" + _TOKEN + rb"/" + _TOKEN + rb")[ \t]*", re.IGNORECASE)


class _Part:
    def __init__(self, name: bytes, filename: bytes | None, content_type: bytes) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type


def _simple_part(headers: bytes) -> _Part | None:
    """The part whose header block is ``headers``, if it has only the simple headers; else None."""
    disposition: re.Match[bytes] | None = None
    content_type = b""
    for line in headers.split(b"\r\n"):
        if (match := _DISPOSITION.fullmatch(line)) and disposition is None:
            disposition = match
        elif (match := _CONTENT_TYPE.fullmatch(line)) and not content_type:
            content_type = match.group(1).lower()
        else:
            return None
    if disposition is None:
        return None
    return _Part(disposition.group(1), disposition.group(2), content_type)


class _Replay:
    """Bytes already read, then the rest of the stream."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._stream.read(), b""
            else:
                data, self._head = self._head[:size], self._head[size:]
            return data
        return self._stream.read(size)


class ChunkBodyParser(MultiPartParser):
    """``MultiPartParser`` with a direct path for a legacy chunk's body (see the module docstring)."""

    def __init__(self, META: Any, input_data: Any, upload_handlers: list[Any], encoding: str | None, file_field: str):
        super().__init__(META, input_data, upload_handlers, encoding)
        self._file_field = file_field
        self._remaining = self._content_length
        # Whether this parser read the body itself (False: Django's parser did).
        self.direct = False

    # --- reading -------------------------------------------------------------

    def _read(self, size: int) -> bytes:
        size = min(size, self._remaining)
        if size <= 0:
            return b""
        data = self._input_data.read(size)
        self._remaining -= len(data)
        return data

    # --- parsing -------------------------------------------------------------

    def _parse(self) -> tuple[QueryDict, MultiValueDict]:
        if self._content_length == 0:
            return super()._parse()
        for handler in self._upload_handlers:
            result = handler.handle_raw_input(
                self._input_data, self._meta, self._content_length, self._boundary, self._encoding
            )
            if result is not None:
                return result[0], result[1]
        prefix = self._read(_PREFIX_LIMIT)
        start = self._fields_and_file(prefix)
        if start is None:
            # Not the simple shape: Django parses it all, from the first byte.
            self._input_data = _Replay(prefix, self._input_data)
            self._upload_handlers = [_NoRawInput(h) for h in self._upload_handlers]
            try:
                return super()._parse()
            finally:
                self._upload_handlers = [h.handler for h in self._upload_handlers]
        self.direct = True
        return self._stream_file(prefix, start)

    def _fields_and_file(self, prefix: bytes) -> int | None:
        """Parse the fields before the file part; return where its data starts, or None for Django's parser."""
        delimiter = b"--" + self._boundary
        if not prefix.startswith(delimiter + b"\r\n"):
            return None
        encoding = self._encoding
        post = QueryDict(mutable=True, encoding=encoding)
        fields = field_bytes = 0
        position = len(delimiter) + 2
        for _ in range(_MAX_FIELDS + 1):
            headers_end = prefix.find(b"\r\n\r\n", position)
            if headers_end < 0:
                return None
            part = _simple_part(prefix[position:headers_end])
            if part is None:
                return None
            data_start = headers_end + 4
            name = force_str(part.name.strip(), encoding, errors="replace")
            if part.filename is not None:
                file_name = self.sanitize_file_name(force_str(part.filename, encoding, errors="replace"))
                if name != self._file_field or not file_name:
                    return None
                if delimiter.startswith(prefix[data_start : data_start + len(delimiter)]):
                    # A delimiter right after the blank line takes its CR LF: Django sees
                    # a part without a header end (and drops it). Its business.
                    return None
                self._post, self._files = post, MultiValueDict()
                self._file = (name, file_name, force_str(part.content_type))
                return data_start
            value_end = prefix.find(delimiter, data_start) - 2
            if value_end < data_start or prefix[value_end : value_end + 2] != b"\r\n":
                return None  # Django also ends a part at a delimiter without CRLF: its business
            value = prefix[data_start:value_end]
            fields += 1
            field_bytes += len(value) + len(name) + 2
            max_fields = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
            if max_fields is not None and fields + 2 >= max_fields:
                return None  # close to Django's limit: let it count and refuse
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            if limit is not None and field_bytes > limit:
                return None  # Django refuses it, with its own error
            post.appendlist(name, force_str(value, encoding, errors="replace"))
            position = value_end + 2 + len(delimiter)
            if prefix[position : position + 2] != b"\r\n":
                return None  # the closing delimiter (no file at all) or padding: Django's business
            position += 2
        return None

    def _stream_file(self, buffered: bytes, start: int) -> tuple[QueryDict, MultiValueDict]:
        """Pass the file part to the handlers; then the rest of the body, if any, to Django."""
        handlers = self._upload_handlers
        field_name, file_name, content_type = self._file
        for handler in handlers:
            try:
                handler.new_file(field_name, file_name, content_type, None, None, {})
            except StopFutureHandlers:
                break
        counters = [0] * len(handlers)
        # As Django's parser: the part ends at "--" + boundary, and a CR LF
        # (or a lone LF) just before it is not part of the data.
        delimiter = b"--" + self._boundary
        keep = len(delimiter) + 1
        pending = bytearray(buffered[start:])
        skipped = False
        while True:
            found = pending.find(delimiter)
            if found >= 0:
                ready = found - 1 if pending[found - 1 : found] == b"\n" else found
                ready = ready - 1 if pending[ready - 1 : ready] == b"\r" else ready
            else:
                ready = len(pending) - keep
            if ready > 0:
                try:
                    if not skipped:
                        self._deliver(bytes(pending[:ready]), counters)
                except SkipFile:
                    skipped = True  # as Django: the rest of this part is read and dropped
                    self._close_files()
                except StopUpload as stop:
                    self._close_files()
                    if stop.connection_reset:
                        self._remaining = 0
                    return self._finish()
            if found >= 0:
                del pending[: found + len(delimiter)]
                break
            if ready > 0:
                del pending[:ready]
            piece = self._read(_PIECE)
            if not piece:
                # The body ended inside the file part: as Django, no file, and the handlers are told.
                for handler in handlers:
                    handler.upload_interrupted()
                return self._finish()
            pending += piece
        rest = bytes(pending)
        while len(rest) < 2 and (piece := self._read(2)):
            rest += piece
        if not rest:
            # The body ends at the delimiter: Django's parser never completes the file then.
            for handler in handlers:
                handler.upload_interrupted()
            return self._finish()
        if not skipped:
            self.handle_file_complete(field_name, counters)
        if not rest.startswith(b"--"):
            self._parse_rest(b"--" + self._boundary + rest)
        elif skipped:
            # Django's parser counts a skipped last file as an unfinished upload.
            for handler in handlers:
                handler.upload_interrupted()
        return self._finish()

    def _deliver(self, chunk: bytes, counters: list[int]) -> None:
        if not chunk:
            return
        for i, handler in enumerate(self._upload_handlers):
            size = len(chunk)
            chunk = handler.receive_data_chunk(chunk, counters[i])
            counters[i] += size
            if chunk is None:
                break

    def _parse_rest(self, head: bytes) -> None:
        """More parts after the file: Django's parser reads them, from the delimiter on."""
        rest = MultiPartParser(
            {**self._meta, "CONTENT_LENGTH": str(len(head) + self._remaining)},
            _Replay(head, self._input_data),
            [_NoCompletion(_NoRawInput(h)) for h in self._upload_handlers],
            self._encoding,
        )
        self._remaining = 0
        post, files = rest.parse()
        for key, values in post.lists():
            self._post.setlistdefault(key, []).extend(values)
        for key, values in files.lists():
            self._files.setlistdefault(key, []).extend(values)

    def _finish(self) -> tuple[QueryDict, MultiValueDict]:
        while self._read(_PIECE):
            pass  # the epilogue, as Django reads the body to its end
        any(handler.upload_complete() for handler in self._upload_handlers)
        self._post._mutable = False
        return self._post, self._files


class _HandlerProxy:
    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handler, name)


class _NoRawInput(_HandlerProxy):
    """A handler whose ``handle_raw_input`` already ran for this request."""

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        return None


class _NoCompletion(_HandlerProxy):
    """A handler whose ``upload_complete`` is called once, by the outer parser."""

    def upload_complete(self) -> None:
        return None
