"""The legacy chunk body parser against Django's own ``MultiPartParser``.

``ChunkBodyParser`` reads the usual jQuery-File-Upload body itself and leaves
every other shape to Django. Whatever the body, the fields, the files and the
errors must be exactly Django's, and the upload handlers must be called the
same way; and the usual shape must really take the direct path.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler, MemoryFileUploadHandler, StopFutureHandlers
from django.http.multipartparser import MultiPartParser
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import count
from tusbridge.chunked_upload.multipart import ChunkBodyParser

BOUNDARY = "----tusbridgeTestBoundary7MA4YWxk"


class RecordingHandler(FileUploadHandler):
    """Writes down every call a parser makes, and keeps the file bytes."""

    chunk_size = 64 * 1024

    def __init__(self, calls: list[tuple[Any, ...]], stop: bool) -> None:
        super().__init__(None)
        self.calls = calls
        self.stop = stop
        self.data = bytearray()

    def new_file(self, field_name: str, file_name: str, content_type: str, content_length: Any, *rest: Any) -> None:
        self.calls.append(("new_file", field_name, file_name, content_type, content_length))
        self.data = bytearray()
        if self.stop:
            raise StopFutureHandlers()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        # Chunk boundaries differ between parsers; only the order and the bytes count.
        self.data += raw_data
        return None if self.stop else raw_data

    def file_complete(self, file_size: int) -> SimpleUploadedFile | None:
        """Keeps the file itself when it stopped the other handlers (as the direct chunk handler does)."""
        self.calls.append(("file_complete", bytes(self.data), file_size))
        return SimpleUploadedFile("kept", bytes(self.data)) if self.stop else None

    def upload_interrupted(self) -> None:
        self.calls.append(("upload_interrupted",))

    def upload_complete(self) -> None:
        self.calls.append(("upload_complete",))


def multipart(parts: list[tuple[str, bytes]], *, close: bool = True, preamble: bytes = b"") -> bytes:
    """A body from (header block, content) pairs."""
    body = preamble
    for headers, content in parts:
        body += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
    if close:
        body += f"--{BOUNDARY}--\r\n".encode()
    return body


def field(name: str) -> str:
    return f'Content-Disposition: form-data; name="{name}"'


def file_part(name: str = "file", filename: str = "blob", content_type: str = "application/octet-stream") -> str:
    return f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: {content_type}'


def parse(parser_class: type[MultiPartParser], body: bytes, *, stop: bool = False) -> dict[str, Any]:
    """What a parser makes of ``body``: fields, files, handler calls, or the error it raised."""
    calls: list[tuple[Any, ...]] = []
    handlers = [RecordingHandler(calls, stop), MemoryFileUploadHandler()]
    meta = {"CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}", "CONTENT_LENGTH": str(len(body))}
    args: tuple[Any, ...] = (meta, io.BytesIO(body), handlers, "utf-8")
    if parser_class is ChunkBodyParser:
        args += ("file",)
    parser = parser_class(*args)
    try:
        post, files = parser.parse()
    except Exception as exc:  # the comparison is of the error too
        return {"error": type(exc).__name__, "calls": calls}
    return {
        "post": sorted(post.lists()),
        "files": sorted((k, [(f.name, f.content_type, f.read()) for f in v]) for k, v in files.lists()),
        "calls": calls,
        "direct": getattr(parser, "direct", None),
    }


def same_as_django(body: bytes, *, stop: bool = False) -> dict[str, Any]:
    ours, django = parse(ChunkBodyParser, body, stop=stop), parse(MultiPartParser, body, stop=stop)
    direct = ours.pop("direct", None)
    django.pop("direct", None)
    assert ours == django
    ours["direct"] = direct
    return ours


@pytest.mark.parametrize("size", [0, 1, 100_000, 3 * 1024 * 1024 + 17])
@pytest.mark.parametrize("stop", [False, True])
def test_jquery_file_upload_body_takes_the_direct_path(size: int, stop: bool) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    body = multipart([(field("csrfmiddlewaretoken"), b"t" * 32), (field("upload_id"), b"abc"), (file_part(), data)])
    result = same_as_django(body, stop=stop)
    assert result["direct"] is True
    assert result["post"] == [("csrfmiddlewaretoken", ["t" * 32]), ("upload_id", ["abc"])]
    assert ("file_complete", data, size) in result["calls"]


def test_data_that_looks_like_a_delimiter_is_kept() -> None:
    """Only "--" and the whole boundary end the part; near misses are data, also where reads split them."""
    near = f"\r\n--{BOUNDARY[:-1]}X".encode()
    data = (b"x" * (1024 * 1024 - 10) + near) * 3 + f"-{BOUNDARY}".encode() + b"\r\n-"
    result = same_as_django(multipart([(field("upload_id"), b"1"), (file_part(), data)]))
    assert result["direct"] is True
    assert ("file_complete", data, len(data)) in result["calls"]


@pytest.mark.parametrize("shift", range(-48, 4))
def test_a_delimiter_split_between_two_reads_is_found(shift: int) -> None:
    """The body is read 64 KiB first, then 1 MiB at a time: put the closing delimiter across that seam."""
    head = multipart([(field("upload_id"), b"1"), (file_part(), b"")], close=False)[: -len(b"\r\n")]
    data = b"y" * (64 * 1024 + 1024 * 1024 - len(head) + shift)
    result = same_as_django(multipart([(field("upload_id"), b"1"), (file_part(), data)]))
    assert result["direct"] is True
    assert ("file_complete", data, len(data)) in result["calls"]


def test_a_delimiter_without_crlf_ends_the_part_as_in_django() -> None:
    data = b"abc" + f"--{BOUNDARY}".encode() + b"\r\n" + field("late").encode() + b"\r\n\r\nv"
    result = same_as_django(multipart([(field("upload_id"), b"1"), (file_part(), data)]))
    assert result["direct"] is True
    assert ("file_complete", b"abc", 3) in result["calls"]
    assert ("late", ["v"]) in result["post"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(multipart([(file_part(), b"data"), (field("upload_id"), b"1")]), id="file-first"),
        pytest.param(multipart([(field("upload_id"), b"1")]), id="no-file"),
        pytest.param(multipart([(file_part(name="other"), b"data")]), id="other-file-field"),
        pytest.param(multipart([(file_part() + "\r\nContent-Transfer-Encoding: base64", b"ZGF0YQ==")]), id="base64"),
        pytest.param(multipart([("Content-Disposition: form-data; name=upload_id", b"1")]), id="unquoted"),
        pytest.param(multipart([('Content-Disposition: form-data; filename="a"; name="file"', b"d")]), id="order"),
        pytest.param(multipart([(file_part(filename="../.."), b"data")]), id="no-usable-filename"),
        pytest.param(multipart([(field("a"), b"1"), (file_part(), b"data")], preamble=b"junk\r\n"), id="preamble"),
        pytest.param(multipart([(field("upload_id"), b"1"), (file_part(), b"data")], close=False), id="cut-short"),
        pytest.param(multipart([(field("a"), b"1" * 70_000), (file_part(), b"data")]), id="long-field"),
    ],
)
def test_other_shapes_parse_as_django_parses_them(body: bytes) -> None:
    same_as_django(body)


def test_parts_after_the_file_are_parsed_by_django() -> None:
    body = multipart(
        [
            (field("upload_id"), b"1"),
            (file_part(), b"chunk"),
            (field("after"), b"2"),
            (file_part(name="extra", filename="e.txt", content_type="text/plain"), b"more"),
        ]
    )
    result = same_as_django(body)
    assert result["direct"] is True
    assert result["post"] == [("after", ["2"]), ("upload_id", ["1"])]
    assert [name for name, _ in result["files"]] == ["extra", "file"]


def test_a_body_that_ends_at_the_delimiter_after_the_file_interrupts_the_upload() -> None:
    """No byte after the file's delimiter (not even the closing "--"): Django never completes that file."""
    body = multipart([(field("upload_id"), b"1"), (file_part(), b"x" * 5000)], close=False) + f"--{BOUNDARY}".encode()
    result = same_as_django(body)
    assert result["direct"] is True
    assert ("upload_interrupted",) in result["calls"]
    assert result["files"] == []


