"""A project written for django-chunked-upload, with only the import path changed.

The first part of this module is what such a project's ``views.py`` and
``urls.py`` look like (this module is the test URLconf); the tests below it
drive those views and check that every hook is called, in the spec's order,
with the listed arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection
from django.http import HttpRequest
from django.test import Client
from django.urls import path

from tests.legacyapp.models import Document
from tests.support.data import md5, payload
from tests.support.legacy import assert_error, body_of, complete, get_record, post_chunk
from tests.support.tus import data_of, redis_keys
from tusbridge.chunked_upload.constants import COMPLETE, http_status
from tusbridge.chunked_upload.exceptions import ChunkedUploadError
from tusbridge.chunked_upload.views import ChunkedUploadCompleteView, ChunkedUploadView

# --- the project's views --------------------------------------------------------


class MyChunkedUploadView(ChunkedUploadView):
    """The demo's chunk view, with a project's permission rule and extra attributes."""

    field_name = "the_file"

    def check_permissions(self, request: HttpRequest) -> None:
        if not request.user.is_authenticated:
            raise ChunkedUploadError(
                status=http_status.HTTP_403_FORBIDDEN, detail="Please log in", login_url="/accounts/login/"
            )
        if request.user.get_username() == "readonly":
            raise ChunkedUploadError(status=http_status.HTTP_403_FORBIDDEN, detail="This account cannot upload")

    def get_extra_attrs(self, request: HttpRequest) -> dict[str, Any]:
        return {"folder": request.POST.get("folder", "inbox"), "tags": request.POST.getlist("tag")}

    def get_response_data(self, chunked_upload: Any, request: HttpRequest) -> dict[str, Any]:
        data = super().get_response_data(chunked_upload, request)
        data["message"] = f"{chunked_upload.offset} bytes of {chunked_upload.filename} received"
        data["folder"] = chunked_upload.folder
        return data


class MyChunkedUploadCompleteView(ChunkedUploadCompleteView):
    """Saves the finished file into the project's Document model."""

    def check_permissions(self, request: HttpRequest) -> None:
        if not request.user.is_authenticated:
            raise ChunkedUploadError(status=http_status.HTTP_403_FORBIDDEN, detail="Please log in")

    def on_completion(self, uploaded_file: Any, request: HttpRequest) -> None:
        magic = uploaded_file.read(4)
        uploaded_file.seek(0)
        digest = hashlib.sha256(uploaded_file.read()).hexdigest()
        uploaded_file.seek(0)
        document = Document(title=request.POST.get("title", ""), owner=request.user)
        document.file.save(uploaded_file.name, uploaded_file, save=True)
        SEEN.append(
            {
                "name": uploaded_file.name,
                "size": uploaded_file.size,
                "magic": magic,
                "sha256": digest,
                "pk": document.pk,
            }
        )
        self.document = document

    def get_response_data(self, chunked_upload: Any, request: HttpRequest) -> dict[str, Any]:
        return {
            "message": f"You successfully uploaded '{chunked_upload.filename}' ({chunked_upload.offset} bytes)!",
            "document": self.document.pk,
            "folder": chunked_upload.folder,
            "complete": chunked_upload.status == COMPLETE,
        }


class LenientChunkedUploadView(ChunkedUploadView):
    """Written for the original, which ignored the return value of check_permissions."""

    def check_permissions(self, request: HttpRequest) -> bool:  # type: ignore[override]
        return request.user.has_perm("legacyapp.add_document")  # False for our users; ignored


class InboxOnlyChunkedUploadView(ChunkedUploadView):
    """Narrows get_queryset like a project filtering its QuerySet."""

    def get_extra_attrs(self, request: HttpRequest) -> dict[str, Any]:
        return {"folder": request.POST.get("folder", "inbox")}

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).filter(folder="inbox")


#: What on_completion saw, per call.
SEEN: list[dict[str, Any]] = []
#: (hook name, positional args, keyword args) of the recording views, in call order.
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


def _record(name: str, *args: Any, **kwargs: Any) -> None:
    CALLS.append((name, args, kwargs))


class _RecordingBaseHooks:
    """The hooks both views have, recorded and passed on."""

    def check_permissions(self, request: HttpRequest) -> None:
        _record("check_permissions", request)
        super().check_permissions(request)

    def validate(self, request: HttpRequest) -> None:
        _record("validate", request)

    def get_queryset(self, request: HttpRequest) -> Any:
        _record("get_queryset", request)
        return super().get_queryset(request)

    def is_valid_chunked_upload(self, chunked_upload: Any) -> None:
        _record("is_valid_chunked_upload", chunked_upload)
        super().is_valid_chunked_upload(chunked_upload)

    def save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        _record("save", chunked_upload, request, new=new)
        super().save(chunked_upload, request, new=new)


