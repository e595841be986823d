"""A tus PATCH counts its bytes while its body streams, and stops when the process stops.

Service-level: a body that is a Python stream, so that the test decides what
happens between its pieces (a look at the record, a stop, a crash). Runs on
whichever stores the tier configures.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterator

import pytest

from tests.support.data import payload
from tests.support.tus import data_of
from tusbridge import errors, shutdown
from tusbridge.checksums import parse_checksum
from tusbridge.service import UploadService, get_service

PIECE = 64 * 1024

pytestmark = pytest.mark.django_db


class Body:
    """A request body of ``data`` that calls ``between(sent)`` before each piece after the first."""

    def __init__(self, data: bytes, between: Callable[[int], None]) -> None:
        self.data = data
        self.sent = 0
        self.between = between

    def read(self, size: int = -1, /) -> bytes:
        if self.sent:
            self.between(self.sent)
        piece = self.data[self.sent : self.sent + min(size, PIECE)]
        self.sent += len(piece)
        return piece


@pytest.fixture
def service(settings: object) -> UploadService:
    settings.TUSBRIDGE_PROGRESS_INTERVAL = 0.01  # type: ignore[attr-defined]
    settings.TUSBRIDGE_PROGRESS_BYTES = 128 * 1024  # type: ignore[attr-defined]
    return get_service()


@pytest.fixture
def stop_flag() -> Iterator[None]:
    yield
    shutdown._stopping = False


def offsets_seen(service: UploadService, upload_id: str) -> tuple[list[int], Callable[[int], None]]:
    seen: list[int] = []

    def look(sent: int) -> None:
        record = service.records.get(upload_id)
        assert record is not None
        seen.append(record.offset)

    return seen, look


def test_the_offset_moves_while_the_body_streams(service: UploadService) -> None:
    data = payload(1024 * 1024, seed=1)
    record = service.create(owner="7", protocol="tus", length=len(data))
    seen, look = offsets_seen(service, record.id)
    result = service.append(record.id, "7", offset=0, stream=Body(data, look), content_length=len(data))
    assert result.completed and result.written == len(data)
    # Counted every 128 KiB: at the third piece, after every second piece since.
    assert seen[0] == 0 and max(seen) >= len(data) - 2 * 128 * 1024
    assert seen == sorted(seen) and all(offset % PIECE == 0 for offset in seen)
    assert data_of(record.id) == data


def test_a_crash_mid_body_keeps_what_was_counted(service: UploadService) -> None:
    """An error mid-body (not a tear-down) keeps the counted bytes and cuts off only the rest."""
    data = payload(1024 * 1024, seed=2)
    record = service.create(owner="7", protocol="tus", length=len(data))

    def crash(sent: int) -> None:
        if sent >= 600 * 1024:
            raise RuntimeError("the application broke")

    body = Body(data, crash)
    with pytest.raises(RuntimeError):
        service.append(record.id, "7", offset=0, stream=body, content_length=len(data))
    counted = service.records.get(record.id).offset
    assert body.sent - 128 * 1024 <= counted <= body.sent and counted > 0  # within one count of what arrived
    assert data_of(record.id) == data[:counted]  # the uncounted rest was cut off
    assert service.records.lock_holder(record.id) is None


def test_a_request_torn_down_counts_what_it_wrote(service: UploadService) -> None:
    """A worker's graceful timeout kills the greenlet (GreenletExit), a cancelled task gets CancelledError:
    the bytes written so far are counted, not cut off."""
    data = payload(1024 * 1024, seed=3)
    record = service.create(owner="7", protocol="tus", length=len(data))

    def torn_down(sent: int) -> None:
        if sent >= 300 * 1024:
            raise SystemExit("the worker is stopping")

    with pytest.raises(SystemExit):
        service.append(record.id, "7", offset=0, stream=Body(data, torn_down), content_length=len(data))
    counted = service.records.get(record.id).offset
    assert counted == 320 * 1024  # five pieces of 64 KiB were written before the sixth read
    assert data_of(record.id) == data[:counted]
    assert service.records.lock_holder(record.id) is None


def test_a_checksummed_patch_counts_only_when_it_ends(service: UploadService) -> None:
    data = payload(1024 * 1024, seed=4)
    record = service.create(owner="7", protocol="tus", length=len(data))
    seen, look = offsets_seen(service, record.id)
    digest = parse_checksum("sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode())
    result = service.append(record.id, "7", offset=0, stream=Body(data, look), content_length=len(data), digest=digest)
    assert result.completed
    assert set(seen) == {0}  # all or nothing, as the checksum extension requires


def test_a_stopping_process_ends_the_body_with_what_arrived(service: UploadService, stop_flag: None) -> None:
    data = payload(1024 * 1024, seed=5)
    record = service.create(owner="7", protocol="tus", length=len(data))

    def stop(sent: int) -> None:
        if sent >= 400 * 1024:
            shutdown.stop()

    body = Body(data, stop)
    result = service.append(record.id, "7", offset=0, stream=body, content_length=len(data))
    assert result.interrupted and not result.completed
    # It stopped at the next piece, and every byte it read counts.
    assert 400 * 1024 < body.sent < len(data)
    assert result.record.offset == result.written == body.sent == service.records.get(record.id).offset
    assert data_of(record.id) == data[: body.sent]
    assert service.records.lock_holder(record.id) is None
    shutdown._stopping = False
    offset = body.sent
    rest = service.append(
        record.id, "7", offset=offset, stream=io.BytesIO(data[offset:]), content_length=len(data) - offset
    )
    assert rest.completed and data_of(record.id) == data


def test_a_lock_whose_request_ended_is_freed_by_the_next_request(settings: object) -> None:
    """A request that ended without its release reaching the store (a dropped holder) does not keep the
    upload locked for the lock's TTL: the next request of the process frees it at once."""
    settings.TUSBRIDGE_LOCK_TTL = 600  # type: ignore[attr-defined]
    settings.TUSBRIDGE_LOCK_WAIT = 2  # type: ignore[attr-defined]
    service = get_service()
    record = service.create(owner="7", protocol="tus", length=10)
    lock, _ = service.lock_for_write(record.id, "7")
    token = lock.token
    del lock  # the request is gone; its lock stays in the store
    assert service.records.lock_holder(record.id) == token
    lock, _ = service.lock_for_write(record.id, "7")  # Locked after 2 s if it were not freed
    assert lock.token != token
    lock.release()


