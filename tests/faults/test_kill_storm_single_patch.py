"""tus-js-client sends each file as ONE PATCH through a slow link; workers are SIGKILLed at random moments.

tus-js-client's default chunk size sends the whole file in one PATCH. Before
tusbridge counted a body while it streamed, a worker killed during that PATCH
lost all of it: the client started the body over from the upload's first
offset, and a slow client behind a flaky deployment never got anywhere.
Now the offset advances every TUSBRIDGE_PROGRESS_INTERVAL (0.5 s here) while
the body streams, so a kill loses at most that much.

The link is :class:`SlowProxy`: it forwards client->server at ``RATE`` bytes a
second per connection and counts the body bytes of each PATCH it forwarded.
Three tus-js-client uploads (Node, as tests/live/test_tus_js_client.py runs
it, with retries) go through it at once. At random moments the test finds,
through /proc, the worker serving one of the PATCHes and SIGKILLs it. Just
before the kill it reads, for every PATCH that worker serves, the bytes the
proxy forwarded and the bytes still in the kernel between proxy and worker
(the proxy's send queue, the worker's receive queue; the proxy's server side
has small socket buffers to keep them small). After each kill the upload's
offset in its Redis record must be at least::

    PATCH's Upload-Offset + forwarded - in the kernel - RATE * PROGRESS_INTERVAL - READ_SIZE - slack

(a worker stores what it read in pieces of at most READ_SIZE, and counts at
least once per interval; the slack, a quarter second at the link's rate,
covers the bytes that arrive while the request is set up, before its first
interval starts). Without counting while streaming, a kill would lose the
whole PATCH so far; the test makes sure that some kills came late enough for
that to fail the bound. Every upload finishes with the source's sha256,
none is created twice, and no upload starts over: an offset never goes back
(so never to 0 once above it), and every PATCH after a kill starts at the
offset counted before it. The kills and the largest gap between what the
worker had received and what it had counted are printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.support.data import file_sha256, upload_id_of
from tests.support.faults import pid_gone
from tests.support.live import (
    HAS_PROC_NET,
    accepted_inode,
    cookie_header,
    in_flight_all,
    poll,
    record_of,
    worker_of_inode,
)
from tests.support.servers import GunicornServer

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not HAS_PROC_NET, reason="finds the worker to kill and the kernel's queues through /proc"),
]

KIB = 1024
MIB = 1024 * KIB
RATE = 384 * KIB  # bytes per second, per connection
PROGRESS_INTERVAL = 0.5
READ_SIZE = 64 * KIB
UPSTREAM_BUFFER = 16 * KIB  # the proxy's socket buffers towards the server
UPLOADS = 3
SIZE = 5 * MIB
SERVER_ENV = {
    "TUSBRIDGE_TEST_PROGRESS_INTERVAL": str(PROGRESS_INTERVAL),
    "TUSBRIDGE_TEST_READ_SIZE": str(READ_SIZE),
    # A dead worker's lock is removed by the next request (its token names a process that is gone).
    "TUSBRIDGE_TEST_LOCK_WAIT": "5",
}
MAX_KILLS = 15
#: What a kill may cost beyond the kernel's queues: one progress interval at the link's rate, the
#: piece being stored (READ_SIZE), and a quarter second's worth of bytes that reach the worker while
#: the request is set up (login, lock: the interval runs from there) or while a count is sent.
SETUP_SLACK = 0.25
ALLOWED_GAP = int(RATE * (PROGRESS_INTERVAL + SETUP_SLACK)) + READ_SIZE


@dataclass
class Link:
    """One client connection through the proxy, and the request it is forwarding now."""

    upstream_port: int
    method: str = ""
    path: str = ""
    upload_offset: int | None = None  # the request's Upload-Offset
    body_forwarded: int = 0  # body bytes of the current request handed to the kernel
    body_left: int = 0
    closed: bool = False

    @property
    def patching(self) -> bool:
        return not self.closed and self.method == "PATCH" and self.body_left > 0


@dataclass
class SlowProxy:
    """A TCP proxy to the server that forwards requests at ``rate`` bytes/s per connection.

    It follows request heads and bodies (``Content-Length``) to know, per
    connection, which PATCH it forwards, from which Upload-Offset, and how much
    of its body it has forwarded. Responses are copied as they come. When either
    side closes, both do. The client sends the proxy's Host, so the server's
    Location URLs name the proxy.
    """

    upstream_port: int
    rate: int
    links: list[Link] = field(default_factory=list)
    patches: list[tuple[str, int]] = field(default_factory=list)  # (path, Upload-Offset), in order
    posts: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.open = threading.Event()  # cleared: new requests wait (bodies in flight go on)
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def holding(self) -> Iterator[None]:
        """New requests wait meanwhile (a client's retry cannot move an offset the test is reading)."""
        self.open.clear()
        try:
            yield
        finally:
            self.open.set()

    def close(self) -> None:
        self.stopped.set()
        self.open.set()
        self.listener.close()
        with self.lock:
            for sock in self.sockets:
                _drop(sock)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Small buffers before connecting: little of what was forwarded can wait in the kernel.
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UPSTREAM_BUFFER)
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_BUFFER)
            try:
                upstream.connect(("127.0.0.1", self.upstream_port))
            except OSError:
                _drop(client)
                continue
            link = Link(int(upstream.getsockname()[1]))
            with self.lock:
                self.sockets += [client, upstream]
                self.links.append(link)
            threading.Thread(target=self._requests, args=(client, upstream, link), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, link), daemon=True).start()

    def _responses(self, upstream: socket.socket, client: socket.socket, link: Link) -> None:
        try:
            while data := upstream.recv(64 * KIB):
                client.sendall(data)
        except OSError:
            pass
        link.closed = True
        _drop(client)
        _drop(upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket, link: Link) -> None:
        pending = b""  # a request head seen so far
        piece = 8 * KIB
        try:
            while data := client.recv(64 * KIB):
                while data:
                    if link.body_left:
                        # The body, at the link's rate.
                        take = data[: min(piece, link.body_left)]
                        upstream.sendall(take)
                        with self.lock:
                            link.body_forwarded += len(take)
                            link.body_left -= len(take)
                        data = data[len(take) :]
                        time.sleep(len(take) / self.rate)
                        continue
                    pending += data
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        data = b""
                        continue
                    head, data, pending = pending[: end + 4], pending[end + 4 :], b""
                    self.open.wait()
                    self._start_request(link, head)
                    upstream.sendall(head)
        except OSError:
            pass
        link.closed = True
        _drop(client)
        _drop(upstream)

    def _start_request(self, link: Link, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        method, path = lines[0].split(" ")[:2]
        offset = fields.get("upload-offset")
        with self.lock:
            link.method, link.path = method, path
            link.upload_offset = None if offset is None else int(offset)
            link.body_forwarded = 0
            link.body_left = int(fields.get("content-length", "0"))
            if method == "PATCH":
                self.patches.append((path, int(offset or 0)))
            if method == "POST":
                self.posts += 1


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@dataclass
class Check:
    """One PATCH's figures at a kill of the worker serving it."""

    upload_id: str
    start: int  # its Upload-Offset
    forwarded: int  # body bytes the proxy had forwarded
    queued: int  # of those, bytes still in the kernel (proxy send queue + worker receive queue)
    patches_before: int  # PATCHes the proxy had seen before the kill
    offset: int  # the record's offset after the kill

    @property
    def received(self) -> int:
        """Where the body stood in the worker's hands at the kill, at least."""
        return self.start + self.forwarded - self.queued

    @property
    def gap(self) -> int:
        """Bytes the worker had received but not counted (at most)."""
        return self.received - self.offset


def worker_serving(server: GunicornServer, link: Link) -> int | None:
    inode = accepted_inode(server.port, link.upstream_port)
    return None if inode is None else worker_of_inode(server, inode)


def kill_storm(
    server: GunicornServer, proxy: SlowProxy, running: Callable[[], bool], rng: random.Random
) -> tuple[int, list[Check]]:
    """Kill the worker of a random PATCH in flight, again and again, while the uploads run; (kills, checks)."""
    kills = 0
    checks: list[Check] = []
    while running() and kills < MAX_KILLS:
        time.sleep(rng.uniform(0.3, 1.5))
        with proxy.lock:
            candidates = [link for link in proxy.links if link.patching]
        if not candidates:
            continue
        pid = worker_serving(server, rng.choice(candidates))
        if pid is None:
            continue
        served = [link for link in candidates if worker_serving(server, link) == pid]
        with proxy.holding():
            # The forwarded counts first, then the kernel's queues: whatever moves in
            # between only makes the bound looser. Then at once the kill.
            with proxy.lock:
                patches_before = len(proxy.patches)
                figures = [(link, link.path, link.upload_offset or 0, link.body_forwarded) for link in served]
            queued = in_flight_all(server.port, [link.upstream_port for link in served])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            kills += 1
            poll(lambda pid=pid: pid_gone(pid), f"worker {pid} to die", timeout=30)
            for link, path, start, forwarded in figures:
                if link.upstream_port not in queued:  # the PATCH had ended before the kill
                    continue
                upload_id = path.rstrip("/").rsplit("/", 1)[1]
                offset = int(record_of(server, upload_id)["offset"])
                checks.append(Check(upload_id, start, forwarded, queued[link.upstream_port], patches_before, offset))
        # Not too far ahead of gunicorn: the next kill waits for a replacement.
        poll(
            lambda pid=pid: len([p for p in server.worker_pids() if p != pid and not pid_gone(p)]) >= 2,
            "gunicorn to replace the killed worker",
            timeout=60,
            interval=0.1,
        )
    return kills, checks


def start_upload(project: Path, proxy: SlowProxy, session: requests.Session, source: Path) -> subprocess.Popen:
    options = {
        "endpoint": f"{proxy.url}/files/",
        "file": str(source),
        "source": "buffer",  # tus-js-client reads a stream only with a finite chunkSize
        "headers": {"Cookie": cookie_header(session)},
        "metadata": {"filename": source.name},
        "retryDelays": [200, 500, 1000] + [2000] * 30,
    }
    process = subprocess.Popen(
        ["node", str(project / "upload.js")],
        cwd=project,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(options))
    process.stdin.close()
    return process


def test_single_patch_uploads_keep_their_progress_through_worker_kills(
    tus_js_client: Path,
    gunicorn_factory: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    server = gunicorn_factory(SERVER_ENV)
    session = server.login("kill-storm")
    proxy = SlowProxy(server.port, RATE)
    seed = random.SystemRandom().randrange(1, 1_000_000)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    sources = []
    for i in range(UPLOADS):
        source = tmp_path / f"source-{i}.bin"
        source.write_bytes(random.Random(seed + i).randbytes(SIZE))
        sources.append(source)
    try:
        processes = [start_upload(tus_js_client, proxy, session, source) for source in sources]
        kills, checks = kill_storm(server, proxy, lambda: any(p.poll() is None for p in processes), rng)
        outputs = []
        for process in processes:
            assert process.stdout is not None and process.stderr is not None
            process.wait(300)
            stdout, stderr = process.stdout.read(), process.stderr.read()
            lines = [line for line in stdout.splitlines() if line.startswith("{")]
            assert lines, f"upload.js printed no JSON (exit {process.returncode}):\n{stdout}\n{stderr}"
            outputs.append(json.loads(lines[-1]))
    finally:
        proxy.close()

    gaps = [check.gap for check in checks]
    print(f"kills: {kills}, PATCHes killed: {len(checks)}, allowed gap {ALLOWED_GAP} bytes")
    for check in checks:
        print(
            f"  {check.upload_id[:8]}: PATCH from {check.start}, forwarded {check.forwarded}, "
            f"queued {check.queued}, offset after kill {check.offset}, gap {check.gap}"
        )
    largest = max(gaps, default=0)
    if checks:
        print(f"the largest: {max(checks, key=lambda c: c.gap)}")
    print(f"largest gap between received and counted bytes: {largest} ({largest / RATE:.2f} s at the link rate)")

    for output in outputs:
        assert "error" not in output, output
    urls = [output["url"] for output in outputs]
    assert proxy.posts == UPLOADS, "an upload was created again"
    for url, source in zip(urls, sources, strict=True):
        upload_id = upload_id_of(url)
        record = record_of(server, upload_id)
        assert record["state"] == "complete" and record["offset"] == str(SIZE)
        assert file_sha256(server.upload_dir / upload_id) == file_sha256(source)

    assert len(checks) >= 4, "too few PATCHes were killed to tell anything"
    for check in checks:
        assert check.offset >= check.start, f"the offset went back at a kill: {check}"
        assert check.gap <= ALLOWED_GAP, f"a kill lost more than a progress interval's bytes: {check}"
    # Some kills came late enough in a PATCH that losing its body would have failed the bound.
    assert any(check.forwarded - check.queued > ALLOWED_GAP for check in checks), "every kill came early"

    # No upload starts over: its PATCHes start at offsets that never go back (so never to 0
    # once above it), and the first PATCH after a kill starts where the record stood.
    for url in urls:
        path = url[len(proxy.url) :]
        offsets = [offset for p, offset in proxy.patches if p == path]
        assert offsets == sorted(offsets), f"an upload went back: {offsets}"
    for check in checks:
        later = [offset for p, offset in proxy.patches[check.patches_before :] if p.endswith(check.upload_id)]
        assert later, f"no PATCH resumed the upload after a kill: {check}"
        assert later[0] == check.offset, f"the PATCH after a kill did not resume from the record: {check}, {later}"
