"""The legacy chunk and completion views, with django-chunked-upload's hooks.

Every hook of the original is here, called in the same order with the same
arguments; the known defects of the original are fixed (see the README).
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings as django_settings
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.utils.decorators import classonlymethod
from django.utils.module_loading import import_string
from django.views.generic import View

from .. import conf, errors
from ..permissions import client_address, owner_of
from ..service import UploadService, get_service
from . import settings
from .constants import COMPLETE, http_status
from .exceptions import ChunkedUploadError
from .handlers import DirectChunkHandler
from .models import ChunkedUpload, storage_error
from .response import Response

_CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"
# Offsets beyond a 64-bit file offset are not a place in any file.
_MAX_OFFSET = 2**63 - 1


class _FromSetting:
    """A class attribute that reads a CHUNKED_UPLOAD_* setting each time (until a subclass sets a value)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type) -> Any:
        return settings.get(self.name)


def _csrf_protected_view(request: HttpRequest) -> HttpResponse:  # pragma: no cover - never called
    raise AssertionError("only used to ask CsrfViewMiddleware for a verdict")


def check_usable(chunked_upload: ChunkedUpload) -> None:
    """An expired or completed upload takes neither chunks nor a second completion."""
    if chunked_upload.expired:
        raise ChunkedUploadError(status=http_status.HTTP_410_GONE, detail="Upload has expired")
    if chunked_upload.status == COMPLETE:
        raise ChunkedUploadError(
            status=http_status.HTTP_400_BAD_REQUEST, detail='Upload has already been marked as "complete"'
        )


