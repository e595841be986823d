"""The legacy upload object: django-chunked-upload's ``ChunkedUpload``, kept in Redis.

It is not a Django model (there is no table): it wraps tusbridge's shared
upload record and offers the attributes and methods that views and
``on_completion`` hooks of the original library use.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist
from django.core.files import File
from django.core.files.storage import Storage
from django.core.files.uploadedfile import UploadedFile
from django.core.serializers.json import DjangoJSONEncoder

from .. import errors, locking
from ..appending import AppendSession, WriteRules
from ..data import DataStore, LocalFiles
from ..filenames import safe_filename
from ..record import State, UploadRecord
from ..service import UploadService, get_service
from . import settings
from .constants import COMPLETE, UPLOADING
from .exceptions import ChunkedUploadError
from .md5 import RunningMD5, hexdigest

# Legacy uploads complete when the client says so, and expire a fixed time after creation.
LEGACY_RULES = WriteRules(auto_complete=False, slide_expiry=False)


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=UTC)


class StoredFile:
    """The upload's data: the data being written (in the data store), or where a finished upload was handed to."""

    def __init__(
        self, name: str, *, storage: Storage | None = None, data: DataStore | None = None, upload_id: str = ""
    ) -> None:
        self.storage = storage
        self.name = name
        self._data = data
        self._upload_id = upload_id

    @property
    def path(self) -> str:
        if self.storage is not None:
            return self.storage.path(self.name)
        if isinstance(self._data, LocalFiles):
            return self._data.path(self._upload_id)
        raise NotImplementedError("The upload's data is not a local file in this data store")

    @property
    def size(self) -> int:
        if self.storage is not None:
            return self.storage.size(self.name)
        assert self._data is not None
        return self._data.size(self._upload_id) or 0

    def open(self, mode: str = "rb") -> File:
        if self.storage is not None:
            return self.storage.open(self.name, mode)
        assert self._data is not None
        return File(self._data.open(self._upload_id), name=self.name)

    def __str__(self) -> str:
        return self.name


class ChunkedUploadQuery:
    """What ``get_queryset`` returns: the uploads one requester may see, looked up by ``upload_id``."""

    def __init__(self, model: type[ChunkedUpload], owner: str, filters: dict[str, Any] | None = None) -> None:
        self.model = model
        self.owner = owner
        self.filters = filters or {}

    def filter(self, **filters: Any) -> ChunkedUploadQuery:
        """Narrow by attribute values (compared on the loaded upload)."""
        return ChunkedUploadQuery(self.model, self.owner, {**self.filters, **filters})

    def get(self, upload_id: str) -> ChunkedUpload:
        service = get_service()
        record = service.records.get(upload_id) if upload_id else None
        if record is None or not service.visible(record, self.owner) or record.state is State.TERMINATED:
            raise self.model.DoesNotExist(f"No upload {upload_id!r}")
        upload = self.model(record=record, service=service)
        for name, value in self.filters.items():
            if getattr(upload, name, None) != value:
                raise self.model.DoesNotExist(f"No upload {upload_id!r}")
        return upload


