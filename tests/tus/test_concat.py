"""The tus concatenation and concatenation-unfinished extensions.

Partial uploads (``Upload-Concat: partial``) are joined into a final upload
(``Upload-Concat: final;<url> <url> ...``) in the listed order. Driven through
Django's test client against the private Redis and a real upload directory;
the bytes of every final upload are compared with the expected concatenation,
and every refused creation is checked to have created nothing (no Redis key,
no file).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.test import Client

from tests.support.data import payload, upload_id_of
from tests.support.tus import (
    COLLECTION,
    Completion,
    Tus,
    data_of,
    data_path,
    move_expiry,
    record_key,
    snapshot,
    tus,
    upload_dir,
)

pytestmark = pytest.mark.django_db

UNKNOWN_ID = "0123456789abcdef0123456789abcdef"


def relative(url: str) -> str:
    """The path of an absolute upload URL."""
    return urlsplit(url).path


def partial(t: Tus, data: bytes | None, *, length: int | None = None, upload: bool = True) -> str:
    """Create a partial upload (of ``length`` or ``len(data)``) and optionally upload ``data``; return its URL."""
    size = len(data) if data is not None else length
    response = t.create(size, defer=size is None, HTTP_UPLOAD_CONCAT="partial")
    assert response.status_code == 201, response.content
    url = response["Location"]
    if upload and data:
        done = t.patch(url, data, 0)
        assert done.status_code == 204, done.content
    return url


def create_final(t: Tus, urls: list[str], **extra: Any) -> Any:
    return t.create(None, HTTP_UPLOAD_CONCAT="final;" + " ".join(urls), **extra)


def state_of(client: redis.Redis, upload_id: str) -> str:
    return (client.hget(record_key(upload_id), "state") or b"").decode()


# Partial uploads --------------------------------------------------------------------


def test_options_advertises_concatenation(client: Client) -> None:
    """OPTIONS announces concatenation and concatenation-unfinished."""
    response = tus(client, version=None).options(COLLECTION)
    extensions = [e.strip() for e in response["Tus-Extension"].split(",")]
    assert "concatenation" in extensions
    assert "concatenation-unfinished" in extensions


def test_partial_upload_head_has_offset_and_concat(t: Tus, redis_client: redis.Redis) -> None:
    """A partial upload is a normal upload to PATCH; HEAD echoes ``Upload-Concat: partial`` and its offset."""
    url = partial(t, None, length=10)
    head = t.head(url)
    assert head.status_code == 200
    assert head["Upload-Concat"] == "partial"
    assert head["Upload-Offset"] == "0"
    assert head["Upload-Length"] == "10"
    assert t.patch(url, b"01234", 0).status_code == 204
    assert t.head(url)["Upload-Offset"] == "5"
    assert t.patch(url, b"56789", 5).status_code == 204
    head = t.head(url)
    assert (head["Upload-Offset"], head["Upload-Concat"]) == ("10", "partial")
    assert data_of(upload_id_of(url)) == b"0123456789"
    assert state_of(redis_client, upload_id_of(url)) == "complete"


def test_completed_partial_is_not_announced_as_a_finished_file(t: Tus, completions: list[Completion]) -> None:
    """A partial upload is raw material: completing it sends no upload_completed; the final sends one."""
    a = partial(t, b"hello")
    b = partial(t, b" world")
    assert completions == []
    final = create_final(t, [a, b])
    assert final.status_code == 201
    assert len(completions) == 1
    assert completions[0].upload.id == upload_id_of(final["Location"])
    assert completions[0].content == b"hello world"


# Final uploads ----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["absolute", "relative", "mixed"])
def test_final_upload_joins_partials_in_order(t: Tus, redis_client: redis.Redis, style: str) -> None:
    """A final of complete partials (absolute, relative or mixed URLs) is complete at once, bytes in list order."""
    parts = [payload(n, seed=n, kind="random") for n in (1000, 1, 5555)]
    urls = [partial(t, p) for p in parts]
    assert all(u.startswith("http://testserver/files/") for u in urls)
    listed = {
        "absolute": urls[::-1],
        "relative": [relative(u) for u in urls[::-1]],
        "mixed": [urls[2], relative(urls[1]), urls[0]],
    }[style]
    response = create_final(t, listed)
    assert response.status_code == 201, response.content
    final_url = response["Location"]
    final_id = upload_id_of(final_url)
    expected = parts[2] + parts[1] + parts[0]
    assert data_of(final_id) == expected
    assert state_of(redis_client, final_id) == "complete"
    head = t.head(final_url)
    assert head.status_code == 200
    assert head["Upload-Length"] == str(len(expected))
    assert head["Upload-Offset"] == str(len(expected))
    # The partials are untouched.
    for url, part in zip(urls, parts, strict=True):
        assert data_of(upload_id_of(url)) == part


def test_spec_example_hello_world(t: Tus) -> None:
    """The spec's example: 'hello' + ' world' -> 11 bytes 'hello world'."""
    a = partial(t, b"hello")
    b = partial(t, b" world")
    response = create_final(t, [relative(a), relative(b)])
    assert response.status_code == 201
    head = t.head(response["Location"])
    assert head["Upload-Length"] == head["Upload-Offset"] == "11"
    assert data_of(upload_id_of(response["Location"])) == b"hello world"


