"""Gunicorn workers SIGKILLed while they stream upload bodies, over both protocols.

Each client thread has its own gunicorn with 2 workers (one server with sync
workers, the others with the harness's default class, gunicorn's gevent worker where the
harness has it, as the README recommends for production), so a kill can only
ever hit the worker that serves that thread's request: before each kill the
test finds, through /proc, the worker that accepted its connection; gunicorn
starts a new worker in its place. The kill lands at a random point: right
after the headers, after a random part of the body (sometimes once the
worker has read all of it), or after the whole body (racing the commit and
the response).

After each kill the client resumes as a real one would: tus from the offset
HEAD reports, legacy by re-sending the chunk (a 400 "Offsets do not match"
names the server's offset) or by a HEAD over tus on the same id. At every
check:

- no acknowledged byte is lost: the offset never goes below the last offset
  the client was told;
- no unacknowledged byte is counted: the offset is either where it was before
  the killed request or that request's whole body further (a killed worker
  cannot commit part of a body), and the data file starts with exactly the
  source's first ``offset`` bytes;
- after the next acknowledged write the file is exactly the source prefix
  (whatever the dead worker wrote past the offset was cut off).

Every upload then finishes with the source's sha256 (legacy: the md5
completion is accepted). The dead worker's lock is removed by the next
request (its token names a process that is gone); it would otherwise expire
after TUSBRIDGE_LOCK_TTL (1.5 s here).

The figures (kills, uploads, bytes) are printed and, when
TUSBRIDGE_TEST_ARTIFACTS is set, written to ``faults-worker-kill.json`` there.
``make soak`` runs the long variant (marked ``soak``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from tests.support.data import md5, payload, sha256, upload_id_of
from tests.support.faults import (
    User,
    file_bytes,
    json_of,
    legacy_chunk,
    legacy_chunk_request,
    legacy_complete,
    login,
    manage,
    pid_gone,
    settled_offset,
    try_response,
    tus_create,
    tus_patch,
    tus_patch_request,
)
from tests.support.live import HAS_PROC_NET, RawRequest, RawResponse, listening_sockets, poll, record_of, wait_drained
from tests.support.servers import GunicornServer

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not HAS_PROC_NET, reason="finds the worker to kill through /proc"),
]

WORKERS = 2
SERVER_ENV = {
    # A dead worker's lock is removed by the next request on this machine; should
    # that ever fail, it lives this long and the next request waits it out.
    "TUSBRIDGE_TEST_LOCK_TTL": "1.5",
    "TUSBRIDGE_TEST_LOCK_WAIT": "5",
    # Small reads: a body is written in many pieces, so kills land between writes.
    "TUSBRIDGE_TEST_READ_SIZE": "65536",
}


@dataclass
class Tally:
    kills: int = 0
    kills_after_headers: int = 0
    kills_mid_body: int = 0
    kills_after_body: int = 0
    killed_requests_committed: int = 0  # the kill came after the commit
    killed_responses_received: int = 0  # ... and even after the response
    uploads_tus: int = 0
    uploads_legacy: int = 0
    bytes_uploaded: int = 0  # total size of the finished uploads, each checked by sha256
    bytes_sent: int = 0  # bytes put on the wire, re-sent ones included
    offset_checks: int = 0  # HEAD / legacy offset checks, each with a data-file prefix check
    bytes_lost: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def figures(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


@dataclass
class Plan:
    protocol: str  # "tus" or "legacy"
    size: int
    kills: int
    seed: int


class Uploader:
    """One client thread: uploads files to its own server, killing the worker that serves it."""

    def __init__(self, server: GunicornServer, user: User, tally: Tally, seed: int) -> None:
        self.server = server
        self.user = user
        self.tally = tally
        self.rng = random.Random(seed)
        # One shared socket, or one per worker with --reuse-port.
        self.listeners = listening_sockets(server.port)

    # The kill ---------------------------------------------------------------

    def kill_during(self, request: RawRequest, body: bytes, may_commit: bool = True) -> RawResponse | None:
        """Send part of ``body``, SIGKILL the worker reading it; its response if one got out.

        Only with ``may_commit`` is the whole body sent before the kill (the
        request may then commit, or even answer, before it dies).
        """
        pid = request.worker_pid(timeout=60)
        mode = self.rng.choices(["headers", "mid", "end"], weights=[1, 7, 2 if may_commit else 0])[0]
        sent = {"headers": 0, "mid": self.rng.randrange(1, max(2, len(body))), "end": len(body)}[mode]
        sent = min(sent, len(body))
        request.send(body[:sent])
        self.tally.add(bytes_sent=sent)
        if mode == "mid" and self.rng.random() < 0.5:
            wait_drained(self.server, request)  # the worker has these bytes; it writes them now
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0, 0.03))
        assert pid in self.server.worker_pids(), "the serving worker should still be alive"
        os.kill(pid, signal.SIGKILL)
        counter = {"headers": "kills_after_headers", "mid": "kills_mid_body", "end": "kills_after_body"}[mode]
        self.tally.add(kills=1, **{counter: 1})
        reply = try_response(request, timeout=10 if mode == "end" else 2)
        poll(lambda: pid_gone(pid), f"worker {pid} to die", timeout=30)
        self.wait_replaced(pid)
        if reply is not None:
            self.tally.add(killed_responses_received=1)
        return reply

    def wait_replaced(self, dead: int) -> None:
        """Until gunicorn has started the dead worker's replacement.

        With ``--reuse-port`` each worker listens on a socket of its own; while
        the set of sockets changes (one closes with the dead worker, the
        replacement opens one), the kernel may reset a connection that arrives
        (see the README's Production section). A client retries; this one waits
        for the new worker instead, so that its next request is never such a
        reset, whose outcome would be no test of tusbridge.
        """
        poll(
            lambda: (
                len([p for p in self.server.worker_pids() if p != dead]) >= WORKERS
                and listening_sockets(self.server.port) >= self.listeners
            ),
            f"gunicorn to replace worker {dead}",
            timeout=30,
        )

    # Checks -----------------------------------------------------------------

    def check_offset(
        self, upload_id: str, data: bytes, offset: int, before: int, body_len: int, acked: int | None
    ) -> None:
        """The offset after a killed request: all or nothing of it, never less than acknowledged."""
        assert offset >= before, f"acknowledged bytes lost: offset {offset} < last acknowledged {before}"
        if offset < before:
            self.tally.add(bytes_lost=before - offset)
        assert offset in (before, before + body_len), (
            f"a killed request counted part of its body: offset {offset}, before {before}, body {body_len}"
        )
        if acked is not None:
            assert offset == acked
        if offset == before + body_len:
            self.tally.add(killed_requests_committed=1)
        stored = file_bytes(self.server.upload_dir / upload_id)
        assert stored is not None and len(stored) >= offset
        assert stored[:offset] == data[:offset], "the data file does not start with the source prefix"
        assert int(record_of(self.server, upload_id)["offset"]) == offset
        self.tally.add(offset_checks=1)

    def check_exact(self, upload_id: str, data: bytes, offset: int) -> None:
        """After an acknowledged write the file is exactly the prefix (a dead worker's tail is gone)."""
        stored = file_bytes(self.server.upload_dir / upload_id)
        assert stored == data[:offset]

    # tus -----------------------------------------------------------------------

    def upload_tus(self, plan: Plan) -> None:
        data = payload(plan.size, plan.seed, kind="random")
        url = tus_create(self.server, self.user, len(data))
        upload_id = upload_id_of(url)
        kills_left = plan.kills
        acked = 0
        while acked < len(data):
            rest = len(data) - acked
            size = rest if self.rng.random() < 0.4 else min(rest, self.rng.randrange(150_000, 900_000))
            body = data[acked : acked + size]
            request = tus_patch_request(self.server, self.user, url, acked, len(body))
            if kills_left and (self.rng.random() < 0.7 or size == rest):
                # Only the last planned kill may let the final bytes commit, so every planned kill happens.
                may_commit = size < rest or kills_left == 1
                kills_left -= 1
                reply = self.kill_during(request, body, may_commit)
                told = None
                if reply is not None:
                    assert reply.status == 204, (reply.status, reply.body)
                    told = int(reply.headers["Upload-Offset"])
                offset = settled_offset(url, self.user, "HEAD after a kill")
                self.check_offset(upload_id, data, offset, acked, len(body), told)
                acked = offset
            else:
                self.tally.add(bytes_sent=len(body))
                reply = request.finish(body)
                assert reply.status == 204, (reply.status, reply.body)
                assert int(reply.headers["Upload-Offset"]) == acked + len(body)
                acked += len(body)
                self.check_exact(upload_id, data, acked)
        assert settled_offset(url, self.user) == len(data)
        rec = record_of(self.server, upload_id)
        assert rec["state"] == "complete" and rec["offset"] == str(len(data))
        assert sha256(file_bytes(self.server.upload_dir / upload_id) or b"") == sha256(data)
        # A PATCH repeated after completion changes nothing.
        assert tus_patch(self.server, self.user, url, len(data), b"").status == 204
        self.tally.add(uploads_tus=1, bytes_uploaded=len(data))

    # legacy ----------------------------------------------------------------------

    def legacy_send(self, upload_id: str, data: bytes, start: int, chunk: bytes) -> tuple[int, int]:
        """Send one chunk at ``start`` until it is not refused for a lock; (status, server offset)."""
        for _ in range(20):
            self.tally.add(bytes_sent=len(chunk))
            reply = legacy_chunk(self.server, self.user, upload_id, start, chunk, len(data))
            body = json_of(reply)
            if reply.status == 409:  # the dead worker's lock had not expired yet
                continue
            if reply.status == 200:
                return 200, int(body["offset"])
            assert reply.status == 400 and body.get("detail") == "Offsets do not match", (reply.status, body)
            return 400, int(body["offset"])
        raise AssertionError("the chunk stayed locked")

    def upload_legacy(self, plan: Plan) -> None:
        data = payload(plan.size, plan.seed, kind="random")
        chunk_size = self.rng.choice([131_072, 262_144, 393_216])
        first = data[:chunk_size]
        self.tally.add(bytes_sent=len(first))
        reply = legacy_chunk(self.server, self.user, None, 0, first, len(data))
        assert reply.status == 200, (reply.status, reply.body)
        upload_id = json_of(reply)["upload_id"]
        acked = json_of(reply)["offset"]
        assert acked == len(first)
        kills_left = plan.kills
        while acked < len(data):
            chunk = data[acked : acked + chunk_size]
            if kills_left and (self.rng.random() < 0.7 or acked + len(chunk) == len(data)):
                may_commit = acked + len(chunk) < len(data) or kills_left == 1
                kills_left -= 1
                request, body = legacy_chunk_request(self.server, self.user, upload_id, acked, chunk, len(data))
                reply = self.kill_during(request, body, may_commit)
                told = None
                if reply is not None:
                    assert reply.status == 200, (reply.status, reply.body)
                    told = int(json_of(reply)["offset"])
                # (The last chunk is only re-sent after the last kill: storing it ends the upload.)
                resend = self.rng.random() < 0.5 and (acked + len(chunk) < len(data) or not kills_left)
                if not resend:
                    # Ask over tus where the upload stands...
                    offset = settled_offset(f"{self.server.files_url}{upload_id}", self.user, "HEAD after a kill")
                    self.check_offset(upload_id, data, offset, acked, len(chunk), told)
                else:
                    # ...or send the chunk again, as jQuery-File-Upload's retry does.
                    status, offset = self.legacy_send(upload_id, data, acked, chunk)
                    if status == 400:  # the killed chunk had been stored: the server names the offset
                        self.check_offset(upload_id, data, offset, acked, len(chunk), told)
                    else:  # the killed chunk had not counted; the re-sent one did
                        assert told is None
                        assert offset == acked + len(chunk)
                        self.check_exact(upload_id, data, offset)
                        self.tally.add(offset_checks=1)
                acked = offset
            else:
                status, offset = self.legacy_send(upload_id, data, acked, chunk)
                assert (status, offset) == (200, acked + len(chunk))
                acked = offset
                self.check_exact(upload_id, data, acked)
        done = legacy_complete(self.server, self.user, upload_id, md5(data))
        assert done.status_code == 200, (done.status_code, done.text)
        rec = record_of(self.server, upload_id)
        assert rec["state"] == "complete" and rec["offset"] == str(len(data))
        assert sha256(file_bytes(self.server.upload_dir / upload_id) or b"") == sha256(data)
        self.tally.add(uploads_legacy=1, bytes_uploaded=len(data))

    def run(self, plans: list[Plan], failed: threading.Event) -> None:
        try:
            for plan in plans:
                if failed.is_set():
                    return  # another thread failed: its error is the one to report
                (self.upload_tus if plan.protocol == "tus" else self.upload_legacy)(plan)
        except BaseException:
            failed.set()
            raise


def make_plans(count: int, kills_per_upload: tuple[int, int], max_size: int, seed: int) -> list[Plan]:
    rng = random.Random(seed)
    return [
        Plan(
            protocol="tus" if i % 2 == 0 else "legacy",
            size=rng.randrange(max_size // 2, max_size),
            kills=rng.randint(*kills_per_upload),
            seed=seed * 1000 + i,
        )
        for i in range(count)
    ]


def run_campaign(
    factory: Callable[..., GunicornServer], monkeypatch: pytest.MonkeyPatch, threads: int, plans: list[Plan], seed: int
) -> Tally:
    tally = Tally()
    servers = []
    for i in range(threads):
        with monkeypatch.context() as env:
            if i == 0:
                env.setenv("TUSBRIDGE_TEST_WORKER_CLASS", "sync")
            servers.append(factory(SERVER_ENV, workers=WORKERS))
    uploaders = [Uploader(s, login(s, f"killer-{i}"), tally, seed + i) for i, s in enumerate(servers)]
    shares = [plans[i::threads] for i in range(threads)]
    failed = threading.Event()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(u.run, share, failed) for u, share in zip(uploaders, shares, strict=True)]
        for future in futures:
            future.result(timeout=1800)
    for server in servers:
        # gunicorn replaced every killed worker; the servers still serve.
        assert server.running
        assert len(server.worker_pids()) >= 1
        server.stop()
    return tally


def report(tally: Tally, name: str, seed: int) -> None:
    figures = {"seed": seed, **tally.figures()}
    print(f"\n{name}: {json.dumps(figures)}")
    artifacts = os.environ.get("TUSBRIDGE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        (Path(artifacts) / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


def campaign_seed() -> int:
    """A fresh seed per run (printed, and settable with TUSBRIDGE_TEST_FAULT_SEED to replay one)."""
    value = os.environ.get("TUSBRIDGE_TEST_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 1_000_000)


def test_workers_killed_mid_write_lose_no_acknowledged_byte(
    gunicorn_factory: Callable[..., GunicornServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 uploads (5 tus, 5 legacy) with 3-4 worker kills each: at least 30 kills, every file exact."""
    seed = campaign_seed()
    print(f"\nseed {seed} (TUSBRIDGE_TEST_FAULT_SEED={seed} replays it)")
    plans = make_plans(10, (3, 4), 2_000_000, seed)
    tally = run_campaign(gunicorn_factory, monkeypatch, 2, plans, seed)
    report(tally, "faults-worker-kill", seed)
    assert tally.kills == sum(plan.kills for plan in plans) >= 30
    assert tally.kills_mid_body >= 10
    assert tally.uploads_tus == 5 and tally.uploads_legacy == 5
    assert tally.bytes_lost == 0


@pytest.mark.soak
def test_soak_workers_killed_mid_write(
    gunicorn_factory: Callable[..., GunicornServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The long run: 60 uploads of up to 8 MB, 3-6 kills each, three client threads."""
    seed = campaign_seed()
    print(f"\nseed {seed} (TUSBRIDGE_TEST_FAULT_SEED={seed} replays it)")
    plans = make_plans(60, (3, 6), 8_000_000, seed)
    tally = run_campaign(gunicorn_factory, monkeypatch, 3, plans, seed)
    report(tally, "faults-worker-kill-soak", seed)
    assert tally.kills == sum(plan.kills for plan in plans) >= 180
    assert tally.uploads_tus + tally.uploads_legacy == 60
    assert tally.bytes_lost == 0


def test_worker_killed_during_a_first_legacy_chunk_leaves_nothing_after_cleanup(
    gunicorn_factory: Callable[..., GunicornServer],
) -> None:
    """A worker killed while a new legacy upload's first chunk streams in: the client never got an
    upload_id, so nobody can resume it. Whatever that request left on disk is unreachable; once the
    upload would have expired, ``manage.py tusbridge_cleanup`` must not leave it there forever."""
    server = gunicorn_factory({**SERVER_ENV, "TUSBRIDGE_TEST_EXPIRY_SECONDS": "1"})
    user = login(server, "first-chunk-killed")
    data = payload(600_000, 7, kind="random")
    request, body = legacy_chunk_request(server, user, None, 0, data, len(data))
    pid = request.worker_pid(timeout=60)
    request.send(body[: len(body) // 2])
    wait_drained(server, request)  # the worker is writing the chunk into a new data file
    os.kill(pid, signal.SIGKILL)
    request.close()
    poll(lambda: pid_gone(pid), f"worker {pid} to die", timeout=30)
    left = sorted(p.name for p in server.upload_dir.iterdir())
    assert left, "the killed first chunk should have begun a data file (else this test tests nothing)"

    time.sleep(1.5)  # past TUSBRIDGE_EXPIRY (1 s)
    done = manage(server, "tusbridge_cleanup")
    assert done.returncode == 0, done.stderr
    remaining = sorted(p.name for p in server.upload_dir.iterdir())
    assert remaining == [], f"files no record points at survive cleanup: {remaining} (cleanup said {done.stdout!r})"
