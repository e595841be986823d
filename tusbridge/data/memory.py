"""Upload data in this process's memory, for the fast test tier.

It behaves as the filesystem store does (a writer cuts off what lies past
its offset, a rollback goes back to where it opened, info copies beside the
data, concatenation), without touching a disk, so that tests of the service
and the views run in milliseconds. Everything lives in one process: it must
never be used with several worker processes, and its ``check()`` says so
(tusbridge.W010). It has no ``path()``: its data objects are not local files.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from django.core.checks import CheckMessage, Warning

from .base import DataStore, Writer

# The ids the filesystem store accepts, so that both refuse the same ones.
_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


@dataclass
class _Object:
    """One upload's bytes; a writer keeps writing to it even after it was removed, as to an unlinked file."""

    data: bytearray = field(default_factory=bytearray)
    changed_at: float = field(default_factory=time.time)


class MemoryWriter(Writer):
    def __init__(self, store: MemoryDataStore, target: _Object, offset: int) -> None:
        self._store = store
        self._target = target
        self._start = offset
        self._position = offset
        self._closed = False

    @property
    def written(self) -> int:
        return self._position - self._start

    def write(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("write to a closed writer")
        with self._store._mutex:
            buffer = self._target.data
            if len(buffer) < self._position:  # cut short meanwhile: a hole of zeros, as pwrite leaves
                buffer.extend(bytes(self._position - len(buffer)))
            buffer[self._position : self._position + len(data)] = data
            self._target.changed_at = time.time()
        self._position += len(data)

    def sync(self) -> None:
        if self._closed:
            raise ValueError("sync of a closed writer")

    def rollback(self) -> None:
        with self._store._mutex:
            _resize(self._target, self._start)
        self._position = self._start

    def close(self) -> None:
        self._closed = True


class MemoryDataStore(DataStore):
    """One ``bytearray`` per upload and a copy of its info, behind one ``threading.Lock``.

    The lock is only held while bytes are copied, never across anything that
    blocks, so it is safe under gevent too.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._objects: dict[str, _Object] = {}
        self._info: dict[str, dict[str, str]] = {}

    @classmethod
    def from_settings(cls) -> MemoryDataStore:
        """The process's one store, shared by all its requests."""
        return _shared

    @classmethod
    def check(cls) -> list[CheckMessage]:
        return [
            Warning(
                "The in-memory data store keeps upload data in one process only; "
                "several worker processes would each see their own data.",
                hint="Use it for tests with a single process; use FileSystemDataStore in production.",
                id="tusbridge.W010",
            )
        ]

    def reset(self) -> None:
        """Forget everything (between tests)."""
        with self._mutex:
            self._objects.clear()
            self._info.clear()

    def create(self, upload_id: str) -> None:
        _check_id(upload_id)
        with self._mutex:
            if upload_id in self._objects:
                raise FileExistsError(f"upload data {upload_id!r} exists already")
            self._objects[upload_id] = _Object()

    def writer(self, upload_id: str, offset: int) -> MemoryWriter:
        with self._mutex:
            target = self._object(upload_id)
            # Bytes past the recorded offset were never acknowledged: cut them off.
            if len(target.data) != offset:
                _resize(target, offset)
        return MemoryWriter(self, target, offset)

    def open(self, upload_id: str) -> BinaryIO:
        with self._mutex:
            data = bytes(self._object(upload_id).data)
        return io.BytesIO(data)

    def size(self, upload_id: str) -> int | None:
        _check_id(upload_id)
        with self._mutex:
            target = self._objects.get(upload_id)
            return None if target is None else len(target.data)

    # Terminator -----------------------------------------------------------------

    def remove(self, upload_id: str) -> None:
        _check_id(upload_id)
        with self._mutex:
            self._objects.pop(upload_id, None)
            self._info.pop(upload_id, None)

    # InfoKeeper -----------------------------------------------------------------

    def write_info(self, upload_id: str, info: dict[str, str]) -> None:
        _check_id(upload_id)
        copy = dict(info)
        with self._mutex:
            self._info[upload_id] = copy

    def read_info(self, upload_id: str) -> dict[str, str] | None:
        _check_id(upload_id)
        with self._mutex:
            info = self._info.get(upload_id)
            return None if info is None else dict(info)

    def upload_ids(self) -> Iterator[str]:
        """Ids of the uploads that have data here."""
        with self._mutex:
            ids = list(self._objects)
        yield from ids

    def age(self, upload_id: str) -> float | None:
        _check_id(upload_id)
        with self._mutex:
            target = self._objects.get(upload_id)
            changed_at = None if target is None else target.changed_at
        return None if changed_at is None else time.time() - changed_at

    # Concatenator ---------------------------------------------------------------

    def concatenate(self, target_id: str, source_ids: Sequence[str]) -> None:
        """Join the sources into the target (created, or replaced in place)."""
        _check_id(target_id)
        with self._mutex:
            joined = b"".join(bytes(self._object(source_id).data) for source_id in source_ids)
            target = self._objects.get(target_id)
            if target is None:
                self._objects[target_id] = _Object(bytearray(joined))
            else:
                target.data[:] = joined
                target.changed_at = time.time()

    # Helpers (call with the mutex held) -----------------------------------------

    def _object(self, upload_id: str) -> _Object:
        _check_id(upload_id)
        target = self._objects.get(upload_id)
        if target is None:
            raise FileNotFoundError(f"no data for upload {upload_id!r}")
        return target


def _check_id(upload_id: str) -> None:
    if not upload_id or not set(upload_id) <= _ID_CHARS:
        raise ValueError(f"invalid upload id {upload_id!r}")


def _resize(target: _Object, size: int) -> None:
    """Cut the data to ``size`` bytes, or pad it with zeros up to it (as ``ftruncate``)."""
    if len(target.data) > size:
        del target.data[size:]
    else:
        target.data.extend(bytes(size - len(target.data)))
    target.changed_at = time.time()


_shared = MemoryDataStore()