def test_partial_repeated_in_one_final(t: Tus) -> None:
    """The same partial may appear several times in one Upload-Concat; length and bytes count every use."""
    a = partial(t, b"ab")
    b = partial(t, b"XYZ")
    response = create_final(t, [a, b, a, relative(a)])
    assert response.status_code == 201
    head = t.head(response["Location"])
    assert head["Upload-Length"] == head["Upload-Offset"] == str(2 + 3 + 2 + 2)
    assert data_of(upload_id_of(response["Location"])) == b"abXYZabab"


def test_partial_used_by_several_finals(t: Tus) -> None:
    """A partial upload may be used in several creation requests."""
    a = partial(t, b"one-")
    b = partial(t, b"two")
    first = create_final(t, [a, b])
    second = create_final(t, [b, a])
    assert first.status_code == second.status_code == 201
    assert first["Location"] != second["Location"]
    assert data_of(upload_id_of(first["Location"])) == b"one-two"
    assert data_of(upload_id_of(second["Location"])) == b"twoone-"


def test_final_length_is_the_sum_of_partial_lengths(t: Tus) -> None:
    """Upload-Length of a final equals the sum of its partials' lengths, known before they complete."""
    a = partial(t, None, length=7)
    b = partial(t, None, length=13)
    response = create_final(t, [a, b])
    assert response.status_code == 201
    head = t.head(response["Location"])
    assert head["Upload-Length"] == "20"


def test_final_metadata_is_its_own(t: Tus) -> None:
    """Partial metadata is not transferred; the final's own Upload-Metadata is echoed on HEAD."""
    r = t.create(3, HTTP_UPLOAD_CONCAT="partial", HTTP_UPLOAD_METADATA="filename cGFydC5iaW4=")
    assert r.status_code == 201
    a = r["Location"]
    assert t.patch(a, b"abc", 0).status_code == 204
    plain = create_final(t, [a])
    assert plain.status_code == 201
    assert "Upload-Metadata" not in t.head(plain["Location"])
    named = create_final(t, [a], HTTP_UPLOAD_METADATA="filename ZmluYWwuYmlu")
    assert named.status_code == 201
    assert t.head(named["Location"])["Upload-Metadata"] == "filename ZmluYWwuYmlu"


@pytest.mark.parametrize(
    ("header", "value"),
    [("HTTP_UPLOAD_LENGTH", "5"), ("HTTP_UPLOAD_LENGTH", "0"), ("HTTP_UPLOAD_DEFER_LENGTH", "1")],
)
def test_length_on_a_final_creation_is_400_and_creates_nothing(
    t: Tus, redis_client: redis.Redis, header: str, value: str
) -> None:
    """The Client MUST NOT include Upload-Length in the final creation: 400, nothing created."""
    a = partial(t, b"hello")
    before = snapshot(redis_client)
    response = t.create(None, HTTP_UPLOAD_CONCAT=f"final;{a}", **{header: value})
    assert response.status_code == 400
    assert "Location" not in response
    assert snapshot(redis_client) == before


