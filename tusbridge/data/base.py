"""The interface every data store implements.

The core interface is what the tus core protocol needs: create, write at an
offset, read back. Optional abilities are separate small interfaces; a store
that can terminate or concatenate says so by implementing them, and the
service advertises the matching tus extension only then.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import BinaryIO, Protocol, runtime_checkable

from django.core.checks import CheckMessage


class Writer(abc.ABC):
    """Appends to one upload's data, starting at the offset it was opened at."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def sync(self) -> None:
        """Make what was written durable before the offset is advanced."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Discard everything written through this writer."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def written(self) -> int:
        """Bytes written through this writer so far."""


class DataStore(abc.ABC):
    @abc.abstractmethod
    def create(self, upload_id: str) -> None:
        """Make an empty data object for a new upload."""

    @abc.abstractmethod
    def writer(self, upload_id: str, offset: int) -> Writer:
        """Open for appending at ``offset``; anything stored past it is cut off first."""

    @abc.abstractmethod
    def open(self, upload_id: str) -> BinaryIO:
        """Open the data for reading from the start."""

    @abc.abstractmethod
    def size(self, upload_id: str) -> int | None:
        """Bytes stored, or None when there is no data object."""

    @classmethod
    def from_settings(cls) -> DataStore:
        """The store as the TUSBRIDGE_* settings describe it; TUSBRIDGE_DATA_STORE names the class."""
        return cls()

    @classmethod
    def check(cls) -> list[CheckMessage]:
        """System checks of this backend's settings (``manage.py check``)."""
        return []


@runtime_checkable
class LocalFiles(Protocol):
    """A store whose data objects are local files (what a legacy project's ``upload.file.path`` gives)."""

    def path(self, upload_id: str) -> str: ...


@runtime_checkable
class Terminator(Protocol):
    """A store that can delete an upload's data (tus termination, expiry)."""

    def remove(self, upload_id: str) -> None: ...


@runtime_checkable
class InfoKeeper(Protocol):
    """A store that keeps a copy of each upload's record beside its data.

    If the record store loses records (Redis restarted without persistence,
    a key evicted), the copies and the data sizes are enough to rebuild them.
    """

    def write_info(self, upload_id: str, info: dict[str, str]) -> None: ...

    def read_info(self, upload_id: str) -> dict[str, str] | None: ...

    def upload_ids(self) -> Iterator[str]: ...

    def age(self, upload_id: str) -> float | None:
        """Seconds since the upload's data last changed, or None when there is none."""
        ...


@runtime_checkable
class Concatenator(Protocol):
    """A store that can join finished uploads into a new one (tus concatenation)."""

    def concatenate(self, target_id: str, source_ids: Sequence[str]) -> None: ...


@runtime_checkable
class Finisher(Protocol):
    """A store that must turn a completed upload's data into its finished form before it can be read.

    An object store keeps an upload in progress as pieces (S3: a multipart
    upload) and joins them in place, once, when the upload completes. The
    service calls ``finish`` before it reads a completed upload; it must be
    safe to call again on a finished upload.
    """

    def finish(self, upload_id: str) -> None: ...
