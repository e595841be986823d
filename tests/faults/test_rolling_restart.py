"""A graceful reload (HUP) and workers stopped one by one (SIGTERM) while tus PATCHes stream: nothing lost.

gunicorn runs with ``-c python:tusbridge.gunicorn.config`` (2 gevent workers),
as the README's deployment does. Ten clients, written by hand on raw sockets
with a small send buffer, each send their upload as ONE PATCH trickled slowly
(64 KiB every 80 ms). Then the master gets SIGHUP (it starts new workers and
TERMs the old ones), and once the new workers serve the PATCHes, each of them
gets SIGTERM in turn. A worker told to stop ends its PATCHes at their next
piece: what arrived counts, the lock goes back, the client gets 204 with the
offset reached. Each client then asks HEAD and resumes with a new PATCH from
the HEAD offset, as a tus client does.

Checked:

- every 204's Upload-Offset equals the next HEAD's offset (nothing lost or
  counted twice between the stop and the resumption), and every stopped
  PATCH got its 204 (none just lost its connection);
- offsets never go backwards;
- the stops really happened mid-body: the 10 PATCHes in flight at the reload
  and at least one per TERMed worker ended early with 204, having stored part
  of their body (a worker is stopped only while it serves a PATCH that has
  streamed for half a second). A stopping gevent worker still accepts
  connections for up to a second (it looks at its flag once a second), and a
  PATCH that it accepts then, before it reads a byte, is answered 503 with
  Retry-After at an unchanged offset: those are counted apart;
- every upload finishes with the source's sha256.

Once the last worker has been stopped, the clients send the rest at full
speed (no timing matters for the result). The figures are printed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from tests.support.data import payload, sha256, upload_id_of
from tests.support.faults import User, file_bytes, login, pid_gone, tus_create, tus_head
from tests.support.live import (
    HAS_PROC_NET,
    OFFSET_CT,
    RawRequest,
    accepted_inode,
    path_of,
    poll,
    record_of,
    trickle,
    worker_of_inode,
)
from tests.support.servers import GunicornServer, RedisServer

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not HAS_PROC_NET, reason="finds the workers serving the PATCHes through /proc"),
]

UPLOADS = 10
SIZE = 32 * 1024 * 1024
PIECE = 64 * 1024
PAUSE = 0.08  # 64 KiB every 80 ms: 800 KiB/s per upload, 40 s for a whole file at that pace
#: A client whose upload nears its end before the storm is over holds its last piece back (silent);
#: the server waits that long for a silent body.
SERVER_ENV = {"TUSBRIDGE_TEST_IDLE_TIMEOUT": "600"}
SEND_BUFFER = 64 * 1024
GUNICORN_ARGS = ["-c", "python:tusbridge.gunicorn.config"]
#: A worker is stopped only while it serves a PATCH that has streamed that long (has bytes to count).
STREAMING = 0.5


@dataclass
class PatchEnd:
    """One PATCH as the client saw it end."""

    start: int
    end: int  # where its body would have ended
    told: int | None  # the 204's Upload-Offset; None when the connection ended without an answer
    head: int  # the offset HEAD answered next
    sent_away: bool = False  # answered 503 (the worker was stopping before it read a byte)


@dataclass
class Client:
    """One upload sent as one trickled PATCH, resumed from HEAD whenever a PATCH ends early."""

    server: GunicornServer
    user: User
    seed: int
    hurry: threading.Event
    data: bytes = b""
    url: str = ""
    ends: list[PatchEnd] = field(default_factory=list)
    current_port: int | None = None  # local port of the PATCH in flight
    current_since: float = 0.0  # when it started (time.monotonic())
    error: BaseException | None = None

    def worker(self, streaming_for: float = 0.0) -> int | None:
        """The worker serving this client's PATCH now, if one accepted it (and it started that long ago)."""
        port = self.current_port
        if port is None or time.monotonic() - self.current_since < streaming_for:
            return None
        inode = accepted_inode(self.server.port, port)
        return None if inode is None else worker_of_inode(self.server, inode)

    def run(self) -> None:
        try:
            self.upload()
        except BaseException as exc:
            self.error = exc

    def upload(self) -> None:
        self.data = payload(SIZE, self.seed, kind="random")
        self.url = tus_create(self.server, self.user, SIZE)
        offset = 0
        while offset < SIZE:
            headers = self.user.tus(
                **{"Content-Type": OFFSET_CT, "Upload-Offset": str(offset), "Content-Length": str(SIZE - offset)}
            )
            request = RawRequest(self.server, "PATCH", path_of(self.url), headers, send_buffer=SEND_BUFFER)
            self.current_since = time.monotonic()
            self.current_port = request.client_port
            ended = trickle(
                request, self.data[offset:], piece=PIECE, pause=PAUSE, hurry=self.hurry, hold_last=self.hurry
            )
            self.current_port = None
            head = tus_head(self.url, self.user)
            assert head.status_code == 200, ("HEAD after a PATCH", head.status_code, head.text)
            now = int(head.headers["Upload-Offset"])
            reply = ended.response
            told = None
            sent_away = reply is not None and reply.status == 503
            if sent_away:
                assert reply.headers["Retry-After"] and now == offset, (reply.body, offset, now)
                told = offset
            elif reply is not None:
                assert reply.status == 204, (reply.status, reply.body)
                told = int(reply.headers["Upload-Offset"])
            self.ends.append(PatchEnd(offset, SIZE, told, now, sent_away))
            assert told is None or told == now, f"the PATCH answered offset {told}, the next HEAD {now}"
            assert now >= offset, f"the offset went backwards: {offset} -> {now}"
            offset = now