@pytest.mark.parametrize("complete", [True, False], ids=["assembled", "waiting"])
def test_patch_on_a_final_is_403_and_changes_nothing(t: Tus, redis_client: redis.Redis, complete: bool) -> None:
    """PATCH against a final upload URL: 403; neither the final nor its partials change."""
    a = partial(t, b"hello")
    b = partial(t, b" world" if complete else None, length=6)
    response = create_final(t, [a, b])
    assert response.status_code == 201
    final_url = response["Location"]
    before = snapshot(redis_client)
    offset = "11" if complete else "0"
    refused = t.patch(final_url, b"!", offset)
    assert refused.status_code == 403
    refused_empty = t.patch(final_url, b"", offset)
    assert refused_empty.status_code == 403
    assert snapshot(redis_client) == before


def test_head_on_a_final_before_and_after_its_partials_complete(t: Tus, redis_client: redis.Redis) -> None:
    """concatenation-unfinished: no Upload-Offset while partials are incomplete; offset == length once joined."""
    parts = [
        payload(3000, seed=1, kind="random"),
        payload(4000, seed=2, kind="random"),
        payload(5, seed=3, kind="random"),
    ]
    urls = [partial(t, None, length=len(p)) for p in parts]
    response = create_final(t, urls)
    assert response.status_code == 201
    final_url = response["Location"]
    final_id = upload_id_of(final_url)

    def check_pending() -> None:
        head = t.head(final_url)
        assert head.status_code == 200
        assert "Upload-Offset" not in head
        assert head["Upload-Length"] == str(sum(map(len, parts)))
        assert state_of(redis_client, final_id) == "uploading"

    check_pending()
    assert t.patch(urls[0], parts[0], 0).status_code == 204
    check_pending()
    assert t.patch(urls[2], parts[2][:2], 0).status_code == 204
    assert t.patch(urls[1], parts[1], 0).status_code == 204
    check_pending()
    assert t.patch(urls[2], parts[2][2:], 2).status_code == 204

    # Joined when the last partial completed, before anyone asked for the final.
    assert state_of(redis_client, final_id) == "complete"
    assert data_of(final_id) == b"".join(parts)
    head = t.head(final_url)
    assert head["Upload-Offset"] == head["Upload-Length"] == str(sum(map(len, parts)))


def test_final_waiting_for_a_deferred_partial(t: Tus, redis_client: redis.Redis) -> None:
    """A final whose partial has no length yet has no Upload-Length; it is joined once that partial completes."""
    a = partial(t, b"first-")
    b = partial(t, None)  # deferred length
    response = create_final(t, [a, b])
    assert response.status_code == 201
    final_url = response["Location"]
    head = t.head(final_url)
    assert "Upload-Length" not in head
    assert "Upload-Offset" not in head
    assert t.patch(b, b"sec", 0).status_code == 204
    assert "Upload-Offset" not in t.head(final_url)
    assert t.patch(b, b"ond", 3, HTTP_UPLOAD_LENGTH="6").status_code == 204
    head = t.head(final_url)
    assert head["Upload-Offset"] == head["Upload-Length"] == "12"
    assert data_of(upload_id_of(final_url)) == b"first-second"


def test_completions_fire_once_for_an_unfinished_final(t: Tus, completions: list[Completion]) -> None:
    """A final joined when its last partial completes is announced exactly once, with the joined bytes."""
    a = partial(t, None, length=2)
    b = partial(t, None, length=2)
    final_url = create_final(t, [a, b])["Location"]
    assert t.patch(a, b"ab", 0).status_code == 204
    assert t.patch(b, b"cd", 0).status_code == 204
    for _ in range(3):
        t.head(final_url)
    assert [(c.upload.id, c.content) for c in completions] == [(upload_id_of(final_url), b"abcd")]


@pytest.mark.parametrize("style", ["absolute", "relative"])
def test_upload_concat_is_echoed_exactly(t: Tus, style: str) -> None:
    """HEAD returns Upload-Concat as received in the creation request, for finals and partials."""
    a = partial(t, b"xy")
    b = partial(t, None, length=1)
    listed = [a, b, a] if style == "absolute" else [relative(a), relative(b), relative(a)]
    raw = "final;" + " ".join(listed)
    response = t.create(None, HTTP_UPLOAD_CONCAT=raw)
    assert response.status_code == 201
    assert t.head(response["Location"])["Upload-Concat"] == raw  # waiting
    assert t.patch(b, b"z", 0).status_code == 204
    head = t.head(response["Location"])
    assert head["Upload-Concat"] == raw  # assembled
    assert head["Upload-Offset"] == "5"
    assert t.head(a)["Upload-Concat"] == "partial"


