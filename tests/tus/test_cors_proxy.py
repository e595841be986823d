"""CORS for browser tus clients, django-cors-headers coexistence, and upload URLs behind a proxy.

tusbridge answers CORS itself when TUSBRIDGE_CORS_ALLOWED_ORIGINS names the
page's origin: preflights get the Allow-* headers, every tus response exposes
the tus headers a browser client must read. When django-cors-headers is in
MIDDLEWARE it owns the Allow-* headers; tusbridge then only exposes its
headers, and the system checks warn about django-cors-headers settings that
would break tus clients.

Behind a proxy, upload URLs (Location) follow Django's USE_X_FORWARDED_HOST and
SECURE_PROXY_SSL_HEADER, and ignore forwarded headers without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.core.checks import CheckMessage
from django.http import HttpResponse
from django.test import Client

from tests.support.data import upload_id_of
from tests.support.tus import COLLECTION, TUS_VERSION, Tus, snapshot
from tusbridge import checks

pytestmark = pytest.mark.django_db

APP_ORIGIN = "https://app.example"
OTHER_ORIGIN = "https://evil.example"
UNKNOWN_ID = "0123456789abcdef0123456789abcdef"

REQUIRED_ALLOW_HEADERS = {
    "tus-resumable",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-checksum",
    "upload-concat",
    "upload-defer-length",
    "content-type",
    "x-http-method-override",
}
REQUIRED_EXPOSE_HEADERS = {
    "location",
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
}


def header_set(response: HttpResponse, name: str) -> set[str]:
    """A comma-separated header as a set of lowercase tokens."""
    return {part.strip().lower() for part in response.get(name, "").split(",") if part.strip()}


@pytest.fixture
def cors(settings: Any) -> Any:
    """tusbridge's own CORS handling, for https://app.example only."""
    settings.TUSBRIDGE_CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    return settings


def preflight(client: Client, path: str, origin: str = APP_ORIGIN, method: str = "PATCH") -> HttpResponse:
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="tus-resumable,upload-offset,content-type,upload-checksum",
    )


# tusbridge's own CORS ---------------------------------------------------------------