class RecordingChunkView(_RecordingBaseHooks, ChunkedUploadView):
    """Every hook of the chunk view, recorded and passed on."""

    def get_extra_attrs(self, request: HttpRequest) -> dict[str, Any]:
        _record("get_extra_attrs", request)
        return {"note": "from get_extra_attrs"}

    def create_chunked_upload(self, save: bool = False, **attrs: Any) -> Any:
        upload = super().create_chunked_upload(save=save, **attrs)
        _record("create_chunked_upload", upload, save=save, **attrs)
        return upload

    def get_max_bytes(self, request: HttpRequest) -> int | None:
        _record("get_max_bytes", request)
        return super().get_max_bytes(request)

    def pre_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        _record("pre_save", chunked_upload, request, new=new, offset=chunked_upload.offset)

    def post_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        _record("post_save", chunked_upload, request, new=new, upload_id=chunked_upload.upload_id)

    def get_response_data(self, chunked_upload: Any, request: HttpRequest) -> dict[str, Any]:
        _record("get_response_data", chunked_upload, request)
        return super().get_response_data(chunked_upload, request)


class RecordingCompleteView(_RecordingBaseHooks, ChunkedUploadCompleteView):
    """Every hook of the completion view, recorded and passed on."""

    def md5_check(self, chunked_upload: Any, md5: str) -> None:
        _record("md5_check", chunked_upload, md5)
        super().md5_check(chunked_upload, md5)

    def pre_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        _record("pre_save", chunked_upload, request, new=new, status=chunked_upload.status)

    def post_save(self, chunked_upload: Any, request: HttpRequest, new: bool = False) -> None:
        _record("post_save", chunked_upload, request, new=new, status=chunked_upload.status)

    def on_completion(self, uploaded_file: Any, request: HttpRequest) -> None:
        _record("on_completion", uploaded_file, request, content=uploaded_file.read())

    def get_response_data(self, chunked_upload: Any, request: HttpRequest) -> dict[str, Any]:
        _record("get_response_data", chunked_upload, request)
        return {"done": chunked_upload.upload_id}


# --- the project's urls.py ---------------------------------------------------------

urlpatterns = [
    path("api/chunked_upload/", MyChunkedUploadView.as_view(), name="api_chunked_upload"),
    path("api/chunked_upload_complete/", MyChunkedUploadCompleteView.as_view(), name="api_chunked_upload_complete"),
    path("api/lenient_upload/", LenientChunkedUploadView.as_view()),
    path("api/inbox_upload/", InboxOnlyChunkedUploadView.as_view()),
    path("api/recording_upload/", RecordingChunkView.as_view()),
    path("api/recording_complete/", RecordingCompleteView.as_view()),
]


# --- tests -------------------------------------------------------------------------------

pytestmark = [pytest.mark.urls("tests.legacy.test_project")]

CHUNK = "/api/chunked_upload/"
COMPLETE_URL = "/api/chunked_upload_complete/"


@pytest.fixture
def documents(settings: Any, transactional_db: None, tmp_path: Path) -> Iterator[type[Document]]:
    """The project's Document model with a table and a MEDIA_ROOT of its own.

    tests/settings.py does not list ``tests.legacyapp`` (adding it there would let
    migrations create the table); until then the app is installed for the test
    and its table created here.
    """
    settings.MEDIA_ROOT = str(tmp_path / "media")
    if "tests.legacyapp" not in settings.INSTALLED_APPS:
        settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.legacyapp"]
    table = Document._meta.db_table
    created = table not in connection.introspection.table_names()
    if created:
        with connection.schema_editor() as editor:
            editor.create_model(Document)
    SEEN.clear()
    try:
        yield Document
    finally:
        SEEN.clear()
        if created:
            with connection.schema_editor() as editor:
                editor.delete_model(Document)


@pytest.fixture
def calls() -> Iterator[list[tuple[str, tuple[Any, ...], dict[str, Any]]]]:
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def send(client: Client, data: bytes, chunk_size: int, url: str = CHUNK, **fields: Any) -> list[Any]:
    """Send ``data`` in chunks under ``the_file`` with extra form fields; return the JSON bodies."""
    bodies: list[Any] = []
    upload_id = None
    for start in range(0, len(data), chunk_size):
        response = post_chunk(
            client,
            data[start : start + chunk_size],
            url=url,
            start=start,
            total=len(data),
            upload_id=upload_id,
            field_name="the_file" if url == CHUNK else "file",
            filename="holiday.jpg",
            fields=fields,
        )
        assert response.status_code == 200, response.content
        bodies.append(body_of(response))
        upload_id = bodies[-1]["upload_id"]
    return bodies


