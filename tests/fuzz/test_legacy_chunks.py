"""Property tests of what a legacy chunk request carries: Content-Range and the multipart body.

- ``chunk_span`` (the Content-Range pattern) on any text: None or the three
  numbers, never an exception;
- any Content-Range through the chunk view, on a new and on an existing
  upload: never a 500; a refused chunk changes nothing; an accepted one
  stored exactly its bytes at its place;
- any multipart body (field names and values, file names, part headers,
  transfer encodings, boundaries missing or wrong, bodies cut short, many
  parts): a 4xx or a 200, never a 500, and a refused first chunk leaves
  nothing on disk or in Redis (no data file, no record, no lock, no
  reservation against the user's limits); a refused later chunk leaves its
  upload exactly as it was and not locked.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client, RequestFactory
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.data import payload
from tests.support.fuzz import count, header_text
from tests.support.legacy import FILES, post_chunk
from tests.support.tus import data_of, prefix, snapshot, upload_dir
from tusbridge.chunked_upload.views import ChunkedUploadView

pytestmark = pytest.mark.django_db

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TOTAL = 300


@pytest.fixture
def legacy(client_logged_in: Client, settings: Any) -> Client:
    # A size limit and per-user limits that never refuse here: every upload is reserved, so a
    # reservation that a refused chunk leaks shows in the snapshot, and so does a leaked lock.
    settings.TUSBRIDGE_MAX_SIZE = 1 << 20
    settings.TUSBRIDGE_MAX_UPLOADS_PER_USER = 100_000
    settings.TUSBRIDGE_MAX_BYTES_PER_USER = 2**62
    return client_logged_in


def reset(redis_client: redis.Redis) -> None:
    keys = list(redis_client.scan_iter(match=f"{prefix()}*", count=500))
    if keys:
        redis_client.delete(*keys)
    for path in Path(upload_dir()).iterdir():
        path.unlink()


def existing_upload(client: Client) -> tuple[str, bytes]:
    """An upload of TOTAL bytes with its first 100 stored (its data, for later comparison)."""
    data = payload(TOTAL, seed=7)
    response = post_chunk(client, data[:100], url=FILES, start=0, total=TOTAL)
    assert response.status_code == 200, response.content
    return response.json()["upload_id"], data


# Content-Range ---------------------------------------------------------------------------------

_digits = st.one_of(
    st.integers(0, 400).map(str),
    st.sampled_from(["9" * 19, str(2**63), "9" * 400, "9" * 4301, "١٢", "１２", "007", ""]),
)
content_range = st.one_of(
    st.tuples(_digits, _digits, _digits).map(lambda p: f"bytes {p[0]}-{p[1]}/{p[2]}"),
    st.tuples(_digits, _digits, _digits, st.sampled_from(["", "\t", " ", "*", "bytes=", "items "])).map(
        lambda p: f"{p[3]}{p[0]}-{p[1]}/{p[2]}"
    ),
    st.tuples(_digits, _digits, _digits, header_text).map(lambda p: f"bytes {p[0]}-{p[1]}/{p[2]}{p[3]}"),
    header_text,
)


@FUZZ
@given(value=content_range)
@example(value="bytes 0-4/" + "9" * 4301)  # past Python's int() limit of 4300 digits
@example(value="bytes ０-４/５")
def test_chunk_span_returns_none_or_numbers(value: str) -> None:
    count("hypothesis: chunk_span (Content-Range pattern)")
    request = RequestFactory().post("/", HTTP_CONTENT_RANGE=value)
    span = ChunkedUploadView().chunk_span(request)  # must not raise, whatever the header says
    assert span is None or all(isinstance(n, int) and n >= 0 for n in span)
    ascii_range = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", value)
    if ascii_range and all(len(g) <= 19 and int(g) < 2**63 for g in ascii_range.groups()):
        # A well-formed range of 64-bit offsets is read as exactly those numbers.
        assert span == tuple(int(g) for g in ascii_range.groups())


@FUZZ
@given(value=content_range, size=st.integers(0, 64), later=st.booleans())
@example(value="bytes 0-4/" + "9" * 4301, size=5, later=False)
@example(value="bytes 100-104/" + "9" * 4301, size=5, later=True)
@example(value=f"bytes 100-149/{TOTAL}", size=50, later=True)
@example(value=f"bytes 0-49/{TOTAL}", size=60, later=False)
def test_any_content_range_is_answered_and_a_refusal_changes_nothing(
    legacy: Client, redis_client: redis.Redis, value: str, size: int, later: bool
) -> None:
    count("hypothesis: Content-Range through the chunk view")
    reset(redis_client)
    upload_id, data = existing_upload(legacy) if later else (None, payload(TOTAL, seed=7))
    chunk = data[100 : 100 + size] if later else data[:size]
    before = snapshot(redis_client)

    response = post_chunk(legacy, chunk, url=FILES, upload_id=upload_id, range_header=value)

    assert response.status_code < 500, (response.status_code, response.content[:300])
    body = json.loads(response.content)
    if response.status_code != 200:
        assert snapshot(redis_client) == before, "a refused chunk changed something"
        return
    new_id = body["upload_id"]
    stored = data_of(new_id) or b""
    if later:
        assert new_id == upload_id
        assert stored == data[:100] + chunk
    else:
        assert stored == chunk
    assert body["offset"] == len(stored)


# Multipart bodies ------------------------------------------------------------------------------

_names = st.sampled_from(["file", "upload_id", "csrfmiddlewaretoken", "the_file", "file[]", "", 'fi"le']) | header_text
_filenames = (
    st.none()
    | st.sampled_from(
        [
            "data.bin",
            "../../etc/passwd",
            "/etc/passwd",
            "..",
            "a\x00b.txt",
            "\u202egnp.exe",
            "..\uff0f..\uff0fetc",
            "e\u0301.txt",
            "x" * 5000,
            "",
            'q"uote.txt',
            "C:\\Windows\\win.ini",
        ]
    )
    | header_text
)
_cte = st.sampled_from([None, None, None, "base64", "quoted-printable", "8bit", "x-unknown"])


@st.composite
def part(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "name": draw(_names),
        "filename": draw(_filenames),
        "content_type": draw(st.sampled_from([None, "application/octet-stream", "text/plain; charset=utf-7", "ä/ö"])),
        "cte": draw(_cte),
        "data": draw(st.binary(max_size=80) | st.sampled_from([b"", b"{ID}", b"=ZZ", b"QUJD\n=", b"--"])),
    }


@st.composite
def multipart(draw: st.DrawFn) -> dict[str, Any]:
    """A chunk request: the parts (usually with a file part under "file"), boundary and framing."""
    parts = draw(st.lists(part(), max_size=5))
    if draw(st.integers(0, 3)) != 0:
        size = draw(st.integers(0, 64))
        file_part = {
            "name": "file",
            "filename": draw(_filenames.filter(lambda f: f is not None)),
            "content_type": "application/octet-stream",
            "cte": draw(_cte),
            "data": payload(TOTAL, seed=7)[100 : 100 + size] if draw(st.booleans()) else payload(size, seed=1),
        }
        parts.insert(draw(st.integers(0, len(parts))), file_part)
    if draw(st.booleans()):
        parts.insert(0, {"name": "upload_id", "filename": None, "content_type": None, "cte": None, "data": b"{ID}"})
    return {
        "parts": parts,
        "boundary": draw(
            st.sampled_from(["XxBoundaryxX", "a", "-" * 70, "b" * 71, "with space", "ä", ""]) | header_text
        ),
        "content_type": draw(st.sampled_from(["{B}", "{B}", "{B}", "missing", "empty", "other", "quoted"])),
        "truncate": draw(st.none() | st.floats(0, 1)),
        "range": draw(st.sampled_from(["match", "match", "none", "arbitrary"])),
        "later": draw(st.booleans()),
        "arbitrary_range": draw(content_range),
    }


def encode_part(p: dict[str, Any], boundary: str, upload_id: str) -> bytes:
    data = p["data"].replace(b"{ID}", upload_id.encode())
    if p["cte"] == "base64" and data and not data.startswith(b"QUJD"):
        data = base64.b64encode(data)
    disposition = f'form-data; name="{p["name"]}"'
    if p["filename"] is not None:
        disposition += f'; filename="{p["filename"]}"'
    lines = [f"--{boundary}", f"Content-Disposition: {disposition}"]
    if p["content_type"]:
        lines.append(f"Content-Type: {p['content_type']}")
    if p["cte"]:
        lines.append(f"Content-Transfer-Encoding: {p['cte']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass") + data + b"\r\n"


def build(spec: dict[str, Any], upload_id: str) -> tuple[bytes, str, str | None]:
    """(body, Content-Type, Content-Range or None)."""
    boundary = spec["boundary"]
    body = b"".join(encode_part(p, boundary, upload_id) for p in spec["parts"]) + f"--{boundary}--\r\n".encode()
    if spec["truncate"] is not None:
        body = body[: int(len(body) * spec["truncate"])]
    content_type = {
        "missing": "multipart/form-data",
        "empty": "multipart/form-data; boundary=",
        "other": "multipart/form-data; boundary=SomethingElse",
        "quoted": f'multipart/form-data; boundary="{boundary}"',
    }.get(spec["content_type"], f"multipart/form-data; boundary={boundary}")
    file_parts = [p for p in spec["parts"] if p["name"] == "file" and p["filename"]]
    if spec["range"] == "none":
        content_range = None
    elif spec["range"] == "arbitrary" or not file_parts:
        content_range = spec["arbitrary_range"]
    else:
        start = 100 if spec["later"] else 0
        size = len(file_parts[0]["data"])
        content_range = f"bytes {start}-{start + size - 1}/{TOTAL}"
    return body, content_type, content_range


def _bad_base64_file_part() -> dict[str, Any]:
    """The file part first (fields before it), its base64 broken at the end: found only mid-part."""
    data = payload(60, seed=1)
    return {
        "parts": [
            {"name": "upload_id", "filename": None, "content_type": None, "cte": None, "data": b"{ID}"},
            {
                "name": "file",
                "filename": "data.bin",
                "content_type": "application/octet-stream",
                "cte": "base64",
                "data": b"QUJD\n=" + base64.b64encode(data) + b"A",
            },
        ],
        "boundary": "XxBoundaryxX",
        "content_type": "{B}",
        "truncate": None,
        "range": "arbitrary",
        "later": False,
        "arbitrary_range": "bytes 0-63/300",
    }


def _many_files_after_the_chunk(later: bool) -> dict[str, Any]:
    """A good file part, then more file parts than DATA_UPLOAD_MAX_NUMBER_FILES allows."""
    chunk = payload(TOTAL, seed=7)[100:150] if later else payload(50, seed=1)
    extra = [
        {"name": f"f{i}", "filename": "x.bin", "content_type": None, "cte": None, "data": b"x"} for i in range(101)
    ]
    return {
        "parts": [
            {"name": "upload_id", "filename": None, "content_type": None, "cte": None, "data": b"{ID}"},
            {"name": "file", "filename": "data.bin", "content_type": None, "cte": None, "data": chunk},
            *extra,
        ],
        "boundary": "XxBoundaryxX",
        "content_type": "{B}",
        "truncate": None,
        "range": "match",
        "later": later,
        "arbitrary_range": "",
    }


@FUZZ
@given(spec=multipart())
@example(spec=_bad_base64_file_part())
@example(spec=_many_files_after_the_chunk(later=False))
@example(spec=_many_files_after_the_chunk(later=True))
def test_any_multipart_body_is_answered_and_a_refusal_leaves_nothing(
    legacy: Client, redis_client: redis.Redis, spec: dict[str, Any]
) -> None:
    count("hypothesis: multipart bodies of the legacy chunk view")
    reset(redis_client)
    upload_id, data = existing_upload(legacy) if spec["later"] else ("", b"")
    body, content_type, content_range = build(spec, upload_id)
    extra = {} if content_range is None else {"HTTP_CONTENT_RANGE": content_range}
    before = snapshot(redis_client)
    client = Client(raise_request_exception=False)
    client.cookies = legacy.cookies

    response = client.post(FILES, body, content_type=content_type, **extra)

    assert response.status_code < 500, (response.status_code, response.content[:300])
    if response.status_code != 200:
        after = snapshot(redis_client)
        assert after.files == before.files, "a refused chunk left or changed data files"
        assert after.keys == before.keys, "a refused chunk left or changed Redis keys (record, lock, reservation)"
        return
    result = json.loads(response.content)
    stored = data_of(result["upload_id"]) or b""
    assert result["offset"] == len(stored)
    if spec["later"] and result["upload_id"] == upload_id:
        assert stored[:100] == data[:100]