class ChunkedUpload:
    """One upload as the legacy views and hooks see it."""

    class DoesNotExist(ObjectDoesNotExist):
        pass

    # Attributes stored on the record itself; anything else set through the
    # constructor (``get_extra_attrs``) is kept in the record's ``extra``.
    _OWN_FIELDS = frozenset({"filename", "user", "offset", "status", "completed_on", "file", "md5"})

    def __init__(
        self,
        record: UploadRecord | None = None,
        *,
        service: UploadService | None = None,
        **attrs: Any,
    ) -> None:
        self.service = service or get_service()
        self._session: AppendSession | None = None
        self._status = UPLOADING
        self._user: Any = None
        if record is None:
            record = self.service.new_record(
                owner="",
                protocol="legacy",
                length=None,
                expires_at=time.time() + settings.get("EXPIRATION_DELTA").total_seconds(),
            )
            self._new = True
        else:
            self._new = False
            for name, value in record.extra.items():
                object.__setattr__(self, name, value)
        self.record = record
        if record.state is State.COMPLETE:
            self._status = COMPLETE
        for name, value in attrs.items():
            setattr(self, name, value)

    @classmethod
    def query(cls, owner: str) -> ChunkedUploadQuery:
        return ChunkedUploadQuery(cls, owner)

    # Attributes -------------------------------------------------------------

    @property
    def upload_id(self) -> str:
        return self.record.id

    @property
    def filename(self) -> str:
        return self.record.filename

    @filename.setter
    def filename(self, value: str) -> None:
        self.record.filename = value

    @property
    def offset(self) -> int:
        return self.record.offset + (self._session.written if self._session else 0)

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = value

    @property
    def user(self) -> Any:
        if self._user is None and self.record.owner:
            self._user = get_user_model()._default_manager.filter(pk=self.record.owner).first()
        return self._user

    @user.setter
    def user(self, value: Any) -> None:
        self._user = value
        self.record.owner = "" if value is None or not value.is_authenticated else str(value.pk)

    @property
    def created_on(self) -> datetime:
        return _datetime(self.record.created_at)  # type: ignore[return-value]

    @property
    def completed_on(self) -> datetime | None:
        return _datetime(self.record.completed_at)

    @completed_on.setter
    def completed_on(self, value: datetime | None) -> None:
        self.record.completed_at = None if value is None else value.timestamp()

    @property
    def expires_on(self) -> datetime:
        return _datetime(self.record.expires_at)  # type: ignore[return-value]

    @property
    def expired(self) -> bool:
        return self.record.state is State.EXPIRED or self.record.expires_at <= time.time()

    @property
    def md5(self) -> str:
        """MD5 of the bytes so far: kept current while chunks arrive, so this is not a re-read."""
        try:
            return hexdigest(self.record, self.service.data, self.service.read_size)
        except FileNotFoundError:
            raise legacy_error(errors.Gone("The upload's data is gone (terminated meanwhile)")) from None

    @property
    def file(self) -> StoredFile:
        if self.record.stored_name:
            storage = settings.storage() if self.record.extra.get("_legacy_storage") else _tus_storage()
            return StoredFile(self.record.stored_name, storage=storage)
        data = self.service.data
        name = data.path(self.upload_id) if isinstance(data, LocalFiles) else self.upload_id
        return StoredFile(name, data=data, upload_id=self.upload_id)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if not name.startswith("_") and name not in self._OWN_FIELDS and name not in ("service", "record"):
            if not isinstance(getattr(type(self), name, None), property):
                self.record.extra[name] = _jsonable(name, value)

    def __str__(self) -> str:
        state = "complete" if self.status == COMPLETE else "uploading"
        return f"{self.filename or self.upload_id} ({self.upload_id}, {self.offset} bytes, {state})"

    # Writing ----------------------------------------------------------------

    def set_total(self, total: int) -> None:
        """Fix the upload's length from a chunk's Content-Range; a changed total is refused."""
        if self.record.length is None:
            self.record.length = total
            if not self._new:
                self._pending_length = total
        elif self.record.length != total:
            raise ChunkedUploadError(
                400, detail=f"Content-Range total {total} does not match the upload's size ({self.record.length} bytes)"
            )

    def _owns(self, session: AppendSession) -> bool:
        """Whether a write begun by the upload handler is this upload's next chunk."""
        if self._new:
            return session.new and session.record.owner == self.record.owner
        return not session.new and session.upload_id == self.upload_id

    def adopt(self, session: AppendSession) -> None:
        """Take over a write that began before the request was validated (see handlers)."""
        if self._new:
            session.record.filename = self.record.filename
            session.record.extra = self.record.extra
            session.record.expires_at = self.record.expires_at
            session.record.length = self.record.length
            self.record = session.record
        self._session = session

    def append_chunk(self, chunk: Any, chunk_size: int | None = None, save: bool = True) -> None:
        """Add a chunk's bytes at the current offset; they count once the upload is saved."""
        session = getattr(chunk, "session", None)
        if session is not None and self._owns(session):
            self.adopt(session)
        else:
            self._open_session()
            assert self._session is not None
            try:
                for piece in chunk.chunks():
                    self._session.write(piece)
            except OSError as exc:
                self.discard()
                raise storage_error(exc) from exc
        if save:
            self.save()

    def _open_session(self) -> None:
        if self._session is not None:
            return
        try:
            if self._new:
                self._session = self.service.open_new(
                    self.record, rules=LEGACY_RULES, tracker=RunningMD5.new(self.record.id)
                )
            else:
                self._session = self.service.open_write(
                    self.upload_id,
                    self.record.owner,
                    offset=self.record.offset,
                    length=getattr(self, "_pending_length", None),
                    rules=LEGACY_RULES,
                    track=RunningMD5.resume,
                )
        except errors.OffsetMismatch as exc:
            raise ChunkedUploadError(400, detail="Offsets do not match", offset=exc.current) from None
        except errors.UploadError as exc:
            raise legacy_error(exc) from None

    def discard(self) -> None:
        """Drop bytes written but not saved (the request failed)."""
        if self._session is not None:
            self._session.abort()
            self._session = None

    def save(self) -> None:
        """Store what changed: new bytes advance the offset, COMPLETE completes the upload."""
        try:
            if self._session is not None:
                session, self._session = self._session, None
                self.record = self.service.commit(session, keep_lock=locking.may_keep()).record
                self._new = False
            elif self._new:
                created = self.service.create(
                    owner=self.record.owner,
                    protocol="legacy",
                    length=self.record.length,
                    filename=self.record.filename,
                    extra=self.record.extra,
                    expires_at=self.record.expires_at,
                )
                self.record = created
                self._new = False
            else:
                self.service.records.update(self.upload_id, filename=self.record.filename, extra=self.record.extra)
            if self._status == COMPLETE and self.record.state is State.UPLOADING:
                self.record = self.service.complete(self.upload_id, self.record.owner, target=self._target())
        except errors.UploadError as exc:
            raise legacy_error(exc) from None

    def _target(self) -> tuple[Storage, str] | None:
        """Where CHUNKED_UPLOAD_* settings send a finished legacy upload, when a project set them."""
        if not settings.is_set("STORAGE", "UPLOAD_PATH", "UPLOAD_TO"):
            return None
        self.record.extra["_legacy_storage"] = True
        self.service.records.update(self.upload_id, extra=self.record.extra)
        upload_to = settings.get("UPLOAD_TO")
        if callable(upload_to):
            name = upload_to(self, self.filename)
        else:
            name = os.path.join(time.strftime(upload_to), safe_filename(self.filename or self.upload_id))
        return settings.storage(), name

    def delete(self, delete_file: bool = True) -> None:
        """Forget the upload; with ``delete_file`` its data (and a handed-over file) go too."""
        self.discard()
        stored = self.file if self.record.stored_name else None
        self.service.forget(self.record, delete_data=delete_file)
        if delete_file:
            if stored is not None and stored.storage is not None:
                stored.storage.delete(stored.name)

    def get_uploaded_file(self) -> UploadedFile:
        """The finished file as ``on_completion`` receives it: named after ``filename``, size = offset."""
        name = safe_filename(self.filename) if self.filename else self.upload_id
        return UploadedFile(file=self.file.open("rb"), name=name, size=self.offset)

    def chunks(self) -> Iterator[bytes]:
        with self.file.open("rb") as fh:
            yield from fh.chunks()


