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


def client_address(request: HttpRequest) -> str:
    """The client's address: the connection's, or as the trusted proxies in front recorded it.

    With TUSBRIDGE_TRUSTED_PROXY_COUNT = n, the n-th address from the right of
    X-Forwarded-For is the one the outermost trusted proxy saw; anything left
    of it was written by the client and is not believed.
    """
    proxies = int(conf.get("TRUSTED_PROXY_COUNT") or 0)
    if proxies > 0:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return str(request.META.get("REMOTE_ADDR", ""))


def default_permission(request: HttpRequest, action: str, upload: UploadRecord | None) -> bool:
    """Logged-in users may upload; anonymous requests only with TUSBRIDGE_ALLOW_ANONYMOUS.

    ``action`` is one of "create", "read", "write", "delete". Ownership of an
    existing upload is checked by the service, not here.
    """
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return True
    return bool(conf.get("ALLOW_ANONYMOUS"))
