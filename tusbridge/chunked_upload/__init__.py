"""The legacy chunked-upload protocol (django-chunked-upload), on tusbridge's upload records.

Projects switch by changing their imports from ``chunked_upload`` to
``tusbridge.chunked_upload``: the views, hooks, constants, exception and
settings keep their names and wire behaviour.
"""

from .constants import COMPLETE, UPLOADING, http_status
from .exceptions import ChunkedUploadError

__all__ = ["COMPLETE", "UPLOADING", "ChunkedUploadError", "http_status"]