@pytest.mark.parametrize("close", [False, True])
def test_a_delimiter_right_after_the_file_headers_is_left_to_django(close: bool) -> None:
    """Its CR LF is the blank line's second half: Django finds no end of the headers and drops the part."""
    body = f"--{BOUNDARY}\r\n{file_part()}\r\n\r\n--{BOUNDARY}".encode() + (b"--\r\n" if close else b"")
    result = same_as_django(body)
    assert result["direct"] is False
    assert result["files"] == []


def test_the_body_cut_inside_the_file_interrupts_the_upload() -> None:
    body = multipart([(field("upload_id"), b"1"), (file_part(), b"x" * 5000)])[:-40]
    result = same_as_django(body)
    assert result["direct"] is True
    assert ("upload_interrupted",) in result["calls"]
    assert not any(call[0] == "file_complete" for call in result["calls"])


_text = st.text(st.characters(codec="utf-8", exclude_characters='"\\\r\n'), max_size=12)
_header = st.one_of(
    st.builds(field, _text),
    st.builds(file_part, st.sampled_from(["file", "other"]), _text, st.sampled_from(["a/b", "text/plain; x=1"])),
    st.sampled_from(
        [
            "Content-Disposition: form-data; name=file; filename=f",
            'content-disposition: FORM-DATA; NAME="file"; FILENAME="f"',
            "Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%C3%A9",
            'Content-Disposition: form-data; name="upload_id"\r\nContent-Length: 3',
            'Content-Disposition: attachment; name="file"; filename="f"',
            "Content-Type: text/plain",
            "X-Other: 1",
        ]
    ),
)
_content = st.one_of(st.binary(max_size=200), st.sampled_from([b"\r\n", f"\r\n--{BOUNDARY}".encode(), b"--"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(_header, _content), max_size=5),
    close=st.booleans(),
    cut=st.integers(min_value=0, max_value=30),
    tail=st.sampled_from([b"", b"epilogue", b"\r\n--x"]),
    stop=st.booleans(),
)
@example(parts=[(field("upload_id"), b"1"), (file_part(), b"abc")], close=True, cut=0, tail=b"", stop=True)
def test_any_body_parses_as_django_parses_it(
    parts: list[tuple[str, bytes]], close: bool, cut: int, tail: bytes, stop: bool
) -> None:
    count("hypothesis: legacy chunk parser vs Django's")
    body = multipart(parts, close=close) + tail
    if same_as_django(body[: len(body) - cut] if cut else body, stop=stop).get("direct"):
        count("hypothesis: legacy chunk parser vs Django's, direct path")