def test_project_upload_saves_into_the_document_filefield(
    client_logged_in: Client, user: Any, documents: type[Document]
) -> None:
    """The whole project flow: chunks under ``the_file``, completion saves a Document with the file."""
    data = b"\xff\xd8\xff\xe0" + payload(260_000)
    bodies = send(client_logged_in, data, 100_000, folder="holidays")
    upload_id = bodies[0]["upload_id"]
    assert [b["message"] for b in bodies] == [
        "100000 bytes of holiday.jpg received",
        "200000 bytes of holiday.jpg received",
        f"{len(data)} bytes of holiday.jpg received",
    ]
    response = complete(client_logged_in, upload_id, md5(data), url=COMPLETE_URL, title="Beach")
    assert response.status_code == 200, response.content
    body = body_of(response)
    document = documents.objects.get()
    assert body == {
        "message": f"You successfully uploaded 'holiday.jpg' ({len(data)} bytes)!",
        "document": document.pk,
        "folder": "holidays",
        "complete": True,
    }
    assert document.title == "Beach"
    assert document.owner == user
    assert document.file.name.startswith("documents/") and document.file.name.endswith(".jpg")
    with document.file.open("rb") as fh:
        assert fh.read() == data
    assert SEEN == [
        {
            "name": "holiday.jpg",
            "size": len(data),
            "magic": b"\xff\xd8\xff\xe0",
            "sha256": hashlib.sha256(data).hexdigest(),
            "pk": document.pk,
        }
    ]


def test_check_permissions_raising_denies_with_its_data(client: Client, documents: type[Document]) -> None:
    """``ChunkedUploadError(status, **data)`` from check_permissions becomes the response."""
    response = post_chunk(client, b"x" * 10, url=CHUNK, field_name="the_file")
    assert_error(response, 403, {"detail": "Please log in", "login_url": "/accounts/login/"})
    error = ChunkedUploadError(http_status.HTTP_403_FORBIDDEN, detail="x", extra=1)
    assert error.status_code == 403 and error.data == {"detail": "x", "extra": 1}


def test_check_permissions_raising_for_one_user(django_user_model: Any, db: None, redis_client: redis.Redis) -> None:
    """A project rule on the user: the read-only account is refused, nothing is stored."""
    readonly = django_user_model.objects.create_user(username="readonly", password="x")
    client = Client()
    client.force_login(readonly)
    response = post_chunk(client, b"x" * 10, url=CHUNK, field_name="the_file")
    assert_error(response, 403, {"detail": "This account cannot upload"})
    assert redis_keys(redis_client) == set()


def test_check_permissions_return_value_is_ignored(client_logged_in: Client, user: Any) -> None:
    """A check_permissions that returns False (and raises nothing) lets the upload through."""
    assert not user.has_perm("legacyapp.add_document")
    data = payload(5000)
    bodies = send(client_logged_in, data, 2000, url="/api/lenient_upload/")
    assert bodies[-1]["offset"] == len(data)
    assert data_of(bodies[0]["upload_id"]) == data


def test_check_permissions_override_replaces_the_default_rule(client: Client) -> None:
    """The lenient override also lets anonymous users in (the default 403 rule is what it replaced)."""
    response = post_chunk(client, b"abc", url="/api/lenient_upload/", start=None)
    assert response.status_code == 200, response.content
    assert data_of(body_of(response)["upload_id"]) == b"abc"


def test_extra_attrs_are_kept_and_visible_later(
    client_logged_in: Client, redis_client: redis.Redis, documents: type[Document]
) -> None:
    """get_extra_attrs values set on the first chunk are on the upload in later chunks and at completion."""
    data = payload(30_000)
    first = post_chunk(
        client_logged_in,
        data[:10_000],
        url=CHUNK,
        field_name="the_file",
        total=len(data),
        fields={"folder": "work", "tag": "a"},
    )
    upload_id = body_of(first)["upload_id"]
    # Later chunks send other fields: the stored attributes do not change.
    second = post_chunk(
        client_logged_in,
        data[10_000:],
        url=CHUNK,
        field_name="the_file",
        start=10_000,
        total=len(data),
        upload_id=upload_id,
        fields={"folder": "ignored"},
    )
    assert body_of(second)["folder"] == "work"
    record = get_record(redis_client, upload_id)
    assert record is not None and record.extra.get("folder") == "work" and record.extra.get("tags") == ["a"]
    done = complete(client_logged_in, upload_id, md5(data), url=COMPLETE_URL)
    assert body_of(done)["folder"] == "work"


