"""Property tests of the tus request headers *through the views* (Django test client, real Redis and files).

tests/fuzz/test_header_parsers.py checks the parsers on their own; here
arbitrary header text goes through the whole request, so what is checked is
what a client sees and what the server keeps:

- no header value (non-ASCII, huge numbers, signs, other scripts' digits,
  malformed lists) ever makes a 500;
- a refused request leaves Redis and the upload directory exactly as they
  were: no record, no data file, no lock, no reservation;
- an accepted one stored what the headers said, and HEAD echoes
  Upload-Metadata and Upload-Concat byte for byte.

Header values are text without CR, LF and NUL: no WSGI server delivers those
(RFC 9110 5.5; gunicorn refuses the request), and the Django test client would
pass them straight through.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from django.test import Client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.data import upload_id_of
from tests.support.fuzz import count, header_chars, header_text, number_text
from tests.support.tus import (
    COLLECTION,
    OFFSET_CT,
    TUS_VERSION,
    Tus,
    data_of,
    prefix,
    record_key,
    snapshot,
    tus,
    upload_dir,
)
from tusbridge.tus.headers import parse_uint

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
UPLOAD_PATH = re.compile(r"/files/[0-9a-f]{32}")
MAX_SIZE = 4096


@pytest.fixture
def t(client_logged_in: Client, settings: Any) -> Tus:
    settings.TUSBRIDGE_MAX_SIZE = MAX_SIZE
    # Per-user limits high enough never to refuse, so that every upload is reserved and a leaked
    # reservation shows in the snapshot.
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 100_000
    settings.TUSBRIDGE_MAX_BYTES_PER_USER = 2**62
    return tus(client_logged_in)


def reset(redis_client: redis.Redis) -> None:
    """Forget every upload of this test between examples (each example starts empty)."""
    keys = list(redis_client.scan_iter(match=f"{prefix()}*", count=500))
    if keys:
        redis_client.delete(*keys)
    for path in Path(upload_dir()).iterdir():
        path.unlink()


# Strategies ------------------------------------------------------------------------------------

_b64 = st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode("ascii"))
_key = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","), min_size=1, max_size=12)
_pair = st.one_of(
    st.tuples(_key, _b64).map(" ".join),
    _key,
    st.tuples(_key, header_text).map(" ".join),
    st.just("filename " + base64.b64encode(b"a\r\nX-Injected: 1").decode()),
    st.just("filename " + base64.b64encode("../../\u202egnp.exe\x00".encode()).decode()),
)
metadata_text = st.one_of(
    st.lists(_pair, min_size=1, max_size=5).flatmap(
        lambda pairs: st.sampled_from([",", ", ", " ,", ",\t"]).map(lambda sep: sep.join(pairs))
    ),
    header_text,
    st.sampled_from(["", " ", ",", "a,a", "a b c", "a ===", "ä " + base64.b64encode(b"x").decode()]),
)

# Upload-Concat: {P} is replaced with the URL of a fresh complete partial upload, {I} with a
# fresh incomplete one, {N} with an ordinary upload, {U} with an unknown id.
_concat_url = st.sampled_from(["{P}", "{I}", "{N}", "{U}", "/files/{P}x", "http://other.example/files/{P}"])
concat_text = st.one_of(
    st.just("partial"),
    st.lists(_concat_url, min_size=1, max_size=4).map(lambda urls: "final;" + " ".join(urls)),
    st.lists(_concat_url, max_size=3).flatmap(
        lambda urls: st.tuples(header_text, st.sampled_from(["final;", "final; ", "partial;", "Final;", ""])).map(
            lambda extra: extra[1] + " ".join(urls) + extra[0]
        )
    ),
    header_text,
)

_DIGESTS: dict[str, Callable[[bytes], bytes]] = {
    "sha1": lambda b: hashlib.sha1(b).digest(),
    "md5": lambda b: hashlib.md5(b).digest(),
    "sha256": lambda b: hashlib.sha256(b).digest(),
    "sha512": lambda b: hashlib.sha512(b).digest(),
    "crc32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
}
# Upload-Checksum: {RIGHT:alg} is the correct digest of the body, {WRONG:alg} a digest of something else.
checksum_text = st.one_of(
    st.sampled_from(sorted(_DIGESTS)).flatmap(lambda a: st.sampled_from([f"{a} {{RIGHT}}", f"{a} {{WRONG}}"])),
    st.tuples(st.sampled_from([*sorted(_DIGESTS), "SHA1", "sha3", "", "md5 "]), header_text).map(" ".join),
    header_text,
)


def fill_checksum(value: str, body: bytes) -> str:
    algorithm = value.split(" ", 1)[0]
    if "{RIGHT}" in value:
        return value.replace("{RIGHT}", base64.b64encode(_DIGESTS[algorithm](body)).decode())
    if "{WRONG}" in value:
        return value.replace("{WRONG}", base64.b64encode(_DIGESTS[algorithm](body + b"!")).decode())
    return value


def fill_concat(t: Tus, value: str) -> str:
    made: dict[str, str] = {}

    def url(kind: str) -> str:
        if kind == "U":
            return "/files/0123456789abcdef0123456789abcdef"
        if kind not in made:
            if kind == "P":
                made[kind] = t.upload(b"part", HTTP_UPLOAD_CONCAT="partial")
            elif kind == "I":
                made[kind] = t.new_upload(9, HTTP_UPLOAD_CONCAT="partial")
            else:
                made[kind] = t.upload(b"plain")
        return made[kind]

    return re.sub(r"\{([PINU])\}", lambda m: url(m.group(1)), value)


def often(valid: Any, noisy: Any) -> Any:
    """``valid`` about two times in three, else ``noisy``: most examples get past the first check."""
    return st.integers(0, 2).flatmap(lambda n: noisy if n == 0 else valid)


small_length = st.integers(0, 40).map(str)
valid_metadata = st.lists(st.tuples(_key, _b64).map(" ".join) | _key, min_size=1, max_size=4, unique=True).map(",".join)


@st.composite
def creation_headers(draw: st.DrawFn) -> dict[str, str]:
    headers: dict[str, str] = {}
    shape = draw(st.sampled_from(["length", "length", "defer", "both", "neither"]))
    if shape in ("length", "both"):
        headers["HTTP_UPLOAD_LENGTH"] = draw(often(small_length, number_text))
    if shape in ("defer", "both"):
        headers["HTTP_UPLOAD_DEFER_LENGTH"] = draw(often(st.just("1"), number_text))
    if draw(st.booleans()):
        headers["HTTP_UPLOAD_METADATA"] = draw(often(valid_metadata, metadata_text))
    if draw(st.integers(0, 3)) == 0:
        headers["HTTP_UPLOAD_CONCAT"] = draw(concat_text)
    if draw(st.integers(0, 3)) == 0:
        headers["HTTP_UPLOAD_CHECKSUM"] = draw(checksum_text)
    if draw(st.integers(0, 4)) == 0:
        headers["HTTP_CONTENT_TYPE_OVERRIDE"] = draw(
            st.sampled_from([OFFSET_CT, "application/octet-stream", "", "text/plain"])
        )
    return headers


# POST ------------------------------------------------------------------------------------------


@FUZZ
@given(headers=creation_headers(), body=st.none() | st.binary(max_size=64))
@example(headers={"HTTP_UPLOAD_LENGTH": "9" * 5000}, body=None)
@example(headers={"HTTP_UPLOAD_LENGTH": "１２"}, body=None)
@example(
    headers={"HTTP_UPLOAD_LENGTH": "5", "HTTP_UPLOAD_METADATA": "filename " + base64.b64encode(b"a\r\nX: 1").decode()},
    body=None,
)  # noqa: E501
@example(headers={"HTTP_UPLOAD_CONCAT": "final;{P} {U}"}, body=None)
@example(headers={"HTTP_UPLOAD_LENGTH": "3", "HTTP_UPLOAD_CHECKSUM": "sha1 {WRONG}"}, body=b"abc")
def test_creation_headers_never_500_and_refusals_create_nothing(
    t: Tus, redis_client: redis.Redis, headers: dict[str, str], body: bytes | None
) -> None:
    count("hypothesis: tus POST headers through the view")
    reset(redis_client)
    headers = dict(headers)
    content_type = headers.pop("HTTP_CONTENT_TYPE_OVERRIDE", OFFSET_CT if body is not None else None)
    if "HTTP_UPLOAD_CONCAT" in headers:
        headers["HTTP_UPLOAD_CONCAT"] = fill_concat(t, headers["HTTP_UPLOAD_CONCAT"])
    if "HTTP_UPLOAD_CHECKSUM" in headers:
        headers["HTTP_UPLOAD_CHECKSUM"] = fill_checksum(headers["HTTP_UPLOAD_CHECKSUM"], body or b"")
    before = snapshot(redis_client)

    response = t.request("POST", COLLECTION, body or b"", content_type, **headers)

    assert response.status_code < 500, (response.status_code, response.content)
    assert response["Tus-Resumable"] == TUS_VERSION
    if "Location" not in response:
        assert response.status_code != 201
        assert snapshot(redis_client) == before, "a refused creation left something behind"
        return
    assert response.status_code in (201, 413, 460), response.status_code  # 413/460: kept what was stored
    location = response["Location"]
    assert UPLOAD_PATH.fullmatch(location.removeprefix("http://testserver")), location
    upload_id = upload_id_of(location)
    head = t.head(location)
    assert head.status_code == 200, head.content
    metadata = headers.get("HTTP_UPLOAD_METADATA", "")
    if metadata.strip():
        assert head["Upload-Metadata"] == metadata
    else:
        assert "Upload-Metadata" not in head
    if "HTTP_UPLOAD_CONCAT" in headers:
        assert head["Upload-Concat"] == headers["HTTP_UPLOAD_CONCAT"]
    if "HTTP_UPLOAD_LENGTH" in headers and not headers.get("HTTP_UPLOAD_CONCAT", "").startswith("final;"):
        assert head["Upload-Length"] == str(parse_uint("Upload-Length", headers["HTTP_UPLOAD_LENGTH"]))
    if not headers.get("HTTP_UPLOAD_CONCAT", "").startswith("final;"):
        stored = data_of(upload_id) or b""
        assert stored == (body or b"")[: len(stored)]
        assert head["Upload-Offset"] == str(len(stored))


# PATCH -----------------------------------------------------------------------------------------

patch_headers = st.fixed_dictionaries(
    {"HTTP_UPLOAD_OFFSET": often(st.just("{OFFSET}"), number_text)},
    optional={
        "HTTP_UPLOAD_LENGTH": st.sampled_from(["{LENGTH}", "{OFFSET}"]) | number_text,
        "HTTP_UPLOAD_CHECKSUM": checksum_text,
        "HTTP_CONTENT_TYPE_OVERRIDE": st.sampled_from(
            [OFFSET_CT, "application/offset+octet-stream; charset=utf-8", "application/octet-stream", "", "Ä"]
        ),
        "HTTP_X_HTTP_METHOD_OVERRIDE": often(
            st.sampled_from(["PATCH", "patch", "HEAD", "DELETE", "PUT", "OPTIONS"]), header_text
        ),
    },
)


@FUZZ
@given(
    headers=patch_headers,
    body=st.binary(max_size=24),
    deferred=st.booleans(),
    already=st.integers(0, 10),
)
@example(headers={"HTTP_UPLOAD_OFFSET": "{OFFSET}"}, body=b"abc", deferred=False, already=3)
@example(headers={"HTTP_UPLOAD_OFFSET": "9" * 5000}, body=b"abc", deferred=False, already=0)
@example(
    headers={"HTTP_UPLOAD_OFFSET": "{OFFSET}", "HTTP_UPLOAD_LENGTH": "9" * 30}, body=b"abc", deferred=True, already=0
)  # noqa: E501
@example(
    headers={"HTTP_UPLOAD_OFFSET": "{OFFSET}", "HTTP_UPLOAD_CHECKSUM": "md5 {WRONG}"},
    body=b"abc",
    deferred=False,
    already=0,
)  # noqa: E501
def test_patch_headers_never_500_and_refusals_change_nothing(
    t: Tus, redis_client: redis.Redis, headers: dict[str, str], body: bytes, deferred: bool, already: int
) -> None:
    count("hypothesis: tus PATCH headers through the view")
    reset(redis_client)
    length = 10
    url = t.new_upload(None if deferred else length)
    upload_id = upload_id_of(url)
    if already:
        assert t.patch(url, b"\x07" * already, 0).status_code == 204
    headers = dict(headers)
    content_type = headers.pop("HTTP_CONTENT_TYPE_OVERRIDE", OFFSET_CT)
    for name in ("HTTP_UPLOAD_OFFSET", "HTTP_UPLOAD_LENGTH"):
        if name in headers:
            headers[name] = headers[name].replace("{OFFSET}", str(already)).replace("{LENGTH}", str(length))
    if "HTTP_UPLOAD_CHECKSUM" in headers:
        headers["HTTP_UPLOAD_CHECKSUM"] = fill_checksum(headers["HTTP_UPLOAD_CHECKSUM"], body)
    before = snapshot(redis_client)

    response = t.request("PATCH", url, body, content_type, **headers)

    assert response.status_code < 500, (response.status_code, response.content)
    assert response["Tus-Resumable"] == TUS_VERSION
    effective = headers.get("HTTP_X_HTTP_METHOD_OVERRIDE", "PATCH").upper()
    if effective == "PATCH" and response.status_code == 204:
        assert data_of(upload_id) == b"\x07" * already + body
        assert response["Upload-Offset"] == str(already + len(body))
        assert redis_client.hget(record_key(upload_id), "offset") == str(already + len(body)).encode()
    elif effective == "DELETE" and response.status_code == 204:
        assert t.head(url).status_code == 410
        assert data_of(upload_id) is None
    else:
        # Refused, or a verb that reads (HEAD, OPTIONS): the upload is exactly as it was.
        assert response.status_code in (200, 204, 400, 405, 409, 413, 415, 460), response.status_code
        assert response.status_code not in (200, 204) or effective in ("HEAD", "OPTIONS")
        assert snapshot(redis_client) == before, f"{effective} answered {response.status_code} and changed the upload"


# Any upload id, any verb -----------------------------------------------------------------------


@FUZZ
@given(
    raw_id=st.text(header_chars, min_size=1, max_size=80) | st.text("0123456789abcdef", min_size=31, max_size=33),
    method=st.sampled_from(["HEAD", "PATCH", "DELETE", "GET", "POST", "PUT"]),
    version=st.just(TUS_VERSION) | header_text,
    override=st.none() | st.sampled_from(["HEAD", "PATCH", "DELETE", "OPTIONS"]) | header_text,
)
@example(raw_id="..", method="DELETE", version=TUS_VERSION, override=None)
@example(raw_id="%2e%2e%2f%2e%2e%2fetc", method="HEAD", version=TUS_VERSION, override=None)
@example(raw_id="\u202e" + "0" * 32, method="PATCH", version=TUS_VERSION, override=None)
def test_any_upload_id_is_a_clean_refusal(
    t: Tus, redis_client: redis.Redis, raw_id: str, method: str, version: str, override: str | None
) -> None:
    """An id that names no upload (any text, percent-encoded into the path) is 404/405/412, never more."""
    count("hypothesis: upload ids in the URL path")
    t.upload(b"someone's data")  # something that must stay untouched
    before = snapshot(redis_client)
    path = "/files/" + quote(raw_id, safe="")
    extra: dict[str, Any] = {"HTTP_TUS_RESUMABLE": version}
    if override is not None:
        extra["HTTP_X_HTTP_METHOD_OVERRIDE"] = override
    response = t.client.generic(method, path, b"abc", content_type=OFFSET_CT, HTTP_UPLOAD_OFFSET="0", **extra)
    assert response.status_code in (204, 400, 404, 405, 412, 415), (response.status_code, response.content)
    assert response.status_code != 204 or (override or method).upper() == "OPTIONS"
    assert snapshot(redis_client) == before
    reset(redis_client)