def serving(clients: list[Client]) -> dict[int, int]:
    """Worker pid -> how many clients' PATCHes it serves now, among those streaming for STREAMING s at least."""
    counts: dict[int, int] = {}
    for client in clients:
        pid = client.worker(streaming_for=STREAMING)
        if pid is not None:
            counts[pid] = counts.get(pid, 0) + 1
    return counts


def wait_workers(server: GunicornServer, gone: set[int], count: int = 2) -> list[int]:
    """Until the workers in ``gone`` have exited and ``count`` others run; their pids."""

    def ready() -> list[int] | None:
        alive = [pid for pid in server.worker_pids() if not pid_gone(pid)]
        if any(pid in alive for pid in gone) or len(alive) < count:
            return None
        return alive

    return poll(ready, f"gunicorn to replace workers {sorted(gone)}", timeout=90, interval=0.1)


def test_reload_and_stopped_workers_lose_nothing(
    server_factory: Callable[..., GunicornServer], redis_server: RedisServer
) -> None:
    server = server_factory(redis_server, SERVER_ENV, extra_args=GUNICORN_ARGS)
    hurry = threading.Event()
    clients = [Client(server, login(server, f"rolling-{i}"), seed=100 + i, hurry=hurry) for i in range(UPLOADS)]
    threads = [threading.Thread(target=c.run, name=f"client-{i}", daemon=True) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    stopped: list[tuple[str, int, int]] = []  # (signal, worker, PATCHes it served)
    try:
        # Every client's PATCH is streaming into one of the first workers.
        first = set(server.worker_pids())
        poll(
            lambda: sum(n for pid, n in serving(clients).items() if pid in first) == UPLOADS,
            "every PATCH to stream into a worker",
            timeout=60,
            interval=0.1,
        )
        stopped.append(("HUP", 0, UPLOADS))
        storm_started = time.monotonic()
        os.kill(server.pid, signal.SIGHUP)
        new_workers = wait_workers(server, first)

        # Then each new worker, one after the other, gets SIGTERM while it serves PATCHes.
        for pid in new_workers:
            served = poll(
                lambda pid=pid: serving(clients).get(pid),
                f"worker {pid} to serve a PATCH",
                timeout=90,
                interval=0.1,
            )
            stopped.append(("TERM", pid, served))
            os.kill(pid, signal.SIGTERM)
            wait_workers(server, {pid})
        storm = time.monotonic() - storm_started
    finally:
        hurry.set()
        for thread in threads:
            thread.join(300)
    for client in clients:
        if client.error is not None:
            raise client.error
    assert not any(thread.is_alive() for thread in threads), "a client did not finish"

    ends = [end for client in clients for end in client.ends]
    early = [end for end in ends if end.told is not None and end.told < end.end and not end.sent_away]
    mid_body = [end for end in early if end.told is not None and end.told > end.start]
    sent_away = [end for end in ends if end.sent_away]
    unanswered = [end for end in ends if end.told is None]
    print(f"\nstops (signal, worker, PATCHes it served): {stopped}, from the HUP to the last worker up: {storm:.1f} s")
    print(
        f"PATCHes: {len(ends)}, ended early with 204: {len(early)} (having stored part of their body: "
        f"{len(mid_body)}, none: {len(early) - len(mid_body)}), sent away with 503: {len(sent_away)}, "
        f"ended without an answer: {len(unanswered)}"
    )
    for i, client in enumerate(clients):
        print(f"  upload {i}: " + ", ".join(f"{e.start}->{e.head}" for e in client.ends))

    for client in clients:
        upload_id = upload_id_of(client.url)
        heads = [end.head for end in client.ends]
        assert heads == sorted(heads), f"offsets went backwards: {heads}"
        assert heads[-1] == SIZE
        record = record_of(server, upload_id)
        assert record["state"] == "complete" and record["offset"] == str(SIZE)
        assert sha256(file_bytes(server.upload_dir / upload_id) or b"") == sha256(client.data)

    # The stops happened mid-body: the 10 PATCHes at the reload, and at least one per TERMed worker.
    assert len(mid_body) >= UPLOADS + len(stopped) - 1, mid_body
    assert not unanswered, f"PATCHes stopped by a signal without their 204: {unanswered}"
