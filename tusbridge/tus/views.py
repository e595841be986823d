"""The tus 1.0 endpoint: the core protocol and the creation,
creation-with-upload, creation-defer-length, expiration, checksum,
termination, concatenation and concatenation-unfinished extensions.

CSRF: the views are exempt from Django's CSRF check because every request
that changes state must carry ``Tus-Resumable`` (412 otherwise, before any
work). A cross-site page can only send that custom header after a CORS
preflight that this server grants, so a forged form or image request never
reaches the upload logic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import method_decorator
from django.utils.http import http_date
from django.utils.module_loading import import_string
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from .. import conf, errors
from ..bodies import polling_reads
from ..checksums import ALGORITHMS, Checksum, parse_checksum
from ..offload import run_blocking
from ..permissions import client_address, owner_of
from ..record import State, UploadRecord
from ..service import UploadService, get_service
from .body import request_body
from .cors import add_cors_headers
from .headers import metadata_text, parse_concat, parse_metadata, parse_uint

TUS_VERSION = "1.0.0"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# Always available; termination and concatenation depend on the data store.
# checksum-trailer is not offered: WSGI gives applications no access to
# request trailers (see the README).
BASE_EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "expiration", "checksum")

_STATUS: dict[type[errors.UploadError], int] = {
    errors.InvalidRequest: 400,
    errors.AlreadyComplete: 400,
    errors.NotComplete: 400,
    errors.PermissionDenied: 403,
    errors.FinalUploadImmutable: 403,
    errors.NotFound: 404,
    errors.OffsetMismatch: 409,
    errors.LockLost: 409,
    errors.Gone: 410,
    errors.TooLarge: 413,
    errors.ExceedsLength: 413,
    errors.Locked: 423,
    errors.QuotaExceeded: 429,
    errors.ChecksumMismatch: 460,
    errors.StoreUnavailable: 503,
    errors.Stopping: 503,
    errors.StorageFull: 507,
}


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")


def _empty(status: int) -> HttpResponse:
    """A response without a body, and so without a Content-Type to describe one."""
    response = HttpResponse(status=status)
    del response["Content-Type"]
    return response


def _invalid(exc: ValueError) -> errors.InvalidRequest:
    return errors.InvalidRequest(str(exc))


def _method(request: HttpRequest) -> str:
    return request.headers.get("X-HTTP-Method-Override", request.method or "").upper()


def _content_length(request: HttpRequest) -> int | None:
    """Content-Length, or None for a body of unknown length (chunked)."""
    raw = request.META.get("CONTENT_LENGTH")
    if not raw:
        return None if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower() else 0
    try:
        return parse_uint("Content-Length", raw)
    except ValueError as exc:
        raise _invalid(exc) from None


@dataclass(frozen=True)
class PatchPlan:
    offset: int
    length: int | None
    checksum: Checksum | None


@dataclass(frozen=True)
class Creation:
    record: UploadRecord
    location: str
    with_upload: bool
    content_length: int | None
    checksum: Checksum | None

    @property
    def has_body(self) -> bool:
        return self.with_upload and (self.content_length is None or self.content_length > 0)


@method_decorator(csrf_exempt, name="dispatch")
class TusView(View):
    """One view for the collection URL (``upload_id`` None) and for each upload URL."""

    def dispatch(self, request: HttpRequest, *args: Any, upload_id: str | None = None, **kwargs: Any) -> HttpResponse:
        try:
            response = self.answer(request, _method(request), upload_id)
        except errors.UploadError as exc:
            response = self.error_response(exc)
        return self.finish(request, response)

    async def dispatch_async(self, request: HttpRequest, upload_id: str | None = None) -> HttpResponse:
        """``dispatch`` for a request whose body arrives on an event loop (``request.upload_body``).

        A PATCH or a creation with an upload reads its body as it comes,
        holding no thread while it waits; anything else is answered as usual.
        """
        method = _method(request)
        try:
            if request.headers.get("Tus-Resumable") != TUS_VERSION or method not in ("PATCH", "POST"):
                response = await sync_to_async(self.answer)(request, method, upload_id)
            elif method == "PATCH" and upload_id is not None:
                response = await self.patch_async(request, upload_id)
            elif method == "POST" and upload_id is None:
                response = await self.create_async(request)
            else:
                response = self.route(method, upload_id)(request, upload_id)
        except errors.UploadError as exc:
            response = self.error_response(exc)
        return self.finish(request, response)

    def answer(self, request: HttpRequest, method: str, upload_id: str | None) -> HttpResponse:
        if method == "OPTIONS":
            return self.options_response(request)
        if request.headers.get("Tus-Resumable") != TUS_VERSION:
            response = _text(412, f"Tus-Resumable: {TUS_VERSION} is required")
            response["Tus-Version"] = TUS_VERSION
            return response
        return self.route(method, upload_id)(request, upload_id)

    @staticmethod
    def finish(request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["Tus-Resumable"] = TUS_VERSION
        add_cors_headers(request, response)
        return response

    def route(self, method: str, upload_id: str | None) -> Callable[[HttpRequest, Any], HttpResponse]:
        if upload_id is None:
            handlers = {"POST": self.create}
        else:
            handlers = {"HEAD": self.head, "PATCH": self.patch, "DELETE": self.delete}
        handler = handlers.get(method)
        if handler is None:
            return lambda request, _id: self.not_allowed(sorted([*handlers, "OPTIONS"]))
        return handler

    @staticmethod
    def not_allowed(allowed: list[str]) -> HttpResponse:
        response = _text(405, "Method not allowed")
        response["Allow"] = ", ".join(allowed)
        return response

    def error_response(self, exc: errors.UploadError) -> HttpResponse:
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        response = _text(status, exc.detail)
        if isinstance(exc, errors.OffsetMismatch):
            response["Upload-Offset"] = str(exc.current)
        if isinstance(exc, errors.Locked):
            response["Retry-After"] = "1"
        if isinstance(exc, errors.StoreUnavailable):
            response["Retry-After"] = "5"
        if isinstance(exc, errors.Stopping):
            response["Retry-After"] = "1"
        if isinstance(exc, errors.QuotaExceeded):
            response["Retry-After"] = str(exc.retry_after)
        return response

    # Helpers ----------------------------------------------------------------

    @staticmethod
    def check_permission(request: HttpRequest, action: str, upload: UploadRecord | None) -> None:
        hook = import_string(conf.get("PERMISSION"))
        if not hook(request, action, upload):
            raise errors.PermissionDenied()

    @staticmethod
    def extensions(service: UploadService) -> list[str]:
        extensions = list(BASE_EXTENSIONS)
        if service.can_terminate:
            extensions.append("termination")
        if service.can_concatenate:
            extensions += ["concatenation", "concatenation-unfinished"]
        return extensions

    @staticmethod
    def upload_url(request: HttpRequest, upload_id: str) -> str:
        """The absolute URL of an upload, below the collection URL the client posted to.

        ``build_absolute_uri`` follows Django's proxy settings
        (USE_X_FORWARDED_HOST, SECURE_PROXY_SSL_HEADER), so behind a trusted
        proxy the URL carries the proxy's scheme and host.
        """
        base = request.path if request.path.endswith("/") else request.path + "/"
        return request.build_absolute_uri(base + upload_id)

    @staticmethod
    def set_expires(response: HttpResponse, record: UploadRecord) -> None:
        if record.state is State.UPLOADING:
            response["Upload-Expires"] = http_date(record.expires_at)

    @staticmethod
    def checksum(request: HttpRequest) -> Checksum | None:
        value = request.headers.get("Upload-Checksum")
        if value is None:
            return None
        try:
            return parse_checksum(value)
        except ValueError as exc:
            raise _invalid(exc) from None

    @staticmethod
    def metadata(request: HttpRequest) -> tuple[str, dict[str, str | None], str]:
        """(raw header, parsed text values, file name) of Upload-Metadata."""
        raw = request.headers.get("Upload-Metadata")
        if raw is None or not raw.strip():
            # An empty header carries no pairs; tuspy sends one when it has no metadata.
            return "", {}, ""
        try:
            text = metadata_text(parse_metadata(raw))
        except ValueError as exc:
            raise _invalid(exc) from None
        return raw, text, text.get("filename") or text.get("name") or ""

    # Verbs ------------------------------------------------------------------

    def options_response(self, request: HttpRequest) -> HttpResponse:
        service = get_service()
        response = _empty(204)
        response["Tus-Version"] = TUS_VERSION
        response["Tus-Extension"] = ",".join(self.extensions(service))
        response["Tus-Checksum-Algorithm"] = ",".join(ALGORITHMS)
        if service.max_size:
            response["Tus-Max-Size"] = str(service.max_size)
        return response

    def create(self, request: HttpRequest, _: None) -> HttpResponse:
        creation = self.begin_creation(request)
        if isinstance(creation, HttpResponse):
            return creation
        record = creation.record
        if creation.has_body:
            stream, _ = request_body(request)
            try:
                with polling_reads(request, float(conf.get("POLL_INTERVAL"))):
                    record = (
                        get_service()
                        .append(
                            record.id,
                            record.owner,
                            offset=0,
                            stream=stream,
                            content_length=creation.content_length,
                            digest=creation.checksum,
                        )
                        .record
                    )
            except errors.UploadError as exc:
                return self.creation_failed(creation, exc)
        return self.created(creation, record)

    async def create_async(self, request: HttpRequest) -> HttpResponse:
        creation = await sync_to_async(self.begin_creation)(request)
        if isinstance(creation, HttpResponse):
            return creation
        record = creation.record
        if creation.has_body:
            try:
                result = await get_service().append_async(
                    record.id,
                    record.owner,
                    offset=0,
                    body=request.upload_body,  # type: ignore[attr-defined]
                    content_length=creation.content_length,
                    poll_interval=float(conf.get("POLL_INTERVAL")),
                    digest=creation.checksum,
                )
            except errors.UploadError as exc:
                return await run_blocking(self.creation_failed, creation, exc)
            record = result.record
        return self.created(creation, record)

    def begin_creation(self, request: HttpRequest) -> Creation | HttpResponse:
        """Check a creation request and store the new upload; a final upload is answered at once."""
        self.check_permission(request, "create", None)
        service = get_service()
        metadata_raw, metadata, filename = self.metadata(request)
        concat_raw = request.headers.get("Upload-Concat")
        concat, partial_ids = "", []
        if concat_raw is not None:
            try:
                concat, partial_ids = parse_concat(concat_raw)
            except ValueError as exc:
                raise _invalid(exc) from None
        if concat == "final":
            return self.create_final(request, service, concat_raw or "", partial_ids, metadata_raw, metadata, filename)

        length = self.creation_length(request)
        with_upload = request.content_type == OFFSET_CONTENT_TYPE
        content_length = _content_length(request) if with_upload else 0
        checksum = self.checksum(request) if with_upload else None
        service.check_length(length)
        if length is not None and content_length is not None and content_length > length:
            raise errors.ExceedsLength(f"The request body is longer than Upload-Length ({length} bytes)")

        owner = owner_of(request)
        record = service.create(
            owner=owner,
            client="" if owner else client_address(request),
            protocol="tus",
            length=length,
            metadata_raw=metadata_raw,
            metadata=metadata,
            filename=filename,
            concat=concat,
            concat_raw=concat_raw or "",
        )
        return Creation(record, self.upload_url(request, record.id), with_upload, content_length, checksum)

    def creation_failed(self, creation: Creation, exc: errors.UploadError) -> HttpResponse:
        if isinstance(exc, errors.ChecksumMismatch):
            # Nothing of the body was kept: the upload is not created at all.
            get_service().forget(creation.record)
            return self.error_response(exc)
        # The upload exists with what was stored; the client resumes from HEAD.
        response = self.error_response(exc)
        response["Location"] = creation.location
        return response

    def created(self, creation: Creation, record: UploadRecord) -> HttpResponse:
        response = _text(201, "Created")
        response["Location"] = creation.location
        if creation.with_upload:
            response["Upload-Offset"] = str(record.offset)
        self.set_expires(response, record)
        return response

    def create_final(
        self,
        request: HttpRequest,
        service: UploadService,
        concat_raw: str,
        partial_ids: list[str],
        metadata_raw: str,
        metadata: dict[str, str | None],
        filename: str,
    ) -> HttpResponse:
        if "Upload-Length" in request.headers or "Upload-Defer-Length" in request.headers:
            raise errors.InvalidRequest(
                "A final upload takes its length from its partial uploads: send no Upload-Length"
            )
        owner = owner_of(request)
        record = service.create_final(
            owner=owner,
            client="" if owner else client_address(request),
            partial_ids=partial_ids,
            concat_raw=concat_raw,
            metadata_raw=metadata_raw,
            metadata=metadata,
            filename=filename,
        )
        response = _text(201, "Created")
        response["Location"] = self.upload_url(request, record.id)
        return response

    @staticmethod
    def creation_length(request: HttpRequest) -> int | None:
        """Upload-Length, or None for ``Upload-Defer-Length: 1``; exactly one must be given."""
        raw_length = request.headers.get("Upload-Length")
        defer = request.headers.get("Upload-Defer-Length")
        if defer is not None:
            if defer != "1":
                raise errors.InvalidRequest("Upload-Defer-Length must be 1")
            if raw_length is not None:
                raise errors.InvalidRequest("Upload-Length and Upload-Defer-Length cannot both be sent")
            return None
        try:
            return parse_uint("Upload-Length", raw_length)
        except ValueError as exc:
            raise errors.InvalidRequest(f"{exc} (or send Upload-Defer-Length: 1)") from None

    def head(self, request: HttpRequest, upload_id: str) -> HttpResponse:
        service = get_service()
        owner = owner_of(request)
        record = service.read_when_idle(upload_id, owner)
        self.check_permission(request, "read", record)
        if record.concat == "final" and record.state is State.UPLOADING:
            record = service.assemble(upload_id) or record
        response = _empty(200)
        response["Cache-Control"] = "no-store"
        if record.concat != "final" or record.is_complete:
            # A final upload has no offset of its own until it is assembled.
            response["Upload-Offset"] = str(record.offset)
        if record.length is not None:
            response["Upload-Length"] = str(record.length)
        elif record.concat != "final":
            response["Upload-Defer-Length"] = "1"
        if record.metadata_raw:
            response["Upload-Metadata"] = record.metadata_raw
        if record.concat_raw:
            response["Upload-Concat"] = record.concat_raw
        if record.concat != "final":
            self.set_expires(response, record)
        return response

    def patch(self, request: HttpRequest, upload_id: str) -> HttpResponse:
        plan = self.patch_plan(request)
        if isinstance(plan, HttpResponse):
            return plan
        stream, content_length = request_body(request)
        service = get_service()
        owner = owner_of(request)
        try:
            with polling_reads(request, float(conf.get("POLL_INTERVAL"))):
                result = service.append(
                    upload_id,
                    owner,
                    offset=plan.offset,
                    stream=stream,
                    content_length=content_length,
                    length=plan.length,
                    digest=plan.checksum,
                    authorize=self.authorizer(request, "write"),
                )
        except errors.AlreadyComplete:
            return self.patch_complete(service.get(upload_id, owner), plan.offset, content_length)
        return self.patched(result.record)

    async def patch_async(self, request: HttpRequest, upload_id: str) -> HttpResponse:
        plan = self.patch_plan(request)
        if isinstance(plan, HttpResponse):
            return plan
        content_length = _content_length(request)
        service = get_service()
        owner = await sync_to_async(owner_of)(request)
        try:
            result = await service.append_async(
                upload_id,
                owner,
                offset=plan.offset,
                body=request.upload_body,  # type: ignore[attr-defined]
                content_length=content_length,
                poll_interval=float(conf.get("POLL_INTERVAL")),
                length=plan.length,
                digest=plan.checksum,
                authorize=self.authorizer(request, "write"),
            )
        except errors.AlreadyComplete:
            record = await run_blocking(service.get, upload_id, owner)
            return self.patch_complete(record, plan.offset, content_length)
        return self.patched(result.record)

    def patch_plan(self, request: HttpRequest) -> PatchPlan | HttpResponse:
        """A PATCH's headers, checked before anything is read or locked."""
        if request.content_type != OFFSET_CONTENT_TYPE:
            return _text(415, f"PATCH requires Content-Type: {OFFSET_CONTENT_TYPE}")
        try:
            offset = parse_uint("Upload-Offset", request.headers.get("Upload-Offset"))
            length = (
                parse_uint("Upload-Length", request.headers["Upload-Length"])
                if "Upload-Length" in request.headers
                else None
            )
        except ValueError as exc:
            raise _invalid(exc) from None
        return PatchPlan(offset, length, self.checksum(request))

    def authorizer(self, request: HttpRequest, action: str) -> Callable[[UploadRecord], None]:
        return lambda record: self.check_permission(request, action, record)

    def patched(self, record: UploadRecord) -> HttpResponse:
        response = _empty(204)
        response["Upload-Offset"] = str(record.offset)
        self.set_expires(response, record)
        return response

    def patch_complete(self, record: UploadRecord, offset: int, content_length: int | None) -> HttpResponse:
        """A PATCH on a finished upload: a no-op at the final offset, a conflict or overflow otherwise."""
        if offset != record.offset:
            raise errors.OffsetMismatch(record.offset)
        if content_length != 0:
            raise errors.ExceedsLength("The upload is complete and takes no more bytes")
        response = _empty(204)
        response["Upload-Offset"] = str(record.offset)
        return response

    def delete(self, request: HttpRequest, upload_id: str) -> HttpResponse:
        get_service().terminate(
            upload_id, owner_of(request), authorize=lambda record: self.check_permission(request, "delete", record)
        )
        return _empty(204)


async def stream_view(request: HttpRequest, *args: Any, upload_id: str | None = None, **kwargs: Any) -> HttpResponse:
    """The tus endpoint for a request whose body arrives on an event loop (see ``tusbridge.asgi``)."""
    view = TusView()
    view.setup(request, *args, upload_id=upload_id, **kwargs)
    return await view.dispatch_async(request, upload_id)


stream_view.csrf_exempt = True  # type: ignore[attr-defined]  # as TusView (see the module docstring)
