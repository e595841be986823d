"""Who may upload: the default permission hook and the owner of a request."""

from __future__ import annotations

from django.http import HttpRequest

from . import conf
from .record import UploadRecord


def owner_of(request: HttpRequest) -> str:
    """The owner id recorded on uploads: the user's pk, or "" for anonymous requests."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return str(user.pk)
    return ""


def default_permission(request: HttpRequest, action: str, upload: UploadRecord | None) -> bool:
    """Logged-in users may upload; anonymous requests only with TUSBRIDGE_ALLOW_ANONYMOUS.

    ``action`` is one of "create", "read", "write", "delete". Ownership of an
    existing upload is checked by the service, not here.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return True
    return bool(conf.get("ALLOW_ANONYMOUS"))
