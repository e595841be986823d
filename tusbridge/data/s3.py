"""Upload data in an S3 bucket (or MinIO, Cloudflare R2...), one multipart upload per upload.

The mapping follows tusd's s3store. For an upload ``<id>`` under the key
prefix ``<p>``:

- ``<p><id>``: the S3 multipart upload the bytes go to, created with the
  upload; completing it (``finish``) makes it the finished file in place,
  one object, never a second copy.
- parts 1, 2, ...: every written byte that fills a whole part
  (``TUSBRIDGE_S3_PART_SIZE``, at least S3's 5 MiB minimum), uploaded while
  the body streams, at most ``TUSBRIDGE_S3_PARTS_IN_FLIGHT`` at once.
- ``<p><id>.part``: the tail, the bytes that do not fill a part yet, as an
  object of its own (tusd's "incomplete part"); the next writer prepends it.
  Its metadata is the state of the upload: the multipart upload id, where
  the tail starts and the part number it becomes. Storing it is the one
  atomic step that makes a write count (``sync``): parts uploaded after the
  last stored tail are ignored, and overwritten by the next writer, since a
  part uploaded again with the same number replaces the old one.
- ``<p><id>.prev``: the tail as it was when the last writer that uploaded
  parts opened, so that a writer whose offset advance never happened (a
  crash between ``sync`` and the advance in Redis) can be cut back: parts
  of an open multipart upload cannot be read back, so a cut inside them
  needs the bytes from before them.
- ``<p><id>.info``: the record copy (``InfoKeeper``).

S3 cannot read an unfinished multipart upload: ``open`` reads finished
uploads and uploads that still fit in their tail; the service completes an
upload (``Finisher.finish``) before it reads it.

S3 cannot append either: every ``sync`` stores the whole tail again (less
than a part). A PATCH counted while it streams (TUSBRIDGE_PROGRESS_INTERVAL,
_BYTES) syncs at every count; the default PROGRESS_BYTES, 64 MiB, is a
multiple of the default part size, 8 MiB, so a fast body leaves a short
tail at each count, and the writer reopened after a count takes the tail
from the one before (``_hand_over``) instead of reading it back.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config
from django.core.checks import CheckMessage, Error, Warning

from .. import conf, errors
from .base import DataStore, Writer

logger = logging.getLogger("tusbridge")

MiB = 1024 * 1024
# S3's limits: every part but the last at least 5 MiB, at most 5 GiB, at most 10,000 parts.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000

_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_TAIL, _PREV, _INFO = ".part", ".prev", ".info"
# Pieces in which objects are read (a tail back into memory, a streamed concatenation).
_READ_PIECE = MiB
# Tails kept after a writer closed, for the writer that opens next (see ``S3DataStore._hand_over``).
_HANDOFF_ENTRIES = 8
_HANDOFF_SECONDS = 5.0

F = TypeVar("F", bound=Callable[..., Any])


def _translated(call: F) -> F:
    """``call``, raising StoreUnavailable when S3 cannot be reached and OSError for its other refusals.

    The service already knows both: OSError is a storage failure (the bytes
    really written are kept), StoreUnavailable answers 503.
    """

    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            raise errors.StoreUnavailable("The S3 data store cannot be reached; try again shortly") from exc
        except botocore.exceptions.ClientError as exc:
            if _status(exc) >= 500 or _code(exc) in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise errors.StoreUnavailable("The S3 data store is unavailable; try again shortly") from exc
            raise OSError(errno.EIO, f"S3 refused {exc.operation_name}: {_code(exc)} {_message(exc)}") from exc
        except botocore.exceptions.BotoCoreError as exc:  # no credentials, a bad parameter...
            raise OSError(errno.EIO, f"S3: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _missing(exc: botocore.exceptions.ClientError) -> bool:
    return _status(exc) == 404 or _code(exc) in ("404", "NoSuchKey", "NotFound", "NoSuchUpload")


@dataclass(frozen=True)
class Tail:
    """The stored state of an upload in progress: its tail object and what its metadata says."""

    multipart: str  # the S3 UploadId
    start: int  # offset of the tail's first byte: the bytes in parts 1 .. part-1
    part: int  # the part number the tail becomes
    size: int  # bytes in the tail
    etag: str
    changed: float  # when a writer last stored it (our clock: S3's Last-Modified has whole seconds)

    @property
    def end(self) -> int:
        return self.start + self.size

    def metadata(self) -> dict[str, str]:
        return {
            "multipart-upload": self.multipart,
            "start": str(self.start),
            "part": str(self.part),
            "changed": repr(self.changed),
        }


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str


class PartBuffer:
    """The bytes of the part being filled, never in more memory than a part's size.

    A writer's first buffer grows with what arrives (a slow upload holds
    little); past half a part, and from the start for a writer's later
    buffers, it is one allocation of exactly a part's size, so that no part
    leaves with the spare capacity a growing ``bytearray`` keeps.
    """

    def __init__(self, size: int, *, fixed: bool = False) -> None:
        self._size = size
        self._data = bytearray()
        self._fill = 0
        self._fixed = fixed

    def __len__(self) -> int:
        return self._fill

    def extend(self, piece: bytes | bytearray | memoryview) -> None:
        end = self._fill + len(piece)
        if end > self._size:
            raise ValueError("more bytes than a part holds")
        if not self._fixed and end > self._size // 2:
            self._fixed = True
        if self._fixed:
            if len(self._data) != self._size:
                data = bytearray(self._size)
                data[: self._fill] = self._data
                self._data = data
            self._data[self._fill : end] = piece
        else:
            self._data += piece
        self._fill = end

    def truncate(self, size: int) -> None:
        if size < self._fill:
            if not self._fixed:
                del self._data[size:]
            self._fill = size

    def body(self) -> bytes | bytearray:
        """The bytes to send: the buffer itself unless it is a part-sized one not yet full (then a copy)."""
        if len(self._data) == self._fill:
            return self._data
        with memoryview(self._data) as view:
            return bytes(view[: self._fill])


class S3Writer(Writer):
    """Cuts what is written into parts, uploads them while more arrives, and stores the tail at ``sync``.

    Memory: the part being filled and at most ``parts_in_flight`` parts on
    their way, never more than part size × (parts in flight + 1).
    """

    def __init__(self, store: S3DataStore, upload_id: str, base: Tail, tail: PartBuffer) -> None:
        self._store = store
        self._upload_id = upload_id
        self._reset(base, tail)
        self._pending: deque[Future[Part]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _reset(self, base: Tail, tail: PartBuffer) -> None:
        # The state this writer opened at (what rollback goes back to), and the state last stored.
        self._base = base
        self._stored = base
        # Bytes from self._buffer_start on that no part holds yet; the next part's number.
        self._buffer = tail
        self._buffer_start = base.start
        self._next_part = base.part
        self._written = 0
        # Set by the first part upload that failed: the writer can only roll back then.
        self._failure: BaseException | None = None
        # Whether this writer kept the tail it opened at as <id>.prev (once, before its first parts count).
        self._kept_prev = False

    @property
    def written(self) -> int:
        return self._written

    @_translated
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._check_usable()
        view = memoryview(data).cast("B")
        part_size = self._store.part_size
        while view:
            room = part_size - len(self._buffer)
            piece, view = view[:room], view[room:]
            self._buffer.extend(piece)
            self._written += len(piece)
            if len(self._buffer) == part_size:
                self._ship()

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError("write to a closed writer")
        if self._failure is not None:
            raise self._failure

    def _ship(self) -> None:
        """Hand the full buffer to an upload thread, waiting first while too many parts are on their way."""
        if self._next_part >= MAX_PARTS:
            # The tail must still fit as the last part: part MAX_PARTS.
            raise OSError(errno.EFBIG, f"an S3 upload has at most {MAX_PARTS} parts of {self._store.part_size} bytes")
        # Wait before the next buffer exists: parts in flight plus the one filling stay within the bound.
        while len(self._pending) >= self._store.parts_in_flight:
            self._wait_oldest()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._store.parts_in_flight, thread_name_prefix="tusbridge-s3")
        body = self._buffer.body()
        self._buffer = PartBuffer(self._store.part_size, fixed=True)
        future = self._pool.submit(
            self._store._upload_part, self._upload_id, self._base.multipart, self._next_part, body
        )
        self._pending.append(future)
        self._next_part += 1
        self._buffer_start += len(body)

    def _wait_oldest(self) -> None:
        try:
            self._pending.popleft().result()
        except BaseException as exc:
            self._failure = self._failure or exc
            raise

    def _drain(self, *, raise_errors: bool) -> None:
        """Wait for every part on its way: none may land after this writer let go of the upload."""
        while self._pending:
            try:
                self._wait_oldest()
            except BaseException:
                if raise_errors:
                    self._drain(raise_errors=False)
                    raise

    @_translated
    def sync(self) -> None:
        """Wait for the parts, then store the tail: from then on ``size`` counts every byte written."""
        self._check_usable()
        self._drain(raise_errors=True)
        store, stored = self._store, self._stored
        if self._buffer_start == stored.start and len(self._buffer) == stored.size and self._next_part == stored.part:
            return  # nothing new since the last stored state
        if self._next_part != stored.part and not self._kept_prev:
            # These parts replace the tail the upload had: keep that (a copy inside S3) so
            # that the next writer can still cut back to it if this sync is never counted.
            store._copy(store._tail_key(self._upload_id), store._prev_key(self._upload_id))
            self._kept_prev = True
        self._stored = store._put_tail(
            self._upload_id, self._base.multipart, self._buffer_start, self._next_part, self._buffer.body()
        )

    @_translated
    def rollback(self) -> None:
        """Go back to the state this writer opened at; parts it uploaded are ignored, then overwritten."""
        self._drain(raise_errors=False)
        if self._stored == self._base and self._buffer_start == self._base.start:
            # Nothing stored and no part sent: the opening tail is still the buffer's beginning.
            self._buffer.truncate(self._base.size)
            base, tail = self._base, self._buffer
        else:
            base, tail = self._store._cut(self._upload_id, self._base.end)
        self._reset(base, tail)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._drain(raise_errors=False)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        stored = self._stored
        unchanged = self._buffer_start == stored.start and self._next_part == stored.part
        if self._failure is None and unchanged and len(self._buffer) == stored.size > 0:
            self._store._hand_over(self._upload_id, stored.etag, self._buffer)
        self._buffer = PartBuffer(self._store.part_size)


class _ObjectReader(io.RawIOBase):
    """An S3 object read from the start as a stream; a seek starts a new ranged GET from there."""

    def __init__(self, store: S3DataStore, key: str, size: int, etag: str) -> None:
        self._store = store
        self._key = key
        self._size = size
        self._etag = etag
        self._position = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        position = max(0, base + offset)
        if position != self._position:
            self._drop_body()
            self._position = position
        return position

    @_translated
    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._position)
        if want <= 0:
            return 0
        if self._body is None:
            self._body = self._store._get_body(self._key, self._position, etag=self._etag)
        data = self._body.read(want)
        if not data:
            raise OSError(errno.EIO, f"S3 object {self._key} ended before its {self._size} bytes")
        n = len(data)
        buffer[:n] = data
        self._position += n
        return n

    def _drop_body(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


class S3DataStore(DataStore):
    """Uploads as S3 multipart uploads (see the module's docstring for the layout)."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "tusbridge/",
        endpoint_url: str | None = None,
        region: str | None = None,
        part_size: int = 8 * MiB,
        parts_in_flight: int = 2,
        equal_parts: bool = False,
        client: Any = None,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(f"the S3 part size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes")
        if parts_in_flight < 1:
            raise ValueError("at least one S3 part must be allowed in flight")
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.equal_parts = equal_parts
        self._client = client if client is not None else _client(endpoint_url, region, parts_in_flight)
        self._handoff: dict[str, tuple[str, PartBuffer, float]] = {}
        self._handoff_lock = threading.Lock()

    @classmethod
    def from_settings(cls) -> S3DataStore:
        return cls(
            str(conf.get("S3_BUCKET") or ""),
            prefix=str(conf.get("S3_KEY_PREFIX") or ""),
            endpoint_url=conf.get("S3_ENDPOINT_URL") or None,
            region=conf.get("S3_REGION") or None,
            part_size=int(conf.get("S3_PART_SIZE")),
            parts_in_flight=int(conf.get("S3_PARTS_IN_FLIGHT")),
            equal_parts=bool(conf.get("S3_EQUAL_PARTS")),
        )

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """The settings describe a usable store (S3 itself is not contacted: checks run offline)."""
        found: list[CheckMessage] = []
        if not conf.get("S3_BUCKET"):
            found.append(
                Error(
                    "The S3 data store needs a bucket.",
                    hint="Set TUSBRIDGE_S3_BUCKET.",
                    id="tusbridge.E020",
                )
            )
        part_size = conf.get("S3_PART_SIZE")
        if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            found.append(
                Error(
                    f"TUSBRIDGE_S3_PART_SIZE {part_size!r} is outside S3's part sizes.",
                    hint=f"Use a number of bytes from {MIN_PART_SIZE} (5 MiB) to {MAX_PART_SIZE} (5 GiB).",
                    id="tusbridge.E021",
                )
            )
            part_size = None
        in_flight = conf.get("S3_PARTS_IN_FLIGHT")
        if not isinstance(in_flight, int) or in_flight < 1:
            found.append(
                Error(
                    f"TUSBRIDGE_S3_PARTS_IN_FLIGHT {in_flight!r} is not a positive number.",
                    hint="Parts one writer uploads at once; each costs a part's size of memory (2 is plenty).",
                    id="tusbridge.E022",
                )
            )
        if not conf.get("S3_KEY_PREFIX"):
            found.append(
                Warning(
                    "TUSBRIDGE_S3_KEY_PREFIX is empty: every object of the bucket whose name looks like an "
                    "upload id counts as upload data, and the expiry sweep deletes those without a record.",
                    hint='Give tusbridge a prefix of its own, such as "tusbridge/".',
                    id="tusbridge.W020",
                )
            )
        max_size = int(conf.get("MAX_SIZE") or 0)
        if part_size is not None and (max_size == 0 or max_size > MAX_PARTS * part_size):
            found.append(
                Warning(
                    f"An S3 upload has at most {MAX_PARTS} parts of TUSBRIDGE_S3_PART_SIZE ({part_size} bytes), "
                    f"{MAX_PARTS * part_size} bytes, but TUSBRIDGE_MAX_SIZE allows more.",
                    hint="Lower TUSBRIDGE_MAX_SIZE or raise TUSBRIDGE_S3_PART_SIZE.",
                    id="tusbridge.W021",
                )
            )
        return found

    # Keys ------------------------------------------------------------------------------------

    def key(self, upload_id: str) -> str:
        if not upload_id or not set(upload_id) <= _ID_CHARS:
            raise ValueError(f"invalid upload id {upload_id!r}")
        return self.prefix + upload_id

    def _tail_key(self, upload_id: str) -> str:
        return self.key(upload_id) + _TAIL

    def _prev_key(self, upload_id: str) -> str:
        return self.key(upload_id) + _PREV

    def _info_key(self, upload_id: str) -> str:
        return self.key(upload_id) + _INFO

    # DataStore -------------------------------------------------------------------------------

    @_translated
    def create(self, upload_id: str) -> None:
        """Start the multipart upload, then store its empty tail: from then on it has data."""
        key = self.key(upload_id)
        if self._head_tail(upload_id) is not None or self._head(key) is not None:
            raise FileExistsError(f"upload data {upload_id!r} exists already")
        multipart = self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            self._put_tail(upload_id, multipart, 0, 1, b"")
        except BaseException:
            self._abort(key, multipart)
            raise

    @_translated
    def writer(self, upload_id: str, offset: int) -> S3Writer:
        base, tail = self._cut(upload_id, offset)
        return S3Writer(self, upload_id, base, tail)

    @_translated
    def open(self, upload_id: str) -> BinaryIO:
        """The finished object, or an upload in progress that still fits in its tail.

        Raises io.UnsupportedOperation for an upload in progress with parts:
        S3 cannot read them before the multipart upload is completed, which
        only ``finish`` does.
        """
        tail = self._head_tail(upload_id)
        if tail is not None:
            if tail.part == 1:
                return self._reader(self._tail_key(upload_id), tail.size, tail.etag)
            if self._list_parts(upload_id, tail.multipart) is not None:
                raise io.UnsupportedOperation(
                    f"upload {upload_id} is an S3 multipart upload in progress; it is readable once finished"
                )
        key = self.key(upload_id)
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(f"no data for upload {upload_id!r}")
        return self._reader(key, int(head["ContentLength"]), str(head["ETag"]))

    @_translated
    def size(self, upload_id: str) -> int | None:
        """Bytes in the parts that count and the tail (ListParts, HEAD), or the finished object's size."""
        tail = self._head_tail(upload_id)
        if tail is not None:
            parts = self._list_parts(upload_id, tail.multipart)
            if parts is not None:
                return sum(part.size for part in parts if part.number < tail.part) + tail.size
        head = self._head(self.key(upload_id))
        return None if head is None else int(head["ContentLength"])

    # Finisher --------------------------------------------------------------------------------

    @_translated
    def finish(self, upload_id: str) -> None:
        """Complete the multipart upload in place: the tail becomes the last part (copied inside S3).

        Safe to repeat: a finished upload is left as it is.
        """
        key = self.key(upload_id)
        tail = self._head_tail(upload_id)
        if tail is None:
            if self._head(key) is None:
                raise FileNotFoundError(f"no data for upload {upload_id!r}")
            return
        parts = self._list_parts(upload_id, tail.multipart)
        if parts is None:
            # Completed before, but the tail was left behind (a crash in between).
            if self._head(key) is None:
                raise OSError(errno.EIO, f"the multipart upload of {upload_id} is gone")
            self._delete(self._tail_key(upload_id), self._prev_key(upload_id))
            return
        counted = self._counted_parts(upload_id, tail, parts)
        if tail.size:
            copied = self._client.upload_part_copy(
                Bucket=self.bucket,
                Key=key,
                UploadId=tail.multipart,
                PartNumber=tail.part,
                CopySource={"Bucket": self.bucket, "Key": self._tail_key(upload_id)},
                CopySourceIfMatch=tail.etag,
            )
            counted.append(Part(tail.part, tail.size, copied["CopyPartResult"]["ETag"]))
        if counted:
            self._complete(key, tail.multipart, counted)
        else:
            # S3 completes no multipart upload without a part: an empty upload is an empty object.
            self._client.put_object(Bucket=self.bucket, Key=key, Body=b"")
            self._abort(key, tail.multipart)
        self._delete(self._tail_key(upload_id), self._prev_key(upload_id))

    def _counted_parts(self, upload_id: str, tail: Tail, parts: list[Part]) -> list[Part]:
        counted = [part for part in parts if part.number < tail.part]
        if [part.number for part in counted] != list(range(1, tail.part)) or sum(p.size for p in counted) != tail.start:
            raise OSError(errno.EIO, f"the parts of upload {upload_id} do not add up to its tail's start")
        return counted

    # Terminator ------------------------------------------------------------------------------

    @_translated
    def remove(self, upload_id: str) -> None:
        """Abort every multipart upload of the key, then delete the tail, the object and the record copy."""
        self._remove(upload_id, info=True)

    def _remove(self, upload_id: str, *, info: bool) -> None:
        key = self.key(upload_id)
        multiparts = {upload["UploadId"] for upload in self._multipart_uploads(key) if upload["Key"] == key}
        tail = self._head_tail(upload_id)
        if tail is not None:
            multiparts.add(tail.multipart)
        for multipart in multiparts:
            self._abort(key, multipart)
        keys = [key, self._tail_key(upload_id), self._prev_key(upload_id)]
        self._delete(*keys, *([self._info_key(upload_id)] if info else []))
        with self._handoff_lock:
            self._handoff.pop(upload_id, None)

    # InfoKeeper ------------------------------------------------------------------------------

    @_translated
    def write_info(self, upload_id: str, info: dict[str, str]) -> None:
        body = json.dumps(info, separators=(",", ":")).encode()
        self._client.put_object(
            Bucket=self.bucket, Key=self._info_key(upload_id), Body=body, ContentType="application/json"
        )

    @_translated
    def read_info(self, upload_id: str) -> dict[str, str] | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._info_key(upload_id))
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                return None
            raise
        try:
            info = json.loads(response["Body"].read())
        except ValueError:
            return None
        return info if isinstance(info, dict) else None

    @_translated
    def upload_ids(self) -> Iterator[str]:
        """Ids with a tail, a finished object or a multipart upload (one a crash left without its tail)."""
        found: dict[str, None] = {}
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for entry in page.get("Contents", ()):
                upload_id, dot, suffix = entry["Key"][len(self.prefix) :].partition(".")
                if (not dot or suffix == _TAIL[1:]) and upload_id and set(upload_id) <= _ID_CHARS:
                    found[upload_id] = None
        for upload in self._multipart_uploads(self.prefix):
            upload_id = upload["Key"][len(self.prefix) :]
            if upload_id and set(upload_id) <= _ID_CHARS:
                found[upload_id] = None
        yield from found

    @_translated
    def age(self, upload_id: str) -> float | None:
        tail = self._head_tail(upload_id)
        if tail is not None:
            return time.time() - tail.changed
        key = self.key(upload_id)
        head = self._head(key)
        if head is not None:
            return time.time() - head["LastModified"].timestamp()
        started = [u["Initiated"].timestamp() for u in self._multipart_uploads(key) if u["Key"] == key]
        return time.time() - max(started) if started else None

    # Concatenator ----------------------------------------------------------------------------

    @_translated
    def concatenate(self, target_id: str, source_ids: Sequence[str]) -> None:
        """Join finished sources into the target, replacing its data (its record copy stays).

        With UploadPartCopy, inside S3, when the sources make valid parts
        (every one but the last at least 5 MiB; of one size with
        TUSBRIDGE_S3_EQUAL_PARTS); else streamed through a writer, a part at a time.
        """
        target = self.key(target_id)
        sizes: list[tuple[str, int, str]] = []
        for source_id in source_ids:
            self.finish(source_id)  # the service finished them; a no-op then
            head = self._head(self.key(source_id))
            if head is None:
                raise FileNotFoundError(f"no data for upload {source_id!r}")
            sizes.append((source_id, int(head["ContentLength"]), str(head["ETag"])))
        self._remove(target_id, info=False)  # an existing target is replaced; its record copy stays
        sources = [source for source in sizes if source[1] > 0]
        if sources and self._copyable([size for _, size, _ in sources]):
            self._concatenate_by_copy(target, sources)
        else:
            self._concatenate_by_stream(target_id, sources)

    def _copyable(self, sizes: list[int]) -> bool:
        if len(sizes) > MAX_PARTS or any(size > MAX_PART_SIZE for size in sizes):
            return False
        if any(size < MIN_PART_SIZE for size in sizes[:-1]):
            return False
        return not self.equal_parts or all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0]

    def _concatenate_by_copy(self, target: str, sources: list[tuple[str, int, str]]) -> None:
        multipart = self._client.create_multipart_upload(Bucket=self.bucket, Key=target)["UploadId"]
        try:
            parts = []
            for number, (source_id, size, etag) in enumerate(sources, start=1):
                copied = self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=multipart,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": self.key(source_id)},
                    CopySourceIfMatch=etag,
                )
                parts.append(Part(number, size, copied["CopyPartResult"]["ETag"]))
            self._complete(target, multipart, parts)
        except BaseException:
            self._abort(target, multipart)
            raise

    def _concatenate_by_stream(self, target_id: str, sources: list[tuple[str, int, str]]) -> None:
        self.create(target_id)
        writer = self.writer(target_id, 0)
        try:
            for source_id, size, etag in sources:
                with self._reader(self.key(source_id), size, etag) as source:
                    while piece := source.read(_READ_PIECE):
                        writer.write(piece)
            writer.sync()
        finally:
            writer.close()
        self.finish(target_id)

    # The state of an upload in progress ------------------------------------------------------

    def _cut(self, upload_id: str, offset: int) -> tuple[Tail, PartBuffer]:
        """Make the stored state end at ``offset`` and return it with its tail's bytes.

        The current tail serves when ``offset`` lies within it; else the one
        kept in ``.prev``: after a writer's sync that was never counted, the
        parts it added are ignored (and overwritten later).
        """
        tail = self._head_tail(upload_id)
        if tail is None:
            raise FileNotFoundError(f"no upload in progress for {upload_id!r}")
        current = True
        if not tail.start <= offset <= tail.end:
            prev = self._head_tail(upload_id, key=self._prev_key(upload_id))
            if prev is None or prev.multipart != tail.multipart or not prev.start <= offset <= prev.end:
                raise OSError(
                    errno.EIO,
                    f"upload {upload_id} cannot be cut back to {offset}: its stored tail covers "
                    f"{tail.start}-{tail.end}, the kept one {prev and (prev.start, prev.end)}",
                )
            tail, current = prev, False
        keep = offset - tail.start
        data = self._take_handoff(upload_id, tail.etag) if current else None
        if data is None:
            data = PartBuffer(self.part_size)
            if keep:
                key = self._tail_key(upload_id) if current else self._prev_key(upload_id)
                self._read_into(data, key, keep, tail.etag)
        data.truncate(keep)
        if current and keep == tail.size:
            return tail, data
        return self._put_tail(upload_id, tail.multipart, tail.start, tail.part, data.body()), data

    def _head_tail(self, upload_id: str, *, key: str | None = None) -> Tail | None:
        head = self._head(key or self._tail_key(upload_id))
        if head is None:
            return None
        meta = head.get("Metadata", {})
        try:
            return Tail(
                multipart=meta["multipart-upload"],
                start=int(meta["start"]),
                part=int(meta["part"]),
                size=int(head["ContentLength"]),
                etag=str(head["ETag"]),
                changed=float(meta.get("changed") or head["LastModified"].timestamp()),
            )
        except (KeyError, ValueError) as exc:
            raise OSError(errno.EIO, f"the tail object of upload {upload_id} has no valid state") from exc

    def _put_tail(self, upload_id: str, multipart: str, start: int, part: int, body: bytes | bytearray) -> Tail:
        tail = Tail(multipart, start, part, len(body), "", time.time())
        response = self._client.put_object(
            Bucket=self.bucket, Key=self._tail_key(upload_id), Body=body, Metadata=tail.metadata()
        )
        return Tail(multipart, start, part, len(body), str(response["ETag"]), tail.changed)

    def _hand_over(self, upload_id: str, etag: str, tail: PartBuffer) -> None:
        """Keep a closed writer's tail a moment for the next writer (the service reopens at every count).

        Only taken while the stored tail still has this ETag; at most a few
        entries, for a few seconds, so that idle uploads hold no memory.
        """
        with self._handoff_lock:
            self._drop_stale_handoffs()
            while len(self._handoff) >= _HANDOFF_ENTRIES:
                del self._handoff[next(iter(self._handoff))]
            self._handoff[upload_id] = (etag, tail, time.monotonic())

    def _take_handoff(self, upload_id: str, etag: str) -> PartBuffer | None:
        with self._handoff_lock:
            self._drop_stale_handoffs()
            entry = self._handoff.pop(upload_id, None)
        return entry[1] if entry is not None and entry[0] == etag else None

    def _drop_stale_handoffs(self) -> None:
        now = time.monotonic()
        for stale in [k for k, (_, _, kept_at) in self._handoff.items() if now - kept_at > _HANDOFF_SECONDS]:
            del self._handoff[stale]

    # S3 calls --------------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self._client.head_object(Bucket=self.bucket, Key=key))
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                return None
            raise

    def _get_body(self, key: str, start: int, *, etag: str | None = None, end: int | None = None) -> Any:
        options: dict[str, Any] = {}
        if start or end is not None:
            options["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            options["IfMatch"] = etag
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key, **options)["Body"]
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(f"S3 object {key} is gone") from exc
            raise

    def _read_into(self, buffer: PartBuffer, key: str, size: int, etag: str) -> None:
        """Append the first ``size`` bytes of an object to ``buffer``, a piece at a time."""
        body = self._get_body(key, 0, etag=etag, end=size)
        remaining = size
        try:
            while remaining and (piece := body.read(min(_READ_PIECE, remaining))):
                buffer.extend(piece)
                remaining -= len(piece)
        finally:
            body.close()
        if remaining:
            raise OSError(errno.EIO, f"S3 object {key} ended before {size} bytes")

    def _reader(self, key: str, size: int, etag: str) -> BinaryIO:
        return io.BufferedReader(_ObjectReader(self, key, size, etag), buffer_size=_READ_PIECE)  # type: ignore[return-value]

    def _upload_part(self, upload_id: str, multipart: str, number: int, body: bytes | bytearray) -> Part:
        response = self._client.upload_part(
            Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart, PartNumber=number, Body=body
        )
        return Part(number, len(body), str(response["ETag"]))

    def _list_parts(self, upload_id: str, multipart: str) -> list[Part] | None:
        """The uploaded parts in number order, or None when the multipart upload is gone (completed, aborted)."""
        parts: list[Part] = []
        try:
            paginator = self._client.get_paginator("list_parts")
            for page in paginator.paginate(Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart):
                parts += [Part(p["PartNumber"], int(p["Size"]), str(p["ETag"])) for p in page.get("Parts", ())]
        except botocore.exceptions.ClientError as exc:
            if _missing(exc):
                return None
            raise
        return sorted(parts, key=lambda part: part.number)

    def _multipart_uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            yield from page.get("Uploads", ())

    def _complete(self, key: str, multipart: str, parts: list[Part]) -> None:
        self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=multipart,
            MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
        )

    def _abort(self, key: str, multipart: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)
        except botocore.exceptions.ClientError as exc:
            if not _missing(exc):
                raise

    def _copy(self, source: str, target: str) -> None:
        self._client.copy_object(
            Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": source}, MetadataDirective="COPY"
        )

    def _delete(self, *keys: str) -> None:
        response = self._client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
        failed = [e for e in response.get("Errors", ()) if e.get("Code") not in ("NoSuchKey", "404")]
        if failed:
            raise OSError(errno.EIO, f"S3 did not delete {[e.get('Key') for e in failed]}: {failed[0].get('Message')}")


def _client(endpoint_url: str | None, region: str | None, parts_in_flight: int) -> Any:
    """A boto3 S3 client; credentials come from boto3's usual chain (environment, files, instance role)."""
    options: dict[str, Any] = {
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"mode": "standard", "max_attempts": 3},
        # Requests of many writers share the pool: too small a pool reconnects for every request.
        "max_pool_connections": max(32, 8 * parts_in_flight),
    }
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}  # MinIO, moto and most self-hosted endpoints
    try:
        # S3-compatible services do not all take the CRC checksums boto3 sends since 1.36.
        config = Config(**options, request_checksum_calculation="when_required")
    except TypeError:  # an older botocore, which sends none
        config = Config(**options)
    session = boto3.session.Session()  # boto3's default session is not safe to share between threads
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
