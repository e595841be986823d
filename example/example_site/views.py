"""The example's pages: how to upload with curl/tuspy, and three browser clients.

- ``/uppy/``: Uppy's Dashboard over tus to ``/files/``;
- ``/legacy/``: jQuery-File-Upload speaking the legacy chunked-upload protocol
  to ``/api/chunked_upload/``, written like django-chunked-upload's demo;
- ``/migrate/``: an upload begun by jQuery-File-Upload and finished by
  tus-js-client on the same upload URL;
- ``/api/finished/``: the requester's finished uploads as JSON (recorded by
  :mod:`example_site.receivers`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET

from .models import FinishedUpload

#: Uppy's tus chunk size unless the page is opened with ``?chunk=BYTES``.
DEFAULT_CHUNK_SIZE = 5 * 1024 * 1024
#: jQuery-File-Upload's maxChunkSize, as in django-chunked-upload's demo.
LEGACY_CHUNK_SIZE = 100_000


def _anonymous_allowed() -> bool:
    return bool(getattr(settings, "TUSBRIDGE_ALLOW_ANONYMOUS", False))


def upload_page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Log in first, unless anonymous uploads are allowed; the legacy pages need the CSRF cookie."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated and not _anonymous_allowed():
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return require_GET(ensure_csrf_cookie(wrapper))


def missing_npm_packages() -> list[str]:
    """npm packages whose files the pages need but ``npm ci`` has not installed."""
    return [name for name, path in settings.NPM_STATIC_DIRS.items() if not path.is_dir()]


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.GET.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high)


def bytes_label(n: int) -> str:
    """``5 MiB (5,242,880 bytes)`` for round binary sizes, else ``100,000 bytes``."""
    value, unit = float(n), "bytes"
    for next_unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    if unit == "bytes" or value != int(value):
        return f"{n:,} bytes"
    return f"{value:.0f} {unit} ({n:,} bytes)"


def _page_context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    base_url = request.build_absolute_uri("/").rstrip("/")
    return {
        "files_url": f"{base_url}/files/",
        "missing_packages": missing_npm_packages(),
        "allow_anonymous": _anonymous_allowed(),
        **extra,
    }


def home(request: HttpRequest) -> HttpResponse:
    """Explain uploading with curl and tuspy, filled in with this server's URLs."""
    base_url = request.build_absolute_uri("/").rstrip("/")
    context = {
        "base_url": base_url,
        "files_url": f"{base_url}/files/",
        "login_url": f"{base_url}/accounts/login/",
        "allow_anonymous": _anonymous_allowed(),
        "max_size": settings.TUSBRIDGE_MAX_SIZE,
    }
    return render(request, "example_site/home.html", context)


@upload_page
def uppy(request: HttpRequest) -> HttpResponse:
    """Uppy's Dashboard over tus; ``?chunk=BYTES`` sets the PATCH size (default 5 MiB)."""
    config = {
        "endpoint": request.build_absolute_uri(reverse("tusbridge:collection")),
        "chunkSize": _int_param(request, "chunk", DEFAULT_CHUNK_SIZE, 16 * 1024, 512 * 1024 * 1024),
        "finishedUrl": reverse("finished"),
    }
    context = _page_context(request, uppy_config=config, chunk_label=bytes_label(config["chunkSize"]))
    return render(request, "example_site/uppy.html", context)


@upload_page
def legacy(request: HttpRequest) -> HttpResponse:
    """jQuery-File-Upload with the legacy protocol (chunks of 100 000 bytes, md5 from SparkMD5)."""
    config = {
        "chunkUrl": reverse("chunked_upload:chunked_upload"),
        "completeUrl": reverse("chunked_upload:chunked_upload_complete"),
        "chunkSize": _int_param(request, "chunk", LEGACY_CHUNK_SIZE, 1024, 64 * 1024 * 1024),
        "finishedUrl": reverse("finished"),
    }
    context = _page_context(request, legacy_config=config, chunk_label=bytes_label(config["chunkSize"]))
    return render(request, "example_site/legacy.html", context)


@upload_page
def migrate(request: HttpRequest) -> HttpResponse:
    """First chunks with jQuery-File-Upload (legacy), the rest with tus-js-client on ``/files/<id>``."""
    config = {
        "chunkUrl": reverse("chunked_upload:chunked_upload"),
        "tusUploadUrlPrefix": request.build_absolute_uri(reverse("tusbridge:collection")),
        "chunkSize": _int_param(request, "chunk", LEGACY_CHUNK_SIZE, 1024, 64 * 1024 * 1024),
        "legacyChunks": _int_param(request, "legacy_chunks", 3, 1, 1000),
        "tusChunkSize": _int_param(request, "tus_chunk", DEFAULT_CHUNK_SIZE, 16 * 1024, 512 * 1024 * 1024),
        "finishedUrl": reverse("finished"),
    }
    context = _page_context(request, migrate_config=config, chunk_label=bytes_label(config["chunkSize"]))
    return render(request, "example_site/migrate.html", context)


@require_GET
def finished(request: HttpRequest) -> HttpResponse:
    """The requester's finished uploads, newest first (anonymous: everyone's anonymous uploads)."""
    if request.user.is_authenticated:
        rows = FinishedUpload.objects.filter(user=request.user)
    elif _anonymous_allowed():
        rows = FinishedUpload.objects.filter(user__isnull=True)
    else:
        return JsonResponse({"detail": "Authentication credentials were not provided"}, status=403)
    return JsonResponse({"files": [row.as_json() for row in rows[:100]]})