def _tus_storage() -> Storage | None:
    from ..handover import configured_storage

    return configured_storage()


def _jsonable(name: str, value: Any) -> Any:
    try:
        return json.loads(DjangoJSONEncoder().encode(value))
    except TypeError:
        raise TypeError(
            f"Upload attribute {name!r} must be JSON-serialisable to be kept with the upload"
            f" (got {type(value).__name__})"
        ) from None


def storage_error(exc: OSError) -> ChunkedUploadError:
    """A failed write of chunk data, as the legacy protocol reports it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ChunkedUploadError(507, detail="No space left to store the upload")
    return ChunkedUploadError(500, detail=f"The upload data could not be written: {exc.strerror or exc}")


def legacy_error(exc: errors.UploadError) -> ChunkedUploadError:
    """A service error as the legacy protocol reports it."""
    status = {
        errors.NotFound: 404,
        errors.Gone: 410,
        errors.AlreadyComplete: 400,
        errors.Locked: 409,
        errors.LockLost: 409,
        errors.StoreUnavailable: 503,
        errors.Stopping: 503,
        errors.StorageFull: 507,
        errors.QuotaExceeded: 429,
    }
    code = next((c for cls, c in status.items() if isinstance(exc, cls)), 400)
    if isinstance(exc, errors.AlreadyComplete):
        return ChunkedUploadError(code, detail='Upload has already been marked as "complete"')
    if isinstance(exc, errors.OffsetMismatch):
        return ChunkedUploadError(code, detail="Offsets do not match", offset=exc.current)
    error = ChunkedUploadError(code, detail=exc.detail)
    if isinstance(exc, errors.QuotaExceeded):
        error.retry_after = exc.retry_after
    return error