def test_get_queryset_override_narrows_what_can_be_continued(client_logged_in: Client) -> None:
    """A project's get_queryset filter applies: an upload outside it is 404."""
    data = payload(200)
    inbox = post_chunk(client_logged_in, data[:100], url="/api/inbox_upload/", total=200)
    archive = post_chunk(
        client_logged_in, data[:100], url="/api/inbox_upload/", total=200, fields={"folder": "archive"}
    )
    ok = post_chunk(
        client_logged_in,
        data[100:],
        url="/api/inbox_upload/",
        start=100,
        total=200,
        upload_id=body_of(inbox)["upload_id"],
    )
    assert ok.status_code == 200, ok.content
    refused = post_chunk(
        client_logged_in,
        data[100:],
        url="/api/inbox_upload/",
        start=100,
        total=200,
        upload_id=body_of(archive)["upload_id"],
    )
    assert refused.status_code == 404
    assert data_of(body_of(archive)["upload_id"]) == data[:100]


def names(calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    return [name for name, _, _ in calls]


def in_order(seen: list[str], expected: list[str]) -> bool:
    """True when ``expected`` occurs in ``seen`` in this order (other calls may come between)."""
    it = iter(seen)
    return all(name in it for name in expected)


def test_chunk_hooks_are_called_in_order_with_their_arguments(
    client_logged_in: Client, user: Any, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    """First chunk: permissions, validate, extra attrs, create, max bytes, pre/save/post, response data."""
    data = payload(2000)
    first = post_chunk(client_logged_in, data[:1000], url="/api/recording_upload/", total=2000, filename="a.txt")
    assert first.status_code == 200, first.content
    upload_id = body_of(first)["upload_id"]
    seen = names(calls)
    expected_first = [
        "check_permissions",
        "validate",
        "get_extra_attrs",
        "create_chunked_upload",
        "get_max_bytes",
        "pre_save",
        "save",
        "post_save",
        "get_response_data",
    ]
    assert in_order(seen, expected_first), seen
    assert seen[0] == "check_permissions"
    assert seen[-4:] == ["pre_save", "save", "post_save", "get_response_data"]
    assert "get_queryset" not in seen and "is_valid_chunked_upload" not in seen
    for once in (
        "check_permissions",
        "validate",
        "get_extra_attrs",
        "create_chunked_upload",
        "get_max_bytes",
        "pre_save",
        "save",
        "post_save",
    ):
        assert seen.count(once) == 1, (once, seen)
    by_name = {name: (args, kwargs) for name, args, kwargs in calls}
    request = by_name["check_permissions"][0][0]
    assert isinstance(request, HttpRequest) and request.path == "/api/recording_upload/"
    for name in ("validate", "get_extra_attrs", "get_max_bytes"):
        assert by_name[name][0] == (request,), name
    (upload,) = by_name["create_chunked_upload"][0]
    create_kwargs = by_name["create_chunked_upload"][1]
    assert create_kwargs["save"] is False
    assert create_kwargs["filename"] == "a.txt"
    assert create_kwargs["user"] == user
    assert create_kwargs["note"] == "from get_extra_attrs"
    assert by_name["pre_save"] == ((upload, request), {"new": True, "offset": 1000})
    assert by_name["save"] == ((upload, request), {"new": True})
    assert by_name["post_save"] == ((upload, request), {"new": True, "upload_id": upload_id})
    assert by_name["get_response_data"] == ((upload, request), {})

    calls.clear()
    second = post_chunk(
        client_logged_in, data[1000:], url="/api/recording_upload/", start=1000, total=2000, upload_id=upload_id
    )
    assert second.status_code == 200, second.content
    seen = names(calls)
    expected_later = [
        "check_permissions",
        "validate",
        "get_queryset",
        "is_valid_chunked_upload",
        "get_max_bytes",
        "pre_save",
        "save",
        "post_save",
        "get_response_data",
    ]
    assert in_order(seen, expected_later), seen
    assert "get_extra_attrs" not in seen and "create_chunked_upload" not in seen
    assert seen.count("get_max_bytes") == 1, seen
    by_name = {name: (args, kwargs) for name, args, kwargs in calls}
    request = by_name["check_permissions"][0][0]
    (upload,) = by_name["is_valid_chunked_upload"][0]
    assert upload.upload_id == upload_id and upload.filename == "a.txt" and upload.note == "from get_extra_attrs"
    assert by_name["get_queryset"] == ((request,), {})
    assert by_name["pre_save"] == ((upload, request), {"new": False, "offset": 2000})
    assert by_name["save"] == ((upload, request), {"new": False})
    assert by_name["post_save"] == ((upload, request), {"new": False, "upload_id": upload_id})
    assert by_name["get_response_data"] == ((upload, request), {})


def test_completion_hooks_are_called_in_order_with_their_arguments(
    client_logged_in: Client, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    """Completion: permissions, lookup + validate, is_valid, md5_check, pre/save/post, on_completion, response."""
    data = payload(3000)
    upload_id = body_of(post_chunk(client_logged_in, data, url="/api/recording_upload/", total=3000, filename="b.bin"))[
        "upload_id"
    ]
    calls.clear()
    response = complete(client_logged_in, upload_id, md5(data), url="/api/recording_complete/", extra="field")
    assert response.status_code == 200, response.content
    assert body_of(response) == {"done": upload_id}
    seen = names(calls)
    assert seen[0] == "check_permissions"
    assert in_order(seen, ["check_permissions", "get_queryset", "is_valid_chunked_upload", "md5_check"]), seen
    assert in_order(seen, ["check_permissions", "validate", "is_valid_chunked_upload", "md5_check"]), seen
    assert seen[-6:] == ["md5_check", "pre_save", "save", "post_save", "on_completion", "get_response_data"]
    for name in set(seen):
        assert seen.count(name) == 1, (name, seen)
    by_name = {name: (args, kwargs) for name, args, kwargs in calls}
    request = by_name["check_permissions"][0][0]
    assert request.POST["extra"] == "field"
    (upload,) = by_name["is_valid_chunked_upload"][0]
    assert upload.upload_id == upload_id
    assert by_name["md5_check"] == ((upload, md5(data)), {})
    assert by_name["pre_save"] == ((upload, request), {"new": False, "status": COMPLETE})
    assert by_name["save"] == ((upload, request), {"new": False})
    assert by_name["post_save"] == ((upload, request), {"new": False, "status": COMPLETE})
    (uploaded_file, on_completion_request), on_completion_kwargs = by_name["on_completion"]
    assert on_completion_request is request
    assert on_completion_kwargs == {"content": data}
    assert uploaded_file.name == "b.bin" and uploaded_file.size == len(data)
    assert by_name["get_response_data"] == ((upload, request), {})


def test_failed_md5_check_runs_no_save_hook(
    client_logged_in: Client, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> None:
    """A wrong md5 stops before pre_save, save, post_save and on_completion."""
    upload_id = body_of(post_chunk(client_logged_in, b"abc", url="/api/recording_upload/", start=None))["upload_id"]
    calls.clear()
    response = complete(client_logged_in, upload_id, md5(b"abd"), url="/api/recording_complete/")
    assert_error(response, 400, {"detail": "md5 checksum does not match"})
    seen = names(calls)
    assert "md5_check" in seen
    assert not {"pre_save", "save", "post_save", "on_completion", "get_response_data"} & set(seen)


def test_upload_object_surface(client_logged_in: Client, user: Any, calls: list[Any]) -> None:
    """The upload object has the attributes and methods projects use."""
    data = payload(1500)
    upload_id = body_of(post_chunk(client_logged_in, data, url="/api/recording_upload/", start=None, filename="c.csv"))[
        "upload_id"
    ]
    calls.clear()
    complete(client_logged_in, upload_id, md5(data), url="/api/recording_complete/")
    upload = next(args[0] for name, args, _ in calls if name == "get_response_data")
    assert upload.upload_id == upload_id
    assert upload.filename == "c.csv"
    assert upload.offset == len(data)
    assert upload.status == COMPLETE
    assert upload.user == user
    assert upload.created_on <= upload.completed_on
    assert upload.expires_on > upload.created_on
    assert upload.expired is False
    assert upload.md5 == md5(data)
    uploaded = upload.get_uploaded_file()
    assert uploaded.name == "c.csv" and uploaded.size == len(data) and uploaded.read() == data
    uploaded.close()
    upload.delete()
    assert data_of(upload_id) is None
    missing = complete(client_logged_in, upload_id, md5(data), url="/api/recording_complete/")
    assert missing.status_code == 404
