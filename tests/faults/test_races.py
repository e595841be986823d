"""Many clients on one upload at once, both protocols mixed, against a live gunicorn (4 workers).

Threads send tus PATCHes, HEADs, legacy chunks and legacy completions (and
in one test a DELETE) at the same upload, each from the offset it last
heard, as impatient or duplicated clients do. Throughout:

- the data file never holds interleaved bytes: whenever the record says
  ``offset`` bytes are stored, the file starts with the source's first
  ``offset`` bytes;
- no request gets a 5xx;
- completion happens exactly once: the finished file is handed to a
  Storage (``tests.support.live.LiveStorage``) once, holding the source's
  bytes, and ``completed_at`` never changes afterwards;
- a DELETE that wins leaves no data file and no ``.info`` behind once every
  request has finished, whatever was in flight.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_complete,
    login,
    send_and_answer,
    try_response,
    tus_create,
    tus_head,
    tus_patch,
    tus_patch_request,
)
from tests.support.live import HAS_PROC_NET, RawResponse, record_of, wait_drained
from tests.support.servers import GunicornServer

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def stored_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("race-storage")


@pytest.fixture(scope="module")
def server(gunicorn_factory: Callable[..., GunicornServer], stored_dir: Path) -> GunicornServer:
    return gunicorn_factory(
        {
            "TUSBRIDGE_TEST_STORAGE": "tests.support.live.LiveStorage",
            "TUSBRIDGE_LIVE_STORAGE_DIR": str(stored_dir),
            "TUSBRIDGE_TEST_LOCK_WAIT": "1",
            "TUSBRIDGE_TEST_READ_SIZE": "65536",
        },
        workers=4,
    )


def handed_over(stored_dir: Path, upload_id: str) -> list[Path]:
    return sorted(p for p in stored_dir.rglob("*") if p.is_file() and upload_id in p.parts)


@dataclass
class Race:
    server: GunicornServer
    user: User
    upload_id: str
    data: bytes
    deadline: float
    statuses: list[tuple[str, int]] = field(default_factory=list)
    prefix_checks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{self.server.files_url}{self.upload_id}"

    def note(self, what: str, status: int) -> None:
        with self.lock:
            self.statuses.append((what, status))

    def check_prefix(self) -> None:
        """What the record counts is in the file, in order (read the record first: the file only grows past it)."""
        rec = record_of(self.server, self.upload_id)
        if not rec or rec.get("state") != "uploading":
            return
        offset = int(rec["offset"])
        stored = file_bytes(self.server.upload_dir / self.upload_id)
        if stored is None:
            return  # deleted meanwhile
        assert len(stored) >= offset and stored[:offset] == self.data[:offset], "interleaved or lost bytes"
        with self.lock:
            self.prefix_checks += 1

    def offset(self) -> tuple[int, int | None]:
        response = tus_head(self.url, self.user, timeout=30)
        self.note("HEAD", response.status_code)
        offset = int(response.headers["Upload-Offset"]) if response.status_code == 200 else None
        return response.status_code, offset

    def client(self, seed: int, allow_delete: bool) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.deadline:
            status, offset = self.offset()
            if offset is None:
                if status in (404, 410):
                    return  # deleted
                continue
            action = rng.choice(["patch", "patch", "legacy", "complete", "head"] + (["delete"] if allow_delete else []))
            size = rng.randrange(1, 200_000)
            piece = self.data[offset : offset + size]
            if action == "patch":
                reply = tus_patch(self.server, self.user, self.url, offset, piece)
                self.note("PATCH", reply.status)
            elif action == "legacy":
                if not piece:
                    continue
                reply = legacy_chunk(self.server, self.user, self.upload_id, offset, piece, len(self.data))
                self.note("legacy chunk", reply.status)
            elif action == "complete":
                response = legacy_complete(self.server, self.user, self.upload_id, md5(self.data))
                self.note("legacy completion", response.status_code)
            elif action == "delete":
                response = requests.delete(self.url, headers=self.user.tus(), timeout=30)
                self.note("DELETE", response.status_code)
            self.check_prefix()
            if record_of(self.server, self.upload_id).get("state") in ("complete", "terminated", None):
                return


def run_race(race: Race, clients: int, allow_delete: bool, seed: int) -> None:
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(race.client, seed + i, allow_delete and i == 0) for i in range(clients)]
        for future in futures:
            future.result(timeout=300)


def assert_no_server_errors(race: Race) -> None:
    errors = [(what, status) for what, status in race.statuses if status >= 500]
    assert not errors, f"server errors during the race: {errors}"


@pytest.mark.parametrize("round_", range(3))
def test_mixed_clients_on_one_upload_complete_it_once_with_exact_bytes(
    server: GunicornServer, stored_dir: Path, round_: int
) -> None:
    user = login(server, f"racer-{round_}")
    data = payload(1_500_000, 100 + round_, kind="random")
    if round_ % 2:
        first = legacy_chunk(server, user, None, 0, data[:50_000], len(data))  # begun legacy
        assert first.status == 200, first.body
        upload_id = json_of(first)["upload_id"]
    else:
        upload_id = upload_id_of(tus_create(server, user, len(data)))  # begun with tus
    race = Race(server, user, upload_id, data, deadline=time.monotonic() + 120)
    run_race(race, clients=8, allow_delete=False, seed=round_ * 100)
    assert_no_server_errors(race)

    # Whatever the race left to do, a client finishes: legacy completion if all bytes are in.
    rec = record_of(server, upload_id)
    if rec["state"] == "uploading":
        assert rec["offset"] == str(len(data)), rec
        assert legacy_complete(server, user, upload_id, md5(data)).status_code == 200
    rec = record_of(server, upload_id)
    assert rec["state"] == "complete" and rec["offset"] == str(len(data))
    files = handed_over(stored_dir, upload_id)
    assert len(files) == 1, f"completion ran {len(files)} times: {files}"
    assert sha256(files[0].read_bytes()) == sha256(data)
    assert not (server.upload_dir / upload_id).exists()

    # Late requests of every kind do not complete it again.
    completed_at = rec["completed_at"]
    assert legacy_complete(server, user, upload_id, md5(data)).status_code == 400
    assert tus_patch(server, user, f"{server.files_url}{upload_id}", len(data), b"").status == 204
    assert record_of(server, upload_id)["completed_at"] == completed_at
    assert len(handed_over(stored_dir, upload_id)) == 1
    print(f"\nround {round_}: {len(race.statuses)} requests, {race.prefix_checks} prefix checks")


@pytest.mark.parametrize("round_", range(2))
def test_delete_among_racing_clients_leaves_nothing_behind(
    server: GunicornServer, stored_dir: Path, round_: int
) -> None:
    user = login(server, f"deleter-{round_}")
    data = payload(3_000_000, 200 + round_, kind="random")
    upload_id = upload_id_of(tus_create(server, user, len(data)))
    race = Race(server, user, upload_id, data, deadline=time.monotonic() + 120)
    run_race(race, clients=6, allow_delete=True, seed=1000 + round_)
    assert_no_server_errors(race)
    rec = record_of(server, upload_id)
    if rec.get("state") == "terminated" or not rec:
        assert not (server.upload_dir / upload_id).exists()
        assert not (server.upload_dir / f"{upload_id}.info").exists()
    else:
        # Completed before the DELETE thread drew its card: the file was handed over exactly once.
        assert rec["state"] == "complete"
        assert len(handed_over(stored_dir, upload_id)) == 1


def stream_slowly(request, body: bytes) -> None:
    """The rest of a body in 64 KiB pieces, 20 ms apart (until the server stops reading)."""
    request.sock.settimeout(30)
    try:
        for at in range(0, len(body), 65536):
            request.sock.sendall(body[at : at + 65536])
            time.sleep(0.02)
    except OSError:
        pass  # the server let go of the upload and answered


@pytest.mark.skipif(not HAS_PROC_NET, reason="waits for the worker to read the body through /proc")
@pytest.mark.parametrize("mode", ["silent", "slow", "full-speed"])
def test_delete_during_a_patch_leaves_no_file_once_both_finish(
    server: GunicornServer, stored_dir: Path, mode: str
) -> None:
    """A DELETE while a PATCH body is in flight; once both are answered nothing is left behind.

    silent / slow: the PATCH hears the DELETE, keeps what it stored and lets go; the DELETE wins.
    full-speed: the PATCH may store its last byte first; then the upload completes (handed over
    exactly once) before the DELETE removes what is left. Either way: no 5xx, no file left.
    """
    user = login(server, f"delete-mid-patch-{mode}")
    data = payload(2_000_000, 300 + len(mode), kind="random")
    url = tus_create(server, user, len(data))
    upload_id = upload_id_of(url)
    assert tus_patch(server, user, url, 0, data[:100_000]).status == 204

    request = tus_patch_request(server, user, url, 100_000, len(data) - 100_000)
    request.send(data[100_000:700_000])
    wait_drained(server, request)
    outcome: dict[str, object] = {}

    def finish_patch() -> None:
        if mode == "slow":
            stream_slowly(request, data[700_000:])
            outcome["reply"] = try_response(request, 30)
        else:
            outcome["reply"] = send_and_answer(request, data[700_000:])

    rest = threading.Thread(target=finish_patch)
    if mode != "silent":
        rest.start()  # the body keeps coming while the DELETE arrives
    deleted = requests.delete(url, headers=user.tus(), timeout=30)
    if mode == "silent":
        rest.start()  # the silent client wakes up after the DELETE was answered
    rest.join(60)
    reply = outcome.get("reply")
    assert deleted.status_code == 204, (deleted.status_code, deleted.text)
    assert isinstance(reply, RawResponse), "the PATCH got no answer"
    assert reply.status in (204, 404, 409, 410), (reply.status, reply.body[:300])

    assert not (server.upload_dir / upload_id).exists()
    assert not (server.upload_dir / f"{upload_id}.info").exists()
    assert record_of(server, upload_id)["state"] == "terminated"
    assert tus_head(url, user).status_code == 410
    assert tus_patch(server, user, url, int(reply.headers.get("Upload-Offset") or 100_000), b"x").status == 410
    assert not (server.upload_dir / upload_id).exists()
    files = handed_over(stored_dir, upload_id)
    if reply.status == 204 and reply.headers["Upload-Offset"] == str(len(data)):
        assert len(files) == 1 and sha256(files[0].read_bytes()) == sha256(data)
    else:
        assert files == []
    if mode != "full-speed":
        assert reply.status != 204 or int(reply.headers["Upload-Offset"]) < len(data)
