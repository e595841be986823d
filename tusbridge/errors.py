"""Protocol-neutral failures of the upload service.

Each protocol maps these onto its own status codes and bodies; the service
never speaks HTTP.
"""

from __future__ import annotations


class UploadError(Exception):
    """Base class: the request cannot be carried out as asked."""

    message = "The upload request failed"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.message)

    @property
    def detail(self) -> str:
        return str(self)


class InvalidRequest(UploadError):
    """The request itself is malformed or contradicts the upload."""

    message = "Invalid request"


class PermissionDenied(UploadError):
    """The permission hook refused the request."""

    message = "You are not allowed to upload here"


class FinalUploadImmutable(UploadError):
    """A final (concatenated) upload takes no bytes of its own."""

    message = "A final upload is made from its partial uploads and cannot be written to"


class NotFound(UploadError):
    """No upload with this id exists for this user."""

    message = "Upload not found"


class Gone(UploadError):
    """The upload existed but expired or was terminated."""

    message = "Upload is gone (expired or terminated)"


class OffsetMismatch(UploadError):
    """The client's offset is not the upload's current offset."""

    message = "Upload-Offset does not match the upload's offset"

    def __init__(self, current: int, message: str | None = None) -> None:
        super().__init__(message)
        self.current = current


class TooLarge(UploadError):
    """The upload (or this request's part of it) exceeds a size limit."""

    message = "The upload exceeds the maximum size"


class ExceedsLength(UploadError):
    """More bytes were sent than the upload's declared length leaves room for."""

    message = "The request body runs past the upload's length"


class AlreadyComplete(UploadError):
    """The upload is complete and takes no more data."""

    message = "Upload is already complete"


class NotComplete(UploadError):
    """Completion was asked for before every byte arrived."""

    message = "Upload is not complete yet"


class Locked(UploadError):
    """Another request is writing this upload and did not let go in time."""

    message = "Upload is locked by another request; try again shortly"


class LockLost(UploadError):
    """This request's lock expired while it was writing; another request owns the upload now."""

    message = "The upload lock was lost while writing"


class ChecksumMismatch(UploadError):
    """The body does not match the checksum the client sent."""

    message = "Checksum mismatch"


class QuotaExceeded(UploadError):
    """The owner (or the anonymous client's address) has too many uploads or bytes in progress, or created too many."""

    message = "Too many uploads in progress; finish or delete some first"

    def __init__(self, message: str | None = None, retry_after: int = 60) -> None:
        super().__init__(message)
        # Seconds after which trying again may succeed.
        self.retry_after = retry_after


class StoreUnavailable(UploadError):
    """The record store (Redis) cannot be reached."""

    message = "The upload record store is unavailable; try again shortly"


class Stopping(UploadError):
    """The process is stopping (a deploy, a restart) and took none of the request's bytes."""

    message = "The server is restarting; send the request again"


class StorageFull(UploadError):
    """The data store has no space left."""

    message = "No space left to store the upload"
