"""schemathesis against a live gunicorn, driven by the tus project's OpenAPI description.

The description (``tests/specs/tus-openapi3.yaml``, the tus project's file,
unchanged) is loaded and adapted *in code* by :func:`adapted_spec`: the
server URL, tusbridge's collection path, and the places where the
description contradicts the tus protocol text it describes. Each adaptation
says why; none of them hides a behaviour of tusbridge.

Every operation (OPTIONS /files/, POST /files/, HEAD, PATCH and DELETE
/files/{id}) gets positive and negative examples. The server allows
anonymous uploads, so generated requests reach the upload logic instead of
stopping at 403, and for the operations on one upload a hypothesis-drawn
choice swaps the generated id (almost always unknown, so 404) for the URL of
a real upload in some state (fresh, half written, deferred, complete,
partial, final, terminated) created just before; for positive PATCH examples
the Upload-Offset is sometimes set to the upload's real offset so that bytes
are written. Requests are counted; the total is printed at the end of the run.

Checks on every response: no 5xx; the status is documented (after the
adaptations); documented response headers match their schemas; negative
examples are rejected with a 4xx; plus protocol rules the description
cannot express (every response says ``Tus-Resumable: 1.0.0``, a 201 has a
Location of the form ``/files/<32 hex>``, a 412 names ``Tus-Version``, PATCH
204 and HEAD 200 carry the offset).
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (  # where schemathesis 4 defines its OpenAPI checks
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.data import upload_id_of
from tests.support.fuzz import COUNTS, count
from tests.support.live import OFFSET_CT, TUS, TUS_VERSION, data_path, record_of
from tests.support.servers import ROOT, GunicornServer

pytestmark = pytest.mark.live

SPEC_PATH = ROOT / "tests" / "specs" / "tus-openapi3.yaml"
MAX_SIZE = 64 * 1024
UPLOAD_URL = re.compile(r"/files/[0-9a-f]{32}")

#: Generated examples per operation; the total is what the module sends (>= 3000).
EXAMPLES = {
    ("OPTIONS", "/files/"): 150,
    ("POST", "/files/"): 950,
    ("HEAD", "/files/{id}"): 450,
    ("PATCH", "/files/{id}"): 950,
    ("DELETE", "/files/{id}"): 550,
}
MIN_REQUESTS = 3000

# The body of a PATCH (and of a creation-with-upload POST) is raw bytes.
schemathesis.serializer.alias(OFFSET_CT, "application/octet-stream")


@pytest.fixture(scope="module")
def gunicorn_extra_env() -> dict[str, str]:
    return {
        # Anonymous uploads, so generated requests reach the upload logic.
        "TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1",
        # A size limit, so that Tus-Max-Size is advertised and 413s are reachable.
        "TUSBRIDGE_TEST_MAX_SIZE": str(MAX_SIZE),
        # Generated requests never overlap, but do not let one wait long if they did.
        "TUSBRIDGE_TEST_LOCK_WAIT": "1",
        # Every generated request comes from one address: no per-address limits.
        "TUSBRIDGE_TEST_MAX_UPLOADS_PER_ADDRESS": "0",
        "TUSBRIDGE_TEST_MAX_BYTES_PER_ADDRESS": "0",
        "TUSBRIDGE_TEST_CREATIONS_PER_MINUTE": "0",
    }


# The description, adapted ------------------------------------------------------------------

_TUS_RESUMABLE_HEADER = {"schema": {"$ref": "#/components/schemas/Tus-Resumable"}}


def _response(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"Tus-Resumable": copy.deepcopy(_TUS_RESUMABLE_HEADER)}}


def adapted_spec(base_url: str) -> dict[str, Any]:
    """The tus OpenAPI description as this live server serves it."""
    spec = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))

    # The description's server is an example ("The paths are not normative"); ours is the live one.
    spec["servers"] = [{"url": base_url}]

    # tusbridge is mounted with Django's path("files/", ...): the collection URL ends in a slash.
    # (Without it Django's APPEND_SLASH would answer a redirect, which is no tus behaviour.)
    paths = spec["paths"]
    paths["/files/"] = paths.pop("/files")
    post = paths["/files/"]["post"]
    patch = paths["/files/{id}"]["patch"]
    delete = paths["/files/{id}"]["delete"]

    # Content-Length is framing, not data: the HTTP client computes it from the body. A generated
    # value that disagrees with the body would only desynchronise the connection (the server waits
    # for bytes that never come, or reads the rest as the next request). Lying Content-Lengths are
    # tested on raw sockets in tests/security/test_size_limits.py.
    for operation in (post, patch):
        operation["parameters"] = [p for p in operation["parameters"] if p["name"] != "Content-Length"]

    # Upload-Offset on POST: the protocol defines no Upload-Offset for a creation request
    # (creation-with-upload always starts at 0), so a server ignores it and negative examples of
    # it are not "invalid data" the server must reject.
    post["parameters"] = [p for p in post["parameters"] if p["name"] != "Upload-Offset"]

    # Errors in the description itself:
    # - PATCH 204's Upload-Offset header refers to the Tus-Resumable schema (enum ["1.0.0"]); the
    #   protocol says it is the new offset, a non-negative integer.
    offset_header = patch["responses"][204]["headers"]["Upload-Offset"]
    assert offset_header["schema"] == {"$ref": "#/components/schemas/Tus-Resumable"}, offset_header
    offset_header["schema"] = {"$ref": "#/components/schemas/Upload-Offset"}
    # - Upload-Offset and Upload-Length "MUST be a non-negative integer" (protocol, Headers), which
    #   the integer schemas do not say; saying it makes the header checks stricter, not looser.
    for name in ("Upload-Offset", "Upload-Length", "Tus-Max-Size"):
        spec["components"]["schemas"][name]["minimum"] = 0
    # - DELETE lists only 204 and 412, but its own description (and the protocol's Termination
    #   section) says later requests to the URL get 404 or 410: deleting an unknown or already
    #   terminated upload is one of those requests.
    delete["responses"][404] = _response("Unknown upload (protocol: Termination)")
    delete["responses"][410] = _response("Terminated or expired upload (protocol: Termination)")
    # - PATCH has no 413, but a body that runs past Upload-Length (or past Tus-Max-Size for a
    #   deferred upload) must be refused without storing it; 413 is what tus servers answer
    #   (tusd's ErrSizeExceeded), the same status the protocol prescribes for creation.
    patch["responses"][413] = _response("Body past the upload's length or the maximum size")
    # - POST has no 404, but a final upload (Concatenation) naming a partial upload that does not
    #   exist (or is another user's) names an unknown URL, as a PATCH or HEAD on it would (404).
    post["responses"][404] = _response("Upload-Concat: final names an unknown partial upload")
    return spec


def _schemathesis_config() -> SchemathesisConfig:
    """Explicit configuration (no schemathesis.toml is looked up)."""
    return SchemathesisConfig.from_dict(
        {
            "checks": {
                "negative_data_rejection": {
                    # What tusbridge answers to invalid requests: 400 (malformed header), 412
                    # (Tus-Resumable missing or wrong), 415 (PATCH Content-Type), 404/410 (the
                    # checks that come first for an unknown or gone upload), 413 (too large),
                    # 409 (wrong offset), 403 (PATCH on a final upload).
                    "expected-statuses": [400, 403, 404, 409, 410, 412, 413, 415],
                }
            }
        }
    )


@pytest.fixture(scope="module")
def schema(gunicorn_server: GunicornServer) -> Any:
    return schemathesis.openapi.from_dict(adapted_spec(gunicorn_server.url), config=_schemathesis_config())


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    try:
        yield session
    finally:
        session.close()


# Protocol rules the description cannot express ------------------------------------------------


def tus_resumable_on_every_response(ctx: Any, response: Any, case: Any) -> None:
    assert response.headers.get("tus-resumable") == [TUS_VERSION], response.headers


def created_location_is_an_upload_url(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code == 201:
        location = response.headers["location"][0]
        assert UPLOAD_URL.fullmatch(urlsplit(location).path), location


def precondition_failed_names_the_version(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code == 412:
        assert response.headers.get("tus-version") == [TUS_VERSION]


def offsets_are_reported(ctx: Any, response: Any, case: Any) -> None:
    if case.method.upper() == "PATCH" and response.status_code == 204:
        assert "upload-offset" in response.headers
    if case.method.upper() == "PATCH" and response.status_code == 409:
        assert "upload-offset" in response.headers  # tells the client where to resume


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_headers_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    tus_resumable_on_every_response,
    created_location_is_an_upload_url,
    precondition_failed_names_the_version,
    offsets_are_reported,
]

# Framing and connection headers belong to the HTTP client, not to the generated request.
_TRANSPORT_HEADERS = {
    "content-length",
    "transfer-encoding",
    "connection",
    "host",
    "expect",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
}


# Real uploads for the operations on one upload ---------------------------------------------------


class Uploads:
    """Creates uploads in a given state on the live server (setup requests, counted apart)."""

    def __init__(self, server: GunicornServer, http: requests.Session, *, reuse: bool = False) -> None:
        self.server = server
        self.http = http
        # HEAD changes nothing, so its uploads can be made once per (kind, length) and reused.
        self.reuse = reuse
        self._made: dict[tuple[str, int], tuple[str, int]] = {}

    def _post(self, **headers: str) -> str:
        response = self.http.post(self.server.files_url, headers={**TUS, **headers}, timeout=30)
        count("schemathesis-setup: uploads created for the id pool")
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"]

    def _with_body(self, body: bytes, **headers: str) -> str:
        response = self.http.post(
            self.server.files_url, data=body, headers={**TUS, "Content-Type": OFFSET_CT, **headers}, timeout=30
        )
        count("schemathesis-setup: uploads created for the id pool")
        assert response.status_code == 201, (response.status_code, response.text)
        return response.headers["Location"]

    def make(self, kind: str, length: int) -> tuple[str, int]:
        """(upload URL, its offset) for an upload of the given kind."""
        if not self.reuse:
            return self._make(kind, length)
        if (kind, length) not in self._made:
            self._made[kind, length] = self._make(kind, length)
        return self._made[kind, length]

    def _make(self, kind: str, length: int) -> tuple[str, int]:
        if kind == "new":
            return self._post(**{"Upload-Length": str(length)}), 0
        if kind == "partly-written":
            return self._with_body(b"x" * (length // 2), **{"Upload-Length": str(length)}), length // 2
        if kind == "deferred":
            return self._post(**{"Upload-Defer-Length": "1"}), 0
        if kind == "complete":
            return self._with_body(b"y" * length, **{"Upload-Length": str(length)}), length
        if kind == "partial":
            return self._post(**{"Upload-Length": str(length), "Upload-Concat": "partial"}), 0
        if kind in ("final", "final-pending"):
            body = b"z" * length if kind == "final" else b""
            part = self._with_body(body, **{"Upload-Length": str(length), "Upload-Concat": "partial"})
            return self._post(**{"Upload-Concat": f"final;{part}"}), length if kind == "final" else 0
        if kind == "terminated":
            url = self._post(**{"Upload-Length": str(length)})
            assert self.http.delete(url, headers=TUS, timeout=30).status_code == 204
            count("schemathesis-setup: uploads created for the id pool")
            return url, 0
        raise AssertionError(kind)


UPLOAD_KINDS = ["generated", "unknown", "new", "partly-written", "deferred", "complete", "partial", "final",
                "final-pending", "terminated"]  # fmt: skip


def _example_settings(operation: tuple[str, str]) -> Callable[[Any], Any]:
    return settings(
        max_examples=EXAMPLES[operation],
        deadline=None,
        database=None,  # the live server's state is not reproducible across runs anyway
        suppress_health_check=list(HealthCheck),
    )


def _strategy(schema: Any, method: str, path: str) -> Any:
    """Positive and negative examples, about three to one (negative ones mostly stop at the first check)."""
    operation = schema[path][method]
    positive = operation.as_strategy(generation_mode=GenerationMode.POSITIVE)
    try:
        negative = operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)
    except Exception:  # an operation without parameters has nothing to negate
        return positive
    return st.integers(0, 3).flatmap(lambda n: negative if n == 0 else positive)


def _speak_tus(case: Any, data: st.DataObject) -> None:
    """Positive examples usually carry Tus-Resumable, as every tus client sends it.

    The description makes it optional on POST, so positive POSTs would mostly stop at 412.
    One in ten is left as generated, so the 412 path stays covered.
    """
    if _is_positive(case) and data.draw(st.integers(0, 9), label="speak tus") != 0:
        case.headers = {**(case.headers or {}), "Tus-Resumable": TUS_VERSION}


def _send(case: Any, http: requests.Session, label: str) -> Any:
    base_url = case.operation.schema.raw_schema["servers"][0]["url"]
    for name in list(case.headers or {}):
        if name.lower() in _TRANSPORT_HEADERS:
            del case.headers[name]
    response = case.call(base_url=base_url, session=http, timeout=60)
    count(f"schemathesis: {label}")
    case.validate_response(response, checks=CHECKS)
    return response


def _is_positive(case: Any) -> bool:
    return case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE


_RAN: set[str] = set()


# The tests ------------------------------------------------------------------------------------


OPTIONS_EXTRA_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        # OPTIONS must work whatever Tus-Resumable says (the client may not know the version yet).
        "Tus-Resumable": st.sampled_from(["1.0.0", "0.2.2", "", "2.0.0", "1.0.0, 0.2.2"]),
        # A CORS preflight from an origin the server does not list: answered, without CORS grants.
        "Origin": st.sampled_from(["https://evil.example", "null", "http://127.0.0.1"]),
        "Access-Control-Request-Method": st.sampled_from(["POST", "PATCH", "DELETE", "HEAD"]),
        "Access-Control-Request-Headers": st.sampled_from(["tus-resumable", "upload-length,upload-metadata"]),
    },
)


def test_options(schema: Any, http: requests.Session) -> None:
    @_example_settings(("OPTIONS", "/files/"))
    @given(case=_strategy(schema, "OPTIONS", "/files/"), extra=OPTIONS_EXTRA_HEADERS)
    def run(case: Any, extra: dict[str, str]) -> None:
        # OPTIONS has no parameters in the description; vary what a client may add to it.
        case.headers = {**(case.headers or {}), **extra}
        response = _send(case, http, "OPTIONS /files/")
        if response.status_code in (200, 204):
            assert response.headers["tus-max-size"] == [str(MAX_SIZE)]
            assert "creation" in response.headers["tus-extension"][0].split(",")
        # No CORS origin is configured on this server: nothing is granted to any page.
        assert "access-control-allow-origin" not in response.headers

    run()
    _RAN.add("OPTIONS")


VALID_METADATA = st.dictionaries(
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_-0123456789"), min_size=1, max_size=8),
    st.none() | st.binary(max_size=24),
    min_size=1,
    max_size=4,
).map(lambda pairs: ",".join(k if v is None else f"{k} {base64.b64encode(v).decode()}" for k, v in pairs.items()))


def test_post_creation(schema: Any, http: requests.Session, gunicorn_server: GunicornServer) -> None:
    uploads = Uploads(gunicorn_server, http)

    @_example_settings(("POST", "/files/"))
    @given(case=_strategy(schema, "POST", "/files/"), data=st.data())
    def run(case: Any, data: st.DataObject) -> None:
        _speak_tus(case, data)
        if _is_positive(case):
            # Repairs that let positive examples get past the header parsers more often.
            repair = data.draw(st.sampled_from(["none", "metadata", "partial", "final", "no-defer", "checksum"]))
            if repair == "metadata":
                case.headers["Upload-Metadata"] = data.draw(VALID_METADATA)
            elif repair == "partial":
                case.headers["Upload-Concat"] = "partial"
            elif repair == "final":
                kind = data.draw(st.sampled_from(["partial", "final", "new", "terminated"]))
                url, _ = uploads.make(kind, data.draw(st.integers(0, 8)))
                case.headers["Upload-Concat"] = f"final;{url}"
            elif repair == "no-defer":
                case.headers.pop("Upload-Defer-Length", None)
            elif repair == "checksum":
                algorithm = data.draw(st.sampled_from(["sha1", "md5", "sha256", "sha512", "crc32"]))
                size = {"sha1": 20, "md5": 16, "sha256": 32, "sha512": 64, "crc32": 4}[algorithm]
                case.headers["Upload-Checksum"] = f"{algorithm} {base64.b64encode(secrets.token_bytes(size)).decode()}"
        response = _send(case, http, "POST /files/")
        if response.status_code == 201:
            upload_id = upload_id_of(response.headers["location"][0])
            record = record_of(gunicorn_server, upload_id)
            assert record, "201 without a record"
            # Data files are named by upload id, inside the upload directory.
            assert data_path(gunicorn_server, upload_id).exists() or record.get("stored_name")

    run()
    _RAN.add("POST")


def _one_upload_test(method: str) -> Callable[..., None]:
    def test(schema: Any, http: requests.Session, gunicorn_server: GunicornServer) -> None:
        uploads = Uploads(gunicorn_server, http, reuse=method == "HEAD")

        @_example_settings((method, "/files/{id}"))
        @given(case=_strategy(schema, method, "/files/{id}"), data=st.data())
        def run(case: Any, data: st.DataObject) -> None:
            _speak_tus(case, data)
            kind = data.draw(st.sampled_from(UPLOAD_KINDS), label="upload")
            offset = None
            if kind == "unknown":
                case.path_parameters["id"] = secrets.token_hex(16)
            elif kind != "generated":
                url, offset = uploads.make(kind, data.draw(st.integers(0, 12), label="length"))
                case.path_parameters["id"] = upload_id_of(url)
            if (
                method == "PATCH"
                and offset is not None
                and _is_positive(case)
                and data.draw(st.booleans(), label="right offset")
            ):
                case.headers["Upload-Offset"] = str(offset)
            response = _send(case, http, f"{method} /files/{{id}}")
            if kind in ("unknown", "generated") and response.status_code not in (400, 412, 415):
                assert response.status_code == 404, response.status_code
            if kind == "terminated" and response.status_code not in (400, 412, 415):
                assert response.status_code == 410, response.status_code

        run()
        _RAN.add(method)

    test.__name__ = f"test_{method.lower()}_one_upload"
    return test


test_head_one_upload = _one_upload_test("HEAD")
test_patch_one_upload = _one_upload_test("PATCH")
test_delete_one_upload = _one_upload_test("DELETE")


def test_zz_request_budget(gunicorn_server: GunicornServer) -> None:
    """The module sent at least MIN_REQUESTS generated requests, and the server logged no error."""
    if _RAN != {"OPTIONS", "POST", "HEAD", "PATCH", "DELETE"}:
        pytest.skip("only part of the module ran")
    sent = sum(n for label, n in COUNTS.items() if label.startswith("schemathesis: "))
    print(f"schemathesis sent {sent} generated requests")
    assert sent >= MIN_REQUESTS
    log = gunicorn_server.log()
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-5000:]