class ChunkedUploadBaseView(View):
    """What both legacy views share: who may see which upload, the save hooks, errors as JSON."""

    http_method_names = ["post"]
    model: type[ChunkedUpload] = ChunkedUpload
    user_field_name = "user"
    # The views check CSRF themselves, after installing the streaming upload
    # handler (Django's middleware would parse the body first). Set False to
    # serve clients that cannot send the token.
    enforce_csrf = True

    @classonlymethod
    def as_view(cls, **initkwargs: Any) -> Any:
        view = super().as_view(**initkwargs)
        view.csrf_exempt = True  # checked in post(), see enforce_csrf
        return view

    @property
    def service(self) -> UploadService:
        service = self.__dict__.get("_service")
        if service is None:
            service = self.__dict__["_service"] = get_service()
        return service

    def get_queryset(self, request: HttpRequest) -> Any:
        """The uploads this request may see: its user's (and anonymous ones, reachable by id)."""
        return self.model.query(owner_of(request))

    def get_upload(self, request: HttpRequest, upload_id: str) -> ChunkedUpload:
        try:
            return self.get_queryset(request).get(upload_id=upload_id)
        except self.model.DoesNotExist:
            raise ChunkedUploadError(http_status.HTTP_404_NOT_FOUND, detail="Not found") from None

    def validate(self, request: HttpRequest) -> None:
        """Raise ChunkedUploadError to refuse a request (a hook; accepts everything)."""

    def get_response_data(self, chunked_upload: ChunkedUpload, request: HttpRequest) -> dict[str, Any]:
        return {}

    def pre_save(self, chunked_upload: ChunkedUpload, request: HttpRequest, new: bool = False) -> None:
        """Hook before the upload is saved."""

    def save(self, chunked_upload: ChunkedUpload, request: HttpRequest, new: bool = False) -> None:
        chunked_upload.save()

    def post_save(self, chunked_upload: ChunkedUpload, request: HttpRequest, new: bool = False) -> None:
        """Hook after the upload is saved."""

    def _save(self, chunked_upload: ChunkedUpload) -> None:
        new = chunked_upload._new
        self.pre_save(chunked_upload, self.request, new=new)
        self.save(chunked_upload, self.request, new=new)
        self.post_save(chunked_upload, self.request, new=new)

    def check_permissions(self, request: HttpRequest) -> None:
        """Raise ChunkedUploadError to deny (return values are ignored).

        By default the TUSBRIDGE_PERMISSION hook decides: logged-in users,
        and anonymous ones only with TUSBRIDGE_ALLOW_ANONYMOUS.
        """
        hook = import_string(conf.get("PERMISSION"))
        if not hook(request, "create", None):
            raise ChunkedUploadError(
                status=http_status.HTTP_403_FORBIDDEN, detail="Authentication credentials were not provided"
            )

    def csrf_failure(self, request: HttpRequest) -> HttpResponse | None:
        """Django's CSRF verdict for this request, as CsrfViewMiddleware would give it."""
        if not self.enforce_csrf or _CSRF_MIDDLEWARE not in getattr(django_settings, "MIDDLEWARE", ()):
            return None
        return CsrfViewMiddleware(_csrf_protected_view).process_view(request, _csrf_protected_view, (), {})

    def prepare(self, request: HttpRequest) -> None:
        """Set the request up before anything reads its body."""

    def finish_request(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """Last touch on every response; also where unsaved writes are dropped."""
        return response

    def _post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        raise NotImplementedError

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse | None = None
        try:
            self.prepare(request)
            self.check_permissions(request)
            response = self.csrf_failure(request)
            if response is None:
                response = self._post(request, *args, **kwargs)
        except ChunkedUploadError as error:
            response = Response(error.data, status=error.status_code)
            if error.retry_after is not None:
                response["Retry-After"] = str(error.retry_after)
            elif error.status_code == http_status.HTTP_503_SERVICE_UNAVAILABLE:
                response["Retry-After"] = "5"
        except errors.StoreUnavailable:
            response = Response(
                {"detail": errors.StoreUnavailable.message},
                status=http_status.HTTP_503_SERVICE_UNAVAILABLE,
            )
            response["Retry-After"] = "5"
        except BaseException:
            # Anything else (a malformed body, a bug): drop unsaved writes, then let Django answer.
            self.finish_request(request, HttpResponse(status=500))
            raise
        return self.finish_request(request, response)


class ChunkedUploadView(ChunkedUploadBaseView):
    """Receives one chunk: multipart, the file part under ``field_name``, Content-Range for its place."""

    field_name = "file"
    content_range_header = "HTTP_CONTENT_RANGE"
    content_range_pattern = re.compile(r"^bytes (?P<start>\d+)-(?P<end>\d+)/(?P<total>\d+)$")
    max_bytes = _FromSetting("MAX_BYTES")
    fail_if_no_header = False

    def get_extra_attrs(self, request: HttpRequest) -> dict[str, Any]:
        """Extra attributes for a new upload (JSON-serialisable values; kept with the upload)."""
        return {}

    def get_max_bytes(self, request: HttpRequest) -> int | None:
        return self.max_bytes

    def max_bytes_before_hooks(self) -> int | None:
        """The size limit where it is known without calling ``get_max_bytes``.

        The upload handler refuses an oversized chunk before writing it when
        the limit is the plain attribute; an overriding ``get_max_bytes`` is
        only called by the view, once, where the original calls it.
        """
        if type(self).get_max_bytes is ChunkedUploadView.get_max_bytes:
            return self.max_bytes
        return None

    def create_chunked_upload(self, save: bool = False, **attrs: Any) -> ChunkedUpload:
        chunked_upload = self.model(service=self.service, **attrs)
        if save:
            chunked_upload.save()
        return chunked_upload

    def is_valid_chunked_upload(self, chunked_upload: ChunkedUpload) -> None:
        check_usable(chunked_upload)

    def get_response_data(self, chunked_upload: ChunkedUpload, request: HttpRequest) -> dict[str, Any]:
        return {
            "upload_id": chunked_upload.upload_id,
            "offset": chunked_upload.offset,
            "expires": chunked_upload.expires_on,
        }

    def chunk_span(self, request: HttpRequest) -> tuple[int, int, int] | None:
        """(start, inclusive end, total) from the Content-Range header, or None without a valid one."""
        match = self.content_range_pattern.match(request.META.get(self.content_range_header, ""))
        if not match:
            return None
        try:
            span = int(match.group("start")), int(match.group("end")), int(match.group("total"))
        except ValueError:  # more digits than int() accepts: not a usable header
            return None
        if max(span) > _MAX_OFFSET:
            return None
        return span

    def get_upload(self, request: HttpRequest, upload_id: str) -> ChunkedUpload:
        """The upload, as the record that the upload handler read under the lock when it has one.

        That record is exactly what the default ``get_queryset`` would find;
        a subclass with its own ``get_queryset`` is always asked instead.
        """
        session = self._handler.session
        if (
            session is not None
            and not session.new
            and session.upload_id == upload_id
            and type(self).get_queryset is ChunkedUploadBaseView.get_queryset
        ):
            return self.model(record=session.record, service=self.service)
        return super().get_upload(request, upload_id)

    def prepare(self, request: HttpRequest) -> None:
        self._upload: ChunkedUpload | None = None
        self._handler = DirectChunkHandler(request, self)
        self._handler.install()

    def _post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        chunk = request.FILES.get(self.field_name)
        if chunk is None:
            raise ChunkedUploadError(status=http_status.HTTP_400_BAD_REQUEST, detail="No chunk file was submitted")
        failure = getattr(chunk, "failure", None)
        if failure is not None:
            raise storage_error(failure)
        self.validate(request)
        upload_id = request.POST.get("upload_id")
        if upload_id:
            chunked_upload = self.get_upload(request, upload_id)
            self._upload = chunked_upload
            self.is_valid_chunked_upload(chunked_upload)
        else:
            attrs: dict[str, Any] = {"filename": chunk.name}
            user = getattr(request, "user", None)
            if user is not None and user.is_authenticated:
                attrs["user"] = user
            elif not settings.get("MODEL_USER_FIELD_NULL"):
                raise ChunkedUploadError(status=http_status.HTTP_403_FORBIDDEN, detail="An upload needs a user")
            attrs.update(self.get_extra_attrs(request))
            chunked_upload = self.create_chunked_upload(save=False, **attrs)
            if "user" not in attrs:
                chunked_upload.record.client = client_address(request)  # an anonymous upload: its address's limits
            self._upload = chunked_upload

        span = self.chunk_span(request)
        if span is None:
            if self.fail_if_no_header:
                raise ChunkedUploadError(status=http_status.HTTP_400_BAD_REQUEST, detail="Error in request headers")
            # No header: the whole file in one request (smaller than a chunk).
            start, end, total = 0, chunk.size - 1, chunk.size
        else:
            start, end, total = span
            if end < start or end >= total:
                raise ChunkedUploadError(
                    status=http_status.HTTP_400_BAD_REQUEST, detail="Content-Range does not fit inside the total size"
                )
        chunk_size = end - start + 1
        max_bytes = self.get_max_bytes(request)
        if max_bytes is not None and total > max_bytes:
            raise ChunkedUploadError(
                status=http_status.HTTP_400_BAD_REQUEST, detail=f"Size of file exceeds the limit ({max_bytes} bytes)"
            )
        if self.service.max_size and total > self.service.max_size:
            raise ChunkedUploadError(
                status=http_status.HTTP_400_BAD_REQUEST,
                detail=f"Size of file exceeds the limit ({self.service.max_size} bytes)",
            )
        chunked_upload.set_total(total)
        if chunked_upload.offset != start:
            raise ChunkedUploadError(
                status=http_status.HTTP_400_BAD_REQUEST, detail="Offsets do not match", offset=chunked_upload.offset
            )
        if chunk.size != chunk_size:
            raise ChunkedUploadError(status=http_status.HTTP_400_BAD_REQUEST, detail="File size doesn't match headers")

        chunked_upload.append_chunk(chunk, chunk_size=chunk_size, save=False)
        self._save(chunked_upload)
        return Response(self.get_response_data(chunked_upload, request), status=http_status.HTTP_200_OK)

    def finish_request(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """Drop bytes that were not saved, and tell the client where the upload stands.

        ``Range: bytes=0-<offset-1>`` is what jQuery-File-Upload reads to
        choose its next chunk, so a client that lost a response resumes at
        the server's offset.
        """
        handler = getattr(self, "_handler", None)
        if handler is not None:
            handler.abort()
        upload = getattr(self, "_upload", None)
        if upload is not None:
            upload.discard()
            if not upload._new and upload.offset > 0:
                response["Range"] = f"bytes=0-{upload.offset - 1}"
        return response


class ChunkedUploadCompleteView(ChunkedUploadBaseView):
    """Completes an upload: ``upload_id`` and the md5 of the whole file."""

    do_md5_check = True

    def on_completion(self, uploaded_file: Any, request: HttpRequest) -> None:
        """Hook: the finished file as an UploadedFile (read it, or save it into a FileField)."""

    def is_valid_chunked_upload(self, chunked_upload: ChunkedUpload) -> None:
        check_usable(chunked_upload)

    def md5_check(self, chunked_upload: ChunkedUpload, md5: str) -> None:
        if chunked_upload.md5 != md5:
            raise ChunkedUploadError(status=http_status.HTTP_400_BAD_REQUEST, detail="md5 checksum does not match")

    def _post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        upload_id = request.POST.get("upload_id")
        md5 = request.POST.get("md5")
        error = None
        if self.do_md5_check:
            if not upload_id or not md5:
                error = "Both 'upload_id' and 'md5' are required"
        elif not upload_id:
            error = "'upload_id' is required"
        if error:
            raise ChunkedUploadError(status=http_status.HTTP_400_BAD_REQUEST, detail=error)
        chunked_upload = self.get_upload(request, upload_id or "")
        self.validate(request)
        self.is_valid_chunked_upload(chunked_upload)
        if self.do_md5_check:
            self.md5_check(chunked_upload, md5 or "")
        chunked_upload.status = COMPLETE
        chunked_upload.completed_on = timezone.now()
        self._save(chunked_upload)
        self.on_completion(chunked_upload.get_uploaded_file(), request)
        return Response(self.get_response_data(chunked_upload, request), status=http_status.HTTP_200_OK)