def test_deleting_a_partial_after_assembly_keeps_the_final(t: Tus, redis_client: redis.Redis) -> None:
    """Once joined, a final has its own bytes: terminating a partial does not touch it."""
    a = partial(t, b"abc")
    b = partial(t, b"def")
    final_url = create_final(t, [a, b])["Location"]
    assert t.delete(a).status_code == 204
    head = t.head(final_url)
    assert head.status_code == 200
    assert head["Upload-Offset"] == "6"
    assert data_of(upload_id_of(final_url)) == b"abcdef"


def test_final_whose_partial_was_terminated_is_gone(t: Tus, redis_client: redis.Redis) -> None:
    """A waiting final whose partial is terminated answers 410 on HEAD (it can never be completed)."""
    a = partial(t, b"abc")
    b = partial(t, None, length=3)
    final_url = create_final(t, [a, b])["Location"]
    assert t.head(final_url).status_code == 200
    assert t.delete(b).status_code == 204
    response = t.head(final_url)
    assert response.status_code == 410
    assert "Upload-Offset" not in response
    # Other verbs agree.
    assert t.patch(final_url, b"x", 0).status_code in (403, 410)


def test_final_whose_partial_expired_is_gone(t: Tus, redis_client: redis.Redis) -> None:
    """A waiting final whose unfinished partial has expired answers 410 on HEAD."""
    a = partial(t, None, length=3)
    final_url = create_final(t, [a])["Location"]
    move_expiry(redis_client, upload_id_of(a), time.time() - 10)
    assert t.head(final_url).status_code == 410


def test_terminated_waiting_final_is_not_assembled_later(
    t: Tus, redis_client: redis.Redis, completions: list[Completion]
) -> None:
    """DELETE on a waiting final, then its partials complete: the final's file is not recreated or announced."""
    a = partial(t, None, length=2)
    final_url = create_final(t, [a])["Location"]
    final_id = upload_id_of(final_url)
    assert t.delete(final_url).status_code == 204
    assert not data_path(final_id).exists()
    assert t.patch(a, b"ok", 0).status_code == 204
    assert not data_path(final_id).exists()
    assert completions == []
    assert t.head(final_url).status_code in (404, 410)


def test_empty_partial_in_a_final(t: Tus) -> None:
    """A partial of length 0 (complete at creation) joins like any other."""
    empty = partial(t, None, length=0)
    assert t.head(empty)["Upload-Offset"] == "0"
    a = partial(t, b"data")
    response = create_final(t, [empty, a, empty])
    assert response.status_code == 201
    head = t.head(response["Location"])
    assert head["Upload-Offset"] == head["Upload-Length"] == "4"
    assert data_of(upload_id_of(response["Location"])) == b"data"


# Refused final creations create nothing ------------------------------------------------


def _others_partial(t: Tus, other: Client) -> str:
    return partial(tus(other), b"mallory")


def _unknown(t: Tus, other: Client) -> str:
    return f"http://testserver/files/{UNKNOWN_ID}"


def _terminated(t: Tus, other: Client) -> str:
    url = partial(t, b"gone")
    assert t.delete(url).status_code == 204
    return url


def _terminated_incomplete(t: Tus, other: Client) -> str:
    url = partial(t, None, length=10)
    assert t.delete(url).status_code == 204
    return url


def _not_partial(t: Tus, other: Client) -> str:
    return t.upload(b"plain upload")


def _a_final(t: Tus, other: Client) -> str:
    a = partial(t, b"abc")
    response = create_final(t, [a])
    assert response.status_code == 201
    return response["Location"]


BAD_PARTIALS: dict[str, tuple[Callable[[Tus, Client], str], tuple[int, ...]]] = {
    "owned-by-another-user": (_others_partial, (404, 400)),
    "unknown": (_unknown, (404, 400)),
    "terminated": (_terminated, (400, 404)),
    "terminated-incomplete": (_terminated_incomplete, (400, 404)),
    "not-a-partial": (_not_partial, (400,)),
    "a-final-upload": (_a_final, (400,)),
}