@pytest.mark.parametrize("target", ["collection", "upload", "unknown-upload"])
@pytest.mark.parametrize("method", ["PATCH", "POST", "HEAD", "DELETE"])
def test_preflight_from_an_allowed_origin(cors: Any, client: Client, t: Tus, target: str, method: str) -> None:
    """A browser preflight (no cookies, no Tus-Resumable) gets every Allow-* header it needs."""
    if target == "collection":
        path = COLLECTION
    elif target == "upload":
        path = t.new_upload(10)
    else:
        path = f"{COLLECTION}{UNKNOWN_ID}"
    response = preflight(client, path, method=method)  # the anonymous client: preflights carry no cookies
    assert response.status_code in (200, 204)
    assert response["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert "origin" in header_set(response, "Vary")
    assert {"patch", "head", "delete", "post"} <= header_set(response, "Access-Control-Allow-Methods")
    assert REQUIRED_ALLOW_HEADERS <= header_set(response, "Access-Control-Allow-Headers")
    assert int(response["Access-Control-Max-Age"]) > 0


def test_preflight_from_a_disallowed_origin(cors: Any, client: Client) -> None:
    """Another origin's preflight grants nothing."""
    response = preflight(client, COLLECTION, origin=OTHER_ORIGIN)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Methods" not in response
    assert "Access-Control-Allow-Headers" not in response
    assert "Access-Control-Allow-Credentials" not in response


def test_no_cors_headers_without_configuration(client: Client) -> None:
    """With the default (no allowed origins) no origin is granted."""
    response = preflight(client, COLLECTION)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Methods" not in response


def _requests(t: Tus) -> dict[str, Callable[[], HttpResponse]]:
    url = t.new_upload(10)
    return {
        "options": lambda: t.options(COLLECTION, HTTP_ORIGIN=APP_ORIGIN),
        "post": lambda: t.create(10, HTTP_ORIGIN=APP_ORIGIN),
        "head": lambda: t.head(url, HTTP_ORIGIN=APP_ORIGIN),
        "patch": lambda: t.patch(url, b"abc", 0, HTTP_ORIGIN=APP_ORIGIN),
        "error-409": lambda: t.patch(url, b"abc", 7, HTTP_ORIGIN=APP_ORIGIN),
        "error-404": lambda: t.head(f"{COLLECTION}{UNKNOWN_ID}", HTTP_ORIGIN=APP_ORIGIN),
        "error-412": lambda: Tus(t.client, version="0.2.2").create(10, HTTP_ORIGIN=APP_ORIGIN),
        "delete": lambda: t.delete(url, HTTP_ORIGIN=APP_ORIGIN),
    }


@pytest.mark.parametrize("kind", ["options", "post", "head", "patch", "error-409", "error-404", "error-412", "delete"])
def test_responses_expose_tus_headers_to_an_allowed_origin(cors: Any, t: Tus, kind: str) -> None:
    """Actual (non-preflight) responses, errors included, carry Allow-Origin and Expose-Headers."""
    response = _requests(t)[kind]()
    assert response["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert REQUIRED_EXPOSE_HEADERS <= header_set(response, "Access-Control-Expose-Headers")
    assert "origin" in header_set(response, "Vary")
    if kind != "options":
        assert response["Tus-Resumable"] == TUS_VERSION


def test_disallowed_origin_gets_no_allow_origin(cors: Any, t: Tus) -> None:
    """A request from another origin is served, but without Access-Control-Allow-Origin."""
    response = t.create(10, HTTP_ORIGIN=OTHER_ORIGIN)
    assert response.status_code == 201
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Credentials" not in response


def test_same_origin_request_without_origin_has_no_cors_headers(cors: Any, t: Tus) -> None:
    """Without an Origin header no CORS headers are added."""
    response = t.create(10)
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Expose-Headers" not in response


def test_wildcard_origin_without_credentials(settings: Any, client: Client) -> None:
    """TUSBRIDGE_CORS_ALLOWED_ORIGINS = ["*"]: Allow-Origin is "*" for any origin."""
    settings.TUSBRIDGE_CORS_ALLOWED_ORIGINS = ["*"]
    response = preflight(client, COLLECTION, origin="https://anything.example")
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response


def test_credentials_echo_the_origin(settings: Any, client: Client) -> None:
    """With credentials allowed, Allow-Origin is never "*" (browsers refuse that): the origin is echoed."""
    settings.TUSBRIDGE_CORS_ALLOWED_ORIGINS = ["*"]
    settings.TUSBRIDGE_CORS_ALLOW_CREDENTIALS = True
    response = preflight(client, COLLECTION, origin="https://anything.example")
    assert response["Access-Control-Allow-Origin"] == "https://anything.example"
    assert response["Access-Control-Allow-Credentials"] == "true"
    assert "origin" in header_set(response, "Vary")


def test_cross_origin_upload_with_session_cookie(cors: Any, settings: Any, t: Tus) -> None:
    """A credentialed cross-origin upload: every step answers with Allow-Origin and Allow-Credentials."""
    settings.TUSBRIDGE_CORS_ALLOW_CREDENTIALS = True
    created = t.create(5, HTTP_ORIGIN=APP_ORIGIN)
    assert created.status_code == 201
    for response in (
        created,
        t.patch(created["Location"], b"hello", 0, HTTP_ORIGIN=APP_ORIGIN),
        t.head(created["Location"], HTTP_ORIGIN=APP_ORIGIN),
    ):
        assert response["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert response["Access-Control-Allow-Credentials"] == "true"


# django-cors-headers --------------------------------------------------------------------


@pytest.fixture
def corsheaders(settings: Any) -> Any:
    """django-cors-headers' middleware first in MIDDLEWARE (skips when the package is missing)."""
    pytest.importorskip("corsheaders", reason="django-cors-headers is not installed (add it to the test extra)")
    settings.MIDDLEWARE = ["corsheaders.middleware.CorsMiddleware", *settings.MIDDLEWARE]
    settings.TUSBRIDGE_CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    return settings


def test_with_corsheaders_the_app_emits_no_allow_origin(corsheaders: Any, client: Client, t: Tus) -> None:
    """django-cors-headers owns Allow-*: an origin it does not allow gets none, whatever tusbridge would allow."""
    corsheaders.CORS_ALLOWED_ORIGINS = []
    response = t.create(10, HTTP_ORIGIN=APP_ORIGIN)
    assert response.status_code == 201
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Credentials" not in response
    pre = preflight(client, COLLECTION)
    assert "Access-Control-Allow-Origin" not in pre
    assert "Access-Control-Allow-Methods" not in pre


def test_with_corsheaders_allowing_the_origin(corsheaders: Any, client: Client, t: Tus) -> None:
    """django-cors-headers grants the origin; tusbridge's exposed tus headers survive (no CORS_EXPOSE_HEADERS)."""
    from corsheaders.defaults import default_headers

    from tusbridge.tus.cors import REQUEST_HEADERS

    corsheaders.CORS_ALLOWED_ORIGINS = [APP_ORIGIN]
    corsheaders.CORS_ALLOW_HEADERS = (*default_headers, *REQUEST_HEADERS)
    response = t.create(10, HTTP_ORIGIN=APP_ORIGIN)
    assert response["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert REQUIRED_EXPOSE_HEADERS <= header_set(response, "Access-Control-Expose-Headers")
    pre = preflight(client, COLLECTION)
    assert pre["Access-Control-Allow-Origin"] == APP_ORIGIN
    assert REQUIRED_ALLOW_HEADERS <= header_set(pre, "Access-Control-Allow-Headers")


def _ids(messages: list[CheckMessage]) -> list[str]:
    return [m.id or "" for m in messages]


def test_check_warns_when_cors_allow_headers_lacks_tus_headers(corsheaders: Any) -> None:
    """An explicit CORS_ALLOW_HEADERS without the tus request headers: warning tusbridge.W003 naming them."""
    from corsheaders.defaults import default_headers

    corsheaders.CORS_ALLOW_HEADERS = list(default_headers)
    messages = checks.check_settings()
    w003 = [m for m in messages if m.id == "tusbridge.W003"]
    assert len(w003) == 1
    assert "Tus-Resumable" in w003[0].msg and "Upload-Offset" in w003[0].msg


def test_check_warns_with_corsheaders_default_allow_headers(corsheaders: Any) -> None:
    """CORS_ALLOW_HEADERS left unset means django-cors-headers' defaults, which lack every tus header: warn too."""
    if hasattr(corsheaders, "CORS_ALLOW_HEADERS"):
        del corsheaders.CORS_ALLOW_HEADERS
    assert "tusbridge.W003" in _ids(checks.check_settings())


def test_check_quiet_when_cors_allow_headers_has_tus_headers(corsheaders: Any) -> None:
    """CORS_ALLOW_HEADERS with every tus header (any case): no W003/W004."""
    from corsheaders.defaults import default_headers

    from tusbridge.tus.cors import REQUEST_HEADERS

    corsheaders.CORS_ALLOW_HEADERS = (*default_headers, *(h.lower() for h in REQUEST_HEADERS))
    assert not {"tusbridge.W003", "tusbridge.W004"} & set(_ids(checks.check_settings()))


def test_check_warns_when_cors_expose_headers_replaces_tus_headers(corsheaders: Any) -> None:
    """A CORS_EXPOSE_HEADERS that lacks tus headers would overwrite tusbridge's list: warning tusbridge.W004."""
    corsheaders.CORS_EXPOSE_HEADERS = ["X-Request-Id"]
    assert "tusbridge.W004" in _ids(checks.check_settings())


def test_no_corsheaders_warnings_without_the_middleware(settings: Any) -> None:
    """Without django-cors-headers in MIDDLEWARE its settings are irrelevant: no W003/W004."""
    settings.CORS_ALLOW_HEADERS = ["accept"]
    settings.CORS_EXPOSE_HEADERS = ["X-Request-Id"]
    assert not {"tusbridge.W003", "tusbridge.W004"} & set(_ids(checks.check_settings()))


# Behind a proxy ------------------------------------------------------------------------


@pytest.fixture
def proxied(settings: Any) -> Any:
    """Django trusts the proxy's X-Forwarded-Host and X-Forwarded-Proto."""
    settings.USE_X_FORWARDED_HOST = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "uploads.example.com"]
    return settings


FORWARDED = {"HTTP_X_FORWARDED_HOST": "uploads.example.com", "HTTP_X_FORWARDED_PROTO": "https"}


def test_location_behind_a_trusted_proxy(proxied: Any, t: Tus) -> None:
    """Location carries the proxy's scheme and host: https://<forwarded host>/files/<id>; the URL works."""
    response = t.create(10, **FORWARDED)
    assert response.status_code == 201
    location = response["Location"]
    upload_id = upload_id_of(location)
    assert location == f"https://uploads.example.com/files/{upload_id}"
    assert t.head(location, **FORWARDED).status_code == 200


def test_location_of_creation_with_upload_and_final_behind_a_proxy(proxied: Any, t: Tus) -> None:
    """creation-with-upload and concatenation finals get the proxied URL too; proxied partial URLs work in finals."""
    with_upload = t.create(5, body=b"hello", HTTP_UPLOAD_CONCAT="partial", **FORWARDED)
    assert with_upload.status_code == 201
    partial_url = with_upload["Location"]
    assert partial_url.startswith("https://uploads.example.com/files/")
    final = t.create(None, HTTP_UPLOAD_CONCAT=f"final;{partial_url}", **FORWARDED)
    assert final.status_code == 201
    assert final["Location"] == f"https://uploads.example.com/files/{upload_id_of(final['Location'])}"
    assert t.head(final["Location"], **FORWARDED)["Upload-Offset"] == "5"


def test_forwarded_port_is_kept(proxied: Any, t: Tus) -> None:
    """A forwarded host with a port keeps the port in Location."""
    response = t.create(10, HTTP_X_FORWARDED_HOST="uploads.example.com:8443", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 201
    assert response["Location"].startswith("https://uploads.example.com:8443/files/")


def test_forwarded_headers_ignored_without_proxy_settings(t: Tus) -> None:
    """Without USE_X_FORWARDED_HOST / SECURE_PROXY_SSL_HEADER a client cannot steer Location."""
    response = t.create(10, HTTP_X_FORWARDED_HOST="evil.example", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 201
    location = response["Location"]
    assert location == f"http://testserver/files/{upload_id_of(location)}"


def test_untrusted_forwarded_host_creates_nothing(proxied: Any, t: Tus, redis_client: redis.Redis) -> None:
    """A forwarded host outside ALLOWED_HOSTS is refused (400) before any upload is created."""
    before = snapshot(redis_client)
    response = t.create(10, HTTP_X_FORWARDED_HOST="evil.example", HTTP_X_FORWARDED_PROTO="https")
    assert response.status_code == 400
    assert "Location" not in response
    assert snapshot(redis_client) == before
