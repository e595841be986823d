"""CORS for browser clients on other origins (Uppy, tus-js-client).

When the project already runs django-cors-headers, it owns the
``Access-Control-Allow-*`` headers and the preflight; tusbridge then only adds
the list of tus headers a browser must be allowed to read, and the system
checks say which of its settings lack tus headers.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from .. import conf

# Headers a tus client sends (the preflight must allow them).
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Checksum",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
    "X-HTTP-Method-Override",
    "X-CSRFToken",
    "X-Requested-With",
)

# Headers of tus responses that a client reads (a browser hides them unless exposed).
EXPOSE_HEADERS = (
    "Location",
    "Tus-Checksum-Algorithm",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Resumable",
    "Tus-Version",
    "Upload-Concat",
    "Upload-Defer-Length",
    "Upload-Expires",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Offset",
)

METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS")

CORS_HEADERS_MIDDLEWARE = "corsheaders.middleware.CorsMiddleware"


def cors_headers_active() -> bool:
    """Whether django-cors-headers handles CORS for this project."""
    return CORS_HEADERS_MIDDLEWARE in getattr(settings, "MIDDLEWARE", ())


def origin_allowed(origin: str) -> bool:
    allowed = conf.get("CORS_ALLOWED_ORIGINS")
    return "*" in allowed or origin in allowed


def is_preflight(request: HttpRequest) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def add_cors_headers(request: HttpRequest, response: HttpResponse) -> None:
    """Decorate a tus response for a cross-origin request."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    response["Access-Control-Expose-Headers"] = ", ".join(EXPOSE_HEADERS)
    if cors_headers_active() or not origin_allowed(origin):
        return
    credentials = bool(conf.get("CORS_ALLOW_CREDENTIALS"))
    wildcard = "*" in conf.get("CORS_ALLOWED_ORIGINS") and not credentials
    response["Access-Control-Allow-Origin"] = "*" if wildcard else origin
    if not wildcard:
        vary = response.get("Vary")
        response["Vary"] = f"{vary}, Origin" if vary else "Origin"
    if credentials:
        response["Access-Control-Allow-Credentials"] = "true"
    if is_preflight(request):
        response["Access-Control-Allow-Methods"] = ", ".join(METHODS)
        response["Access-Control-Allow-Headers"] = ", ".join(REQUEST_HEADERS)
        response["Access-Control-Max-Age"] = "86400"
