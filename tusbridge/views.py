"""The upload endpoint that serves both protocols.

A request is tus when it carries ``Tus-Resumable`` (or is an OPTIONS
request); a multipart POST without it is a legacy chunk. This module is the
only place that knows both protocols; neither imports the other.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt

from . import conf
from .tus.views import TusView, stream_view

_tus = TusView.as_view()
_legacy_views: dict[str, Any] = {}


def _legacy(setting: str) -> Any:
    """The legacy view class named by a setting, as a view function (built once per class)."""
    path = conf.get(setting)
    view = _legacy_views.get(path)
    if view is None:
        view = _legacy_views[path] = import_string(path).as_view()
    return view


# A request with any of these is a tus request, even without Tus-Resumable
# (and is then refused with 412 by the tus view).
_TUS_HEADERS = ("Tus-Resumable", "Upload-Length", "Upload-Defer-Length", "Upload-Concat", "Upload-Metadata")


def is_legacy_chunk(request: HttpRequest) -> bool:
    return (
        request.method == "POST"
        and request.content_type == "multipart/form-data"
        and not any(header in request.headers for header in _TUS_HEADERS)
    )


@csrf_exempt  # tus needs no token (see tus.views); the legacy views check it themselves
def collection(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    if is_legacy_chunk(request):
        return _legacy("LEGACY_CHUNK_VIEW")(request, *args, **kwargs)
    return _tus(request, *args, **kwargs)


# One upload over tus. Its ``streaming_view`` (and the collection's) serves the
# requests whose bodies an ASGI server streams (see ``tusbridge.asgi``).
upload = TusView.as_view()
upload.streaming_view = stream_view  # type: ignore[attr-defined]
collection.streaming_view = stream_view  # type: ignore[attr-defined]


@csrf_exempt  # the legacy views check the CSRF token themselves
def legacy_complete(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    return _legacy("LEGACY_COMPLETE_VIEW")(request, *args, **kwargs)