def test_a_lock_held_by_a_live_request_is_not_taken(settings: object) -> None:
    settings.TUSBRIDGE_LOCK_WAIT = 0.3  # type: ignore[attr-defined]
    service = get_service()
    record = service.create(owner="7", protocol="tus", length=10)
    lock, _ = service.lock_for_write(record.id, "7")
    with pytest.raises(errors.Locked):
        service.lock_for_write(record.id, "7")
    lock.release()


def test_a_patch_taken_in_while_stopping_is_sent_elsewhere(service: UploadService, stop_flag: None) -> None:
    """Nothing read yet when the process stops: 503 (Retry-After) instead of a 204 the client repeats at once."""
    record = service.create(owner="7", protocol="tus", length=10)
    shutdown.stop()
    with pytest.raises(errors.Stopping):
        service.append(record.id, "7", offset=0, stream=io.BytesIO(b"0123456789"), content_length=10)
    assert service.records.get(record.id).offset == 0
    assert service.records.lock_holder(record.id) is None


def test_a_body_that_is_all_here_is_counted_once_by_its_commit(
    service: UploadService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting while streaming stops short of the announced end: the commit counts the rest, in one advance."""
    data = payload(128 * 1024, seed=6)  # exactly TUSBRIDGE_PROGRESS_BYTES here
    record = service.create(owner="7", protocol="tus", length=10 * len(data))
    advances: list[int] = []
    advance = service.records.advance

    def counted(upload_id: str, **kwargs: object) -> object:
        advances.append(int(kwargs["new"]))  # type: ignore[call-overload]
        return advance(upload_id, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.records, "advance", counted)
    result = service.append(record.id, "7", offset=0, stream=io.BytesIO(data), content_length=len(data))
    assert result.record.offset == len(data)
    assert advances == [len(data)]
