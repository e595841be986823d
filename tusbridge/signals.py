"""Signals sent by the upload service."""

from django.dispatch import Signal

# Sent exactly once per upload, when its last byte is stored (or, for the
# legacy protocol, when the completion request verified it). Arguments:
# ``upload`` (the UploadRecord, ``stored_name`` set if a Storage took the file)
# and ``file`` (a django.core.files.File open for reading, at its start for the
# first receiver: read it with ``file.chunks()``, or ``seek(0)`` first, since
# an earlier receiver may have read it). A receiver that raises is logged and
# does not undo or fail the completion.
upload_completed = Signal()