@pytest.mark.parametrize("position", ["alone", "after-a-good-one"])
@pytest.mark.parametrize("kind", list(BAD_PARTIALS))
def test_final_with_an_unusable_partial_creates_nothing(
    t: Tus, other_client: Client, redis_client: redis.Redis, kind: str, position: str
) -> None:
    """A final naming a partial that is someone else's, unknown, terminated or not partial fails; nothing is created."""
    make, statuses = BAD_PARTIALS[kind]
    bad = make(t, other_client)
    good = partial(t, b"good")
    before = snapshot(redis_client)
    files_before = sorted(os.listdir(upload_dir()))
    listed = [bad] if position == "alone" else [good, bad]
    response = create_final(t, listed)
    assert response.status_code in statuses, (response.status_code, response.content)
    assert "Location" not in response
    assert snapshot(redis_client) == before  # no new record, no waiting-final entry on the good partial
    assert sorted(os.listdir(upload_dir())) == files_before


@pytest.mark.parametrize(
    "value",
    [
        "final",
        "final;",
        "final; ",
        "final;   ",
        "Final;/files/abc",
        "partial;/files/abc",
        "Partial",
        "final,/files/abc",
        "final;/files/../../etc/passwd",
        "final;/files/a.b",
        "something-else",
    ],
)
def test_malformed_upload_concat_is_400_and_creates_nothing(t: Tus, redis_client: redis.Redis, value: str) -> None:
    """Upload-Concat that is neither 'partial' nor 'final;<url> ...' with at least one URL: 400."""
    before = snapshot(redis_client)
    response = t.create(10, HTTP_UPLOAD_CONCAT=value)
    assert response.status_code == 400, response.content
    assert snapshot(redis_client) == before


# Kernel copy -----------------------------------------------------------------------------


MIB = 1024 * 1024


@pytest.mark.real_stores  # looks at the files in the upload directory
def test_concatenation_uses_copy_file_range(t: Tus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Multi-MiB partials are joined with os.copy_file_range (in the kernel), byte-exact."""
    calls: list[int] = []
    real = os.copy_file_range

    def counting(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        n = real(src, dst, count, offset_src, offset_dst)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", counting)
    parts = [
        payload(3 * MIB + 17, seed=11, kind="random"),
        payload(2 * MIB - 3, seed=12, kind="random"),
        payload(MIB + 1, seed=13, kind="random"),
    ]
    urls = [partial(t, p) for p in parts]
    assert calls == []  # uploading partials copies nothing
    response = create_final(t, [urls[1], urls[0], urls[2], urls[1]])
    assert response.status_code == 201
    expected = parts[1] + parts[0] + parts[2] + parts[1]
    final_id = upload_id_of(response["Location"])
    assert data_path(final_id).stat().st_size == len(expected)
    assert data_of(final_id) == expected
    assert sum(calls) == len(expected)  # every byte went through copy_file_range


@pytest.mark.real_stores  # looks at the files in the upload directory
def test_concatenation_falls_back_to_sendfile(t: Tus, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where copy_file_range is refused (EXDEV), sendfile still copies in the kernel, byte-exact."""
    sent: list[int] = []
    real_sendfile = os.sendfile

    def refuse(*args: Any) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real_sendfile(out_fd, in_fd, offset, count)
        sent.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    parts = [payload(2 * MIB + 5, seed=21, kind="random"), payload(MIB + 7, seed=22, kind="random")]
    urls = [partial(t, p) for p in parts]
    response = create_final(t, [urls[1], urls[0]])
    assert response.status_code == 201
    expected = parts[1] + parts[0]
    assert data_of(upload_id_of(response["Location"])) == expected
    assert sum(sent) == len(expected)


def test_unfinished_concatenation_uses_copy_file_range(
    t: Tus, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join triggered by the last partial's PATCH also copies in the kernel, byte-exact."""
    calls: list[int] = []
    real = os.copy_file_range

    def counting(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        n = real(src, dst, count, offset_src, offset_dst)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", counting)
    parts = [payload(2 * MIB + 1, seed=31, kind="random"), payload(3 * MIB - 1, seed=32, kind="random")]
    urls = [partial(t, parts[0]), partial(t, None, length=len(parts[1]))]
    final_url = create_final(t, urls)["Location"]
    assert calls == []
    assert t.patch(urls[1], parts[1], 0).status_code == 204
    assert sum(calls) == sum(map(len, parts))
    final_id = upload_id_of(final_url)
    assert data_of(final_id) == b"".join(parts)
    assert state_of(redis_client, final_id) == "complete"
