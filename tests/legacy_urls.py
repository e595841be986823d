"""URLconf for the legacy-protocol tests (``@pytest.mark.urls("tests.legacy_urls")``).

- ``api/chunked_upload/`` and ``api/chunked_upload_complete/``: the legacy views
  where django-chunked-upload's demo mounts them (tusbridge.chunked_upload.urls);
- ``files/``: tusbridge's main endpoint (tus and legacy chunks), ``files/complete/``;
- ``variant/...``: view subclasses with class attributes a project may set;
- ``test-login/``: the harness's login view, for live-style requests.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.urls import include, path

from tests.urls import test_login
from tusbridge.chunked_upload.constants import http_status
from tusbridge.chunked_upload.exceptions import ChunkedUploadError
from tusbridge.chunked_upload.views import ChunkedUploadCompleteView, ChunkedUploadView


class StrictChunkView(ChunkedUploadView):
    """Refuses chunks without a valid Content-Range."""

    fail_if_no_header = True


class TheFileChunkView(ChunkedUploadView):
    """The demo's field name."""

    field_name = "the_file"


class LimitedChunkView(ChunkedUploadView):
    """At most 1000 bytes per upload, set on the class."""

    max_bytes = 1000


class HookLimitedChunkView(ChunkedUploadView):
    """At most 1000 bytes per upload, from an overriding ``get_max_bytes``."""

    def get_max_bytes(self, request: HttpRequest) -> int | None:
        return 1000


class NoMd5CompleteView(ChunkedUploadCompleteView):
    """Completion without an md5."""

    do_md5_check = False


class NoCsrfChunkView(ChunkedUploadView):
    """A project that turned the view's CSRF check off."""

    enforce_csrf = False


class ValidateRejectsView(ChunkedUploadView):
    """``validate`` refuses every request (after the body was read)."""

    def validate(self, request: HttpRequest) -> None:
        raise ChunkedUploadError(http_status.HTTP_400_BAD_REQUEST, detail="refused by validate")


class PreSaveRejectsView(ChunkedUploadView):
    """``pre_save`` refuses to save (the chunk's bytes were already written)."""

    def pre_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        raise ChunkedUploadError(http_status.HTTP_400_BAD_REQUEST, detail="refused by pre_save")


#: Files in FILE_UPLOAD_TEMP_DIR seen by TempDirProbeView.pre_save, one list per request.
TEMP_FILES_SEEN: list[list[str]] = []


class TempDirProbeView(ChunkedUploadView):
    """Looks into FILE_UPLOAD_TEMP_DIR while the chunk's part is still open (before it is saved)."""

    def pre_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        TEMP_FILES_SEEN.append(sorted(os.listdir(settings.FILE_UPLOAD_TEMP_DIR)))


#: (file name, content) of every on_completion call of RecordingCompleteView.
COMPLETED: list[tuple[str, bytes]] = []


class RecordingCompleteView(ChunkedUploadCompleteView):
    """Records each on_completion call in COMPLETED."""

    def on_completion(self, uploaded_file: Any, request: HttpRequest) -> None:
        COMPLETED.append((uploaded_file.name, uploaded_file.read()))


urlpatterns = [
    path("api/", include("tusbridge.chunked_upload.urls")),
    path("files/", include("tusbridge.urls")),
    path("variant/strict/", StrictChunkView.as_view()),
    path("variant/the_file/", TheFileChunkView.as_view()),
    path("variant/limited/", LimitedChunkView.as_view()),
    path("variant/hook_limited/", HookLimitedChunkView.as_view()),
    path("variant/nomd5/", NoMd5CompleteView.as_view()),
    path("variant/nocsrf/", NoCsrfChunkView.as_view()),
    path("variant/recording/", RecordingCompleteView.as_view()),
    path("variant/reject_validate/", ValidateRejectsView.as_view()),
    path("variant/reject_pre_save/", PreSaveRejectsView.as_view()),
    path("variant/temp_probe/", TempDirProbeView.as_view()),
    path("test-login/", test_login),
]
