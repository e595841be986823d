"""Many slow clients (S8) and a slow-client attack (S9): the harness's second client.

Standard library only (asyncio on raw non-blocking sockets), run as its own
process by run.py like client.py; prints one JSON object on stdout. Everything
goes to 127.0.0.1, and every wait is bounded (connect, response, a body that
makes no progress, the whole run).

Modes:

``tus``     ``--count`` uploads of ``--size`` bytes. Each: POST /files/ to create it, then ONE
            PATCH with the whole size as Content-Length whose body is trickled at ``--rate``
            bytes/s in pieces of ``--piece`` bytes, from a socket whose SO_SNDBUF is set to
            ``--sndbuf`` before connect (the kernel then holds little of the body: the
            server must read it as it comes). Uploads start spread over ``--stagger`` s.
``legacy``  the same through django-chunked-upload's protocol: ``--chunk``-byte multipart
            chunks (fields first, Content-Range, CSRF cookie + csrfmiddlewaretoken, as
            client.py's legacy mode), each trickled at the rate, then the md5 completion POST.
``attack``  ``--slowloris`` connections that send request-header bytes one every 2 s, and
            ``--stalled`` PATCHes (to uploads created first) that declare a 10 MiB body and send
            none; while they hold (``--hold`` s), one "other client" every second creates an
            upload (POST) and PATCHes 64 KiB to it at once, on a new connection.

During ``tus`` and ``legacy`` a newcomer probe runs every ``--probe-interval`` s on a NEW
connection: tus creates a 1-byte upload and HEADs it, legacy sends a 1000-byte first chunk;
its latency (or failure, after ``--probe-timeout`` s) is recorded.

Body bytes are deterministic per upload: upload ``i``'s body is the ``size`` bytes of a fixed
pseudo-random pattern starting at ``shift(i)`` (``expected_body``), so the harness checks every
stored byte of every upload without a copy of what was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import re
import resource
import socket
import statistics
import sys
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

# --- deterministic bodies ---------------------------------------------------------

PATTERN_LEN = 4_194_319  # a prime just above 4 MiB: i * SHIFT_STEP mod it differs for every i below it
PATTERN_SEED = 20260101
SHIFT_STEP = 7919
_doubled: bytes | None = None


def _pattern() -> bytes:
    global _doubled
    if _doubled is None:
        pattern = random.Random(PATTERN_SEED).randbytes(PATTERN_LEN)
        _doubled = pattern + pattern
    return _doubled


def expected_body(index: int, size: int) -> memoryview:
    """The body of upload ``index`` (up to PATTERN_LEN bytes), without a copy."""
    if size > PATTERN_LEN:
        raise ValueError(f"uploads of at most {PATTERN_LEN} bytes")
    start = (index * SHIFT_STEP) % PATTERN_LEN
    return memoryview(_pattern())[start : start + size]


# --- errors -------------------------------------------------------------------------

CONNECT_TIMEOUT = 30.0
RESPONSE_TIMEOUT = 60.0
STALL_TIMEOUT = 60.0  # a body that makes no progress this long fails
CSRF_TOKEN = "benchbenchbenchbenchbenchbench12"  # as client.py


class Failure(Exception):
    """The server answered, but not what the protocol says (status, offset, missing header)."""


class StepTimeout(Exception):
    pass


class ClosedEarly(ConnectionError):
    pass


def classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, Failure):
        return "status", str(exc)
    if isinstance(exc, (StepTimeout, TimeoutError)):
        return "timeout", str(exc) or "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", str(exc)
    if isinstance(exc, (ConnectionError, BrokenPipeError)):
        return "reset", f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return "oserror", f"{type(exc).__name__}: {exc}"
    return "other", f"{type(exc).__name__}: {exc}"


_IDS = re.compile(r"[0-9a-f]{8,}|[0-9a-f-]{32,}|\d{4,}")


class Errors:
    """Errors counted by kind and by message (ids and numbers blanked so that alike ones group)."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()

    def add(self, where: str, exc: BaseException | None = None, kind: str = "", text: str = "") -> None:
        """An exception (its text with ids blanked), or a ``kind`` and ``text`` of our own (kept as is)."""
        if exc is not None:
            kind, text = classify(exc)
            text = _IDS.sub("#", text)
        self.kinds[kind] += 1
        self.messages[f"{where}: {kind}: {text}"[:200]] += 1

    @property
    def count(self) -> int:
        return sum(self.kinds.values())

    def listing(self, limit: int = 25) -> list[str]:
        return [f"{n} x {message}" for message, n in self.messages.most_common(limit)]


async def step(label: str, awaitable, timeout: float):
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise StepTimeout(f"{label}: nothing within {timeout:.0f} s") from None


# "held": the most uploads the server read at once for this many probe intervals in a row. A
# connection's buffers sometimes take in more than kernel_absorbs measures, for a second or two.
HELD_SAMPLES = 5
# ... and counts a body only once it is this many pieces past kernel_absorbs (which varies by some 10 %).
HELD_MARGIN = 8


def sustained(samples: list[int], run: int) -> int:
    """The highest value that ``run`` consecutive samples all reach."""
    if len(samples) < run:
        return min(samples, default=0)
    return max(min(samples[i : i + run]) for i in range(len(samples) - run + 1))


def stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))],
        "max": ordered[-1],
    }


# --- the trickle ------------------------------------------------------------------


class Body:
    __slots__ = ("sock", "data", "pos", "tokens", "last", "progress", "fut")

    def __init__(self, sock: socket.socket, data: memoryview, fut: asyncio.Future, now: float, first: float) -> None:
        self.sock, self.data, self.fut = sock, data, fut
        self.pos = 0
        self.tokens = first
        self.last = self.progress = now


class Trickler:
    """Sends every registered body at ``rate`` bytes/s, from one task, with non-blocking sends.

    Each body is a token bucket: it earns ``rate`` bytes per second of real time
    (so a late tick does not slow it), holds at most two pieces (a body the
    server did not read for a while goes on at the rate, it does not catch up),
    and is visited once per ``piece / rate`` seconds on a wheel of ``tick``-long
    slots. One task for thousands of bodies costs a send system call per piece
    and little else; a coroutine and a timer per body would cost several times
    that in this process, on the same cores as the server.
    """

    def __init__(self, rate: float, piece: int, stall_timeout: float = STALL_TIMEOUT, tick: float = 0.01) -> None:
        self.rate, self.piece, self.burst = float(rate), piece, 2 * piece
        self.period = piece / rate
        self.tick = tick
        self.stall_timeout = stall_timeout
        self.slots: dict[int, list[Body]] = {}
        self.cursor = int(time.monotonic() / tick)
        self.active: set[Body] = set()
        self.sent = 0
        self.sends = 0

    def add(self, sock: socket.socket, data: bytes | memoryview) -> Body:
        now = time.monotonic()
        body = Body(sock, memoryview(data), asyncio.get_running_loop().create_future(), now, self.piece)
        self.active.add(body)
        self._schedule(body, now)
        return body

    def drop(self, body: Body) -> None:
        self.active.discard(body)
        if not body.fut.done():
            body.fut.cancel()

    def _schedule(self, body: Body, when: float) -> None:
        key = max(int(when / self.tick), self.cursor)
        self.slots.setdefault(key, []).append(body)

    def _visit(self, body: Body, now: float) -> None:
        if body.fut.done():
            self.active.discard(body)
            return
        body.tokens = min(body.tokens + self.rate * (now - body.last), self.burst)
        body.last = now
        left = len(body.data) - body.pos
        want = min(int(body.tokens), left)
        if want > 0:
            try:
                sent = body.sock.send(body.data[body.pos : body.pos + want])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.active.discard(body)
                body.fut.set_exception(exc)
                return
            self.sends += 1
            if sent:
                body.pos += sent
                body.tokens -= sent
                body.progress = now
                self.sent += sent
        if body.pos >= len(body.data):
            self.active.discard(body)
            body.fut.set_result(now)
            return
        if now - body.progress > self.stall_timeout:
            self.active.discard(body)
            body.fut.set_exception(
                StepTimeout(f"body: no progress for {self.stall_timeout:.0f} s ({body.pos}/{len(body.data)} sent)")
            )
            return
        self._schedule(body, now + self.period)

    def progressing(self, now: float, window: float, past: int) -> int:
        """Bodies that advanced within ``window`` s and are more than ``past`` bytes in."""
        since = now - window
        return sum(1 for b in self.active if b.progress >= since and b.pos > past)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            last = int(now / self.tick)
            while self.cursor <= last:
                bodies = self.slots.pop(self.cursor, None)
                self.cursor += 1
                if bodies:
                    for body in bodies:
                        self._visit(body, now)
            await asyncio.sleep(self.tick)


# --- HTTP on raw sockets ---------------------------------------------------------------


class Conn:
    """One HTTP/1.1 connection on a non-blocking socket, driven by the loop's sock_* calls."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self.host = host
        self.buf = b""
        self.reusable = True
        self.pending: asyncio.Task | None = None
        self.requests = 0

    @classmethod
    async def open(cls, addr: tuple[str, int], sndbuf: int = 0, timeout: float = CONNECT_TIMEOUT) -> Conn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)  # before connect
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            await step("connect", asyncio.get_running_loop().sock_connect(sock, addr), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(sock, f"{addr[0]}:{addr[1]}")

    async def aclose(self) -> None:
        # A reader registered for this fd must be gone before the fd is closed (and reused).
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()
            try:
                await self.pending
            except BaseException:  # noqa: BLE001, S110
                pass
        self.sock.close()

    async def send(self, data: bytes, timeout: float = RESPONSE_TIMEOUT) -> None:
        await step("send", asyncio.get_running_loop().sock_sendall(self.sock, data), timeout)

    def head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _recv(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise ClosedEarly("connection closed by the server")
        self.buf += data

    async def response(self, method: str) -> tuple[int, dict[str, str], bytes]:
        while True:
            while (end := self.buf.find(b"\r\n\r\n")) < 0:
                if len(self.buf) > 65536:
                    raise Failure("response headers longer than 64 KiB")
                await self._recv()
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
            lines = head.split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise Failure(f"not an HTTP response: {lines[0][:80]!r}")
            version, status = parts[0], int(parts[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if not 100 <= status < 200:
                break
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._chunked()
        elif "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buf) < length:
                await self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
        else:
            keep = False
            try:
                while True:
                    await self._recv()
            except ClosedEarly:
                pass
            body, self.buf = self.buf, b""
        self.reusable = keep
        self.requests += 1
        return status, headers, body

    async def _chunked(self) -> bytes:
        out = b""
        while True:
            while (end := self.buf.find(b"\r\n")) < 0:
                await self._recv()
            size = int(self.buf[:end].split(b";")[0], 16)
            self.buf = self.buf[end + 2 :]
            while len(self.buf) < size + 2:
                await self._recv()
            out, self.buf = out + self.buf[:size], self.buf[size + 2 :]
            if size == 0:
                return out

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b"", timeout: float = RESPONSE_TIMEOUT
    ) -> tuple[int, dict[str, str], bytes]:
        if body or method not in ("GET", "HEAD"):
            headers = {**headers, "Content-Length": str(len(body))}
        await self.send(self.head(method, path, headers) + body, timeout)
        return await step(f"{method} response", self.response(method), timeout)

    async def trickle(self, trickler: Trickler, method: str, path: str, headers: dict[str, str], body) -> None:
        """Send the request line and headers at once, then ``body`` through the trickler.

        The response is read meanwhile: a server that answers before the body's
        end (and maybe closes) is reported as such, not as a broken pipe.
        """
        await self.send(self.head(method, path, {**headers, "Content-Length": str(len(body))}))
        sending = trickler.add(self.sock, body)
        self.pending = asyncio.ensure_future(self.response(method))
        try:
            await asyncio.wait({sending.fut, self.pending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sending.fut.done():
                trickler.drop(sending)
        answered = self.pending.done() and not self.pending.cancelled() and self.pending.exception() is None
        if answered and (sending.fut.cancelled() or sending.fut.exception() is not None):
            status, _, text = self.pending.result()
            raise Failure(f"{method} answered {status} before the body's end "
                          f"({sending.pos}/{len(body)} sent): {text[:120]!r}")  # fmt: skip
        if sending.fut.cancelled():  # the response side failed first (closed, reset)
            exc = self.pending.exception()
            raise exc if exc is not None else ClosedEarly("the server stopped the body")
        sending.fut.result()

    async def finish(self, label: str, timeout: float = RESPONSE_TIMEOUT) -> tuple[int, dict[str, str], bytes]:
        """The response to the request sent with ``trickle``."""
        task, self.pending = self.pending, None
        return await step(label, task, timeout)


def upload_path(location: str) -> str:
    return urlsplit(location).path


# --- tus and legacy: many slow uploads -----------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        parts = urlsplit(args.url)
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.path = parts.path.rstrip("/")
        self.args = args
        self.errors = Errors()
        self.stage: dict[int, str] = {}
        self.failed_at: dict[int, str] = {}
        self.create_latencies: list[float] = []
        self.trickler = Trickler(args.rate, args.piece)
        self.requests = 0
        self.t0 = 0.0


async def tus_upload(ctx: Context, index: int, start: float) -> dict:
    args = ctx.args
    ctx.stage[index] = "waiting to start"
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    began = time.monotonic()
    ctx.stage[index] = "connect"
    conn = await Conn.open(ctx.addr, args.sndbuf)
    try:
        ctx.stage[index] = "create (POST)"
        filename = f"{args.name}-{index}.bin"
        metadata = "filename " + base64.b64encode(filename.encode()).decode()
        status, headers, text = await conn.request(
            "POST",
            f"{ctx.path}/",
            {"Tus-Resumable": "1.0.0", "Upload-Length": str(args.size), "Upload-Metadata": metadata},
        )
        ctx.create_latencies.append(time.monotonic() - began)
        if status != 201 or "location" not in headers:
            raise Failure(f"POST: {status} {text[:120]!r}")
        path = upload_path(headers["location"])
        if not conn.reusable:
            await conn.aclose()
            ctx.stage[index] = "connect for PATCH"
            conn = await Conn.open(ctx.addr, args.sndbuf)
        ctx.stage[index] = "PATCH body"
        headers = {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        await conn.trickle(ctx.trickler, "PATCH", path, headers, expected_body(index, args.size))
        ctx.stage[index] = "PATCH response"
        status, headers, text = await conn.finish("PATCH response")
        if status != 204:
            raise Failure(f"PATCH: {status} {text[:120]!r}")
        if headers.get("upload-offset") != str(args.size):
            raise Failure(f"PATCH: 204 with Upload-Offset {headers.get('upload-offset')!r}, not {args.size}")
    finally:
        ctx.requests += conn.requests
        await conn.aclose()
    ctx.stage[index] = "done"
    return {"id": path.rstrip("/").rsplit("/", 1)[-1], "index": index, "size": args.size,
            "began": began, "ended": time.monotonic()}  # fmt: skip


def _multipart(fields: list[tuple[str, str]], filename: str, boundary: str) -> tuple[bytes, bytes]:
    """client.py's shape: the form fields first, then the file part ``file`` (jQuery-File-Upload's order)."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n{v}\r\n' for n, v in fields]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode(), f"\r\n--{boundary}--\r\n".encode()


LEGACY_COMMON = {"Cookie": f"csrftoken={CSRF_TOKEN}", "X-Requested-With": "XMLHttpRequest"}


def legacy_chunk_headers(boundary: str, offset: int, n: int, total: int, filename: str) -> dict[str, str]:
    return {
        **LEGACY_COMMON,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Range": f"bytes {offset}-{offset + n - 1}/{total}",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }


async def legacy_upload(ctx: Context, index: int, start: float) -> dict:
    args = ctx.args
    ctx.stage[index] = "waiting to start"
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    began = time.monotonic()
    data = expected_body(index, args.size)
    md5 = hashlib.md5(data).hexdigest()
    filename = f"{args.name}-{index}.bin"
    chunk_path, complete_path = f"{ctx.path}/chunked_upload/", f"{ctx.path}/chunked_upload_complete/"
    ctx.stage[index] = "connect"
    conn = await Conn.open(ctx.addr, args.sndbuf)
    upload_id = ""
    offset = 0
    try:
        while offset < args.size:
            n = min(args.chunk, args.size - offset)
            if not conn.reusable:
                ctx.requests += conn.requests
                await conn.aclose()
                ctx.stage[index] = f"connect for chunk {offset // args.chunk + 1}"
                conn = await Conn.open(ctx.addr, args.sndbuf)
            ctx.stage[index] = f"chunk {offset // args.chunk + 1} body"
            boundary = "----benchBoundary" + uuid.uuid4().hex
            fields = [("csrfmiddlewaretoken", CSRF_TOKEN)] + ([("upload_id", upload_id)] if upload_id else [])
            prefix, suffix = _multipart(fields, filename, boundary)
            body = prefix + data[offset : offset + n] + suffix
            await conn.trickle(
                ctx.trickler, "POST", chunk_path, legacy_chunk_headers(boundary, offset, n, args.size, filename), body
            )
            ctx.stage[index] = f"chunk {offset // args.chunk + 1} response"
            status, _, text = await conn.finish("chunk response")
            if status != 200:
                raise Failure(f"chunk {offset // args.chunk + 1}: {status} {text[:120]!r}")
            answer = json.loads(text)
            upload_id = answer["upload_id"]
            if int(answer["offset"]) != offset + n:
                raise Failure(f"chunk {offset // args.chunk + 1}: server says offset {answer['offset']}")
            offset += n
        if not conn.reusable:
            ctx.requests += conn.requests
            await conn.aclose()
            conn = await Conn.open(ctx.addr, args.sndbuf)
        ctx.stage[index] = "completion"
        form = f"csrfmiddlewaretoken={CSRF_TOKEN}&upload_id={upload_id}&md5={md5}".encode()
        status, _, text = await conn.request(
            "POST", complete_path, {**LEGACY_COMMON, "Content-Type": "application/x-www-form-urlencoded"}, form
        )
        if status != 200:
            raise Failure(f"completion: {status} {text[:120]!r}")
    finally:
        ctx.requests += conn.requests
        await conn.aclose()
    ctx.stage[index] = "done"
    return {"id": upload_id, "index": index, "size": args.size, "began": began, "ended": time.monotonic()}


async def probe_tus(ctx: Context) -> None:
    conn = await Conn.open(ctx.addr)
    try:
        status, headers, text = await conn.request(
            "POST", f"{ctx.path}/", {"Tus-Resumable": "1.0.0", "Upload-Length": "1"}
        )
        if status != 201 or "location" not in headers:
            raise Failure(f"probe POST: {status} {text[:120]!r}")
        if not conn.reusable:
            await conn.aclose()
            conn = await Conn.open(ctx.addr)
        status, headers, text = await conn.request("HEAD", upload_path(headers["location"]), {"Tus-Resumable": "1.0.0"})
        if status != 200 or headers.get("upload-offset") != "0":
            raise Failure(f"probe HEAD: {status} offset {headers.get('upload-offset')!r}")
    finally:
        await conn.aclose()


async def probe_legacy(ctx: Context) -> None:
    conn = await Conn.open(ctx.addr)
    try:
        boundary = "----benchBoundary" + uuid.uuid4().hex
        prefix, suffix = _multipart([("csrfmiddlewaretoken", CSRF_TOKEN)], "probe.bin", boundary)
        status, _, text = await conn.request(
            "POST",
            f"{ctx.path}/chunked_upload/",
            legacy_chunk_headers(boundary, 0, 1000, 2000, "probe.bin"),
            prefix + b"p" * 1000 + suffix,
        )
        if status != 200:
            raise Failure(f"probe chunk: {status} {text[:120]!r}")
    finally:
        await conn.aclose()


def kernel_absorbs(sndbuf: int, piece: int) -> int:
    """Bytes the kernel takes into its buffers for a connection whose server reads nothing (measured here).

    Sent as the trickle sends, piece by piece with pauses: the receiving side then
    packs small segments more tightly than one burst (about 197 KB against 150-180 KB
    here with a 32 KiB SO_SNDBUF). It ends after a second without progress.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket() as client:
            if sndbuf:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            client.connect(server.getsockname())
            accepted, _ = server.accept()
            with accepted:
                client.setblocking(False)
                total, data = 0, b"\0" * piece
                last_progress = time.monotonic()
                while time.monotonic() - last_progress < 1.0 and total < 64 * (1 << 20):
                    try:
                        sent = client.send(data)
                    except BlockingIOError:
                        sent = 0
                    if sent:
                        total += sent
                        last_progress = time.monotonic()
                    time.sleep(0.003)
                return total


async def run_many(args: argparse.Namespace) -> dict:
    ctx = Context(args)
    absorbs = kernel_absorbs(args.sndbuf, args.piece)
    ticker = asyncio.ensure_future(ctx.trickler.run())
    request_size = args.chunk if args.mode == "legacy" else args.size
    upload = tus_upload if args.mode == "tus" else legacy_upload
    probe = probe_tus if args.mode == "tus" else probe_legacy
    # What a server that reads every byte as it comes gives: the last upload starts
    # stagger * (N-1)/N s in, its first piece goes at once and the rest at the rate
    # (legacy: per chunk; its few hundred bytes of multipart framing are left out).
    pieces_at_once = args.piece * (-(-args.size // args.chunk) if args.mode == "legacy" else 1)
    ideal = (args.size - pieces_at_once) / args.rate + args.stagger * (args.count - 1) / max(1, args.count)
    deadline_s = args.deadline or 1.5 * ideal + 10
    ctx.t0 = t0 = time.monotonic() + 0.2
    deadline = t0 + deadline_s

    async def guarded(index: int) -> dict:
        try:
            return await upload(ctx, index, t0 + args.stagger * index / max(1, args.count))
        except Exception:
            ctx.failed_at[index], ctx.stage[index] = ctx.stage.get(index, "?"), "failed"
            raise

    tasks = {asyncio.ensure_future(guarded(i)): i for i in range(args.count)}
    finished: list[dict] = []
    probe_latencies: list[float] = []
    probe_errors = Errors()
    probes: list[asyncio.Task] = []
    held_samples: list[int] = []
    all_done = asyncio.ensure_future(asyncio.wait(list(tasks)))

    async def one_probe() -> None:
        began = time.monotonic()
        try:
            await step("probe", probe(ctx), args.probe_timeout)
        except Exception as exc:  # noqa: BLE001
            probe_errors.add("probe", exc)
        else:
            probe_latencies.append(time.monotonic() - began)

    trace = open(args.trace, "w") if args.trace else None  # noqa: SIM115 - closed below
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    next_probe = t0 + args.probe_interval / 2
    while not all_done.done() and time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_probe and len(probes) < 10_000:
            probes.append(asyncio.ensure_future(one_probe()))
            # After a stall of this process's loop: one probe now, not one per missed interval.
            next_probe = max(next_probe + args.probe_interval, now + args.probe_interval / 2)
            # Uploads that advance past what kernel buffers could take in: the server is reading them.
            held = ctx.trickler.progressing(now, args.probe_interval, absorbs + HELD_MARGIN * args.piece)
            held_samples.append(held)
            if trace is not None:
                stages = Counter(ctx.stage.values())
                trace.write(json.dumps({"t": round(now - t0, 2), "held": held, "in_body": len(ctx.trickler.active),
                                        "stages": dict(stages), "probes_ok": len(probe_latencies),
                                        "probes_failed": probe_errors.count}) + "\n")  # fmt: skip
                trace.flush()
        await asyncio.wait({all_done}, timeout=min(next_probe, deadline) - now)
    ended_at = time.monotonic()
    unfinished = Counter()
    for task, index in tasks.items():
        if not task.done():
            unfinished[ctx.stage.get(index, "?")] += 1
            task.cancel()
    if unfinished:
        await asyncio.wait(list(tasks))
    for task, index in tasks.items():
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            ctx.errors.add(f"upload ({ctx.failed_at.get(index, '?')})", exc)
        else:
            finished.append(task.result())
    if unfinished:
        where = ", ".join(f"{n} in {stage}" for stage, n in unfinished.most_common())
        ctx.errors.add("upload", kind="timeout", text=f"unfinished at the {deadline_s:.0f} s deadline: {where}")
        ctx.errors.kinds["timeout"] += sum(unfinished.values()) - 1
    if probes:
        await asyncio.wait(probes)  # each bounded by --probe-timeout
    ticker.cancel()
    if trace is not None:
        trace.close()
    wall = (max(r["ended"] for r in finished) if len(finished) == args.count else ended_at) - t0
    durations = [r["ended"] - r["began"] for r in finished]
    errors = Errors()
    errors.kinds = ctx.errors.kinds + probe_errors.kinds
    errors.messages = ctx.errors.messages + probe_errors.messages
    probe_stats = stats(probe_latencies)
    probe_stats.update(count=len(probes), failures=probe_errors.count, failure_kinds=dict(probe_errors.kinds))
    return {
        "mode": args.mode,
        "ok": len(finished) == args.count and errors.count == 0,
        "count": args.count,
        "size": args.size,
        "chunk": args.chunk if args.mode == "legacy" else args.size,
        "rate": args.rate,
        "piece": args.piece,
        "sndbuf": args.sndbuf,
        "stagger": args.stagger,
        "deadline": deadline_s,
        "kernel_absorbs": absorbs,
        "finished": len(finished),
        "unfinished": sum(unfinished.values()),
        "bytes": len(finished) * args.size,
        "requests": ctx.requests,
        "wall": wall,
        "ideal": ideal,
        "wall_ideal": wall / ideal,
        "error_count": errors.count,
        "upload_errors": ctx.errors.count,
        "error_kinds": dict(errors.kinds),
        "errors": errors.listing(),
        "probe": probe_stats,
        "create": stats(ctx.create_latencies),
        "durations": stats(durations),
        # Only where one request's body is well over what the kernel takes in without the server reading.
        "held_peak": sustained(held_samples, HELD_SAMPLES) if request_size >= 2 * absorbs else None,
        "trickle_sends": ctx.trickler.sends,
        "uploads": [{k: r[k] for k in ("id", "index", "size")} for r in finished],
    }


# --- attack ---------------------------------------------------------------------------------

SLOW_HEADER = (
    b"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1024\r\nX-Slow: " + b"s" * 400
)
ATTACK_LENGTH = 10 * (1 << 20)
OTHER_SIZE = 64 * 1024
OTHER_INDEX = 1_000_000  # the other clients' bodies are expected_body(OTHER_INDEX + k)


async def gather_bounded(coros, limit: int) -> list:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro):
        async with semaphore:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


async def run_attack(args: argparse.Namespace) -> dict:
    parts = urlsplit(args.url)
    addr = (parts.hostname or "127.0.0.1", parts.port or 80)
    path = parts.path.rstrip("/") + "/"
    errors = Errors()
    tus = {"Tus-Resumable": "1.0.0"}
    began = time.monotonic()

    async def create(length: int, conn: Conn | None = None, timeout: float = RESPONSE_TIMEOUT):
        own = conn is None
        conn = conn or await Conn.open(addr, timeout=timeout)
        try:
            status, headers, text = await conn.request(
                "POST", path, {**tus, "Upload-Length": str(length)}, timeout=timeout
            )
            if status != 201 or "location" not in headers:
                raise Failure(f"POST: {status} {text[:120]!r}")
            return upload_path(headers["location"])
        finally:
            if own:
                await conn.aclose()

    # 1. The uploads the stalled PATCHes will hold.
    made = await gather_bounded([create(ATTACK_LENGTH) for _ in range(args.stalled)], 20)
    targets = [m for m in made if isinstance(m, str)]
    for m in made:
        if not isinstance(m, str):
            errors.add("attack set-up: create", m)

    # 2. Slowloris: request-header bytes, one every 2 s per connection, phases spread over 2 s.
    slow = Trickler(0.5, 1, stall_timeout=3600)
    ticker = asyncio.ensure_future(slow.run())
    held: list[tuple[str, Conn, Body | None]] = []

    async def open_slow(k: int) -> None:
        await asyncio.sleep(2.0 * k / max(1, args.slowloris))
        conn = await Conn.open(addr)
        held.append(("slowloris", conn, slow.add(conn.sock, SLOW_HEADER)))

    async def open_stalled(target: str) -> None:
        conn = await Conn.open(addr)
        headers = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                   "Content-Length": str(ATTACK_LENGTH)}  # fmt: skip
        await conn.send(conn.head("PATCH", target, headers))
        held.append(("stalled", conn, None))

    opened = await asyncio.gather(
        *(open_slow(k) for k in range(args.slowloris)), *(open_stalled(t) for t in targets), return_exceptions=True
    )
    for result in opened:
        if isinstance(result, BaseException):
            errors.add("attack set-up: open", result)
    attack_ready = time.monotonic()

    # 3. Other clients, one a second, each on a new connection: create, then PATCH 64 KiB at once.
    create_latencies: list[float] = []
    patch_latencies: list[float] = []
    create_errors, patch_errors = Errors(), Errors()
    patch_skipped = 0

    stage: dict[int, str] = {}

    async def other(k: int) -> None:
        nonlocal patch_skipped
        stage[k] = "waiting"
        await asyncio.sleep(0.5 + k * args.op_interval)
        stage[k] = "create"
        limit = time.monotonic() + args.op_timeout
        t0 = time.monotonic()
        conn = None
        try:
            conn = await Conn.open(addr, timeout=args.op_timeout)
            target = await create(OTHER_SIZE, conn, timeout=max(0.1, limit - time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            create_errors.add("create", exc)
            patch_skipped += 1
            if conn is not None:
                await conn.aclose()
            return
        create_latencies.append(time.monotonic() - t0)
        stage[k] = "PATCH"
        t1 = time.monotonic()
        try:
            if not conn.reusable:
                await conn.aclose()
                conn = await Conn.open(addr, timeout=max(0.1, limit - time.monotonic()))
            status, headers, text = await conn.request(
                "PATCH",
                target,
                {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                bytes(expected_body(OTHER_INDEX + k, OTHER_SIZE)),
                timeout=max(0.1, limit - time.monotonic()),
            )
            if status != 204 or headers.get("upload-offset") != str(OTHER_SIZE):
                raise Failure(f"PATCH: {status} offset {headers.get('upload-offset')!r} {text[:80]!r}")
        except Exception as exc:  # noqa: BLE001
            patch_errors.add("PATCH", exc)
        else:
            patch_latencies.append(time.monotonic() - t1)
            done.append({"id": target.rstrip("/").rsplit("/", 1)[-1], "index": OTHER_INDEX + k, "size": OTHER_SIZE})
        finally:
            await conn.aclose()

    done: list[dict] = []
    others = [asyncio.ensure_future(other(k)) for k in range(args.ops)]
    await asyncio.wait(others, timeout=args.hold)
    for task in others:
        task.cancel()
    await asyncio.wait(others)
    for k, task in enumerate(others):
        if task.cancelled():
            if stage[k] == "PATCH":
                patch_errors.add("PATCH", kind="timeout", text="cut by the end of the attack")
            else:
                create_errors.add("create", kind="timeout", text=f"cut by the end of the attack ({stage[k]})")
                patch_skipped += 1

    # 4. Which attack connections did the server drop or answer meanwhile?
    fates: Counter[str] = Counter()
    for kind, conn, body in held:
        if body is not None and body.fut.done() and not body.fut.cancelled() and body.fut.exception() is not None:
            fates[f"{kind}: reset while sending"] += 1
            continue
        try:
            data = conn.sock.recv(4096)
            fates[f"{kind}: {'answered ' + data[:12].decode('latin-1', 'replace').strip() if data else 'closed'}"] += 1
        except BlockingIOError:
            fates[f"{kind}: still open"] += 1
        except OSError as exc:
            fates[f"{kind}: {type(exc).__name__}"] += 1
    for _, conn, body in held:
        if body is not None:
            slow.drop(body)
        await conn.aclose()
    ticker.cancel()

    create_stats = stats(create_latencies)
    create_stats.update(count=args.ops, failures=create_errors.count, failure_kinds=dict(create_errors.kinds))
    patch_stats = stats(patch_latencies)
    patch_stats.update(count=args.ops - patch_skipped, failures=patch_errors.count, skipped=patch_skipped,
                       failure_kinds=dict(patch_errors.kinds))  # fmt: skip
    all_errors = Errors()
    for part in (errors, create_errors, patch_errors):
        all_errors.kinds += part.kinds
        all_errors.messages += part.messages
    return {
        "mode": "attack",
        "ok": all_errors.count == 0,
        "slowloris": args.slowloris,
        "stalled": args.stalled,
        "stalled_created": len(targets),
        "attack_connections": len(held),
        "attack_fates": dict(fates),
        "setup_s": attack_ready - began,
        "hold": args.hold,
        "wall": time.monotonic() - began,
        "create": create_stats,
        "patch": patch_stats,
        "error_count": all_errors.count,
        "error_kinds": dict(all_errors.kinds),
        "errors": all_errors.listing(),
        "bytes": len(done) * OTHER_SIZE,
        "uploads": done,
    }


# --- main -------------------------------------------------------------------------------------


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("tus", "legacy", "attack"))
    parser.add_argument("--url", required=True, help="tus: http://127.0.0.1:PORT/files/, legacy: .../api/")
    parser.add_argument("--count", type=int, default=100, help="concurrent uploads")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per upload")
    parser.add_argument("--rate", type=float, default=32 * 1024, help="bytes/s per upload")
    parser.add_argument("--piece", type=int, default=4096, help="bytes per send")
    parser.add_argument("--chunk", type=int, default=100_000, help="legacy: bytes per chunk")
    parser.add_argument("--sndbuf", type=int, default=32 * 1024, help="SO_SNDBUF of upload sockets (0: default)")
    parser.add_argument("--stagger", type=float, default=1.5, help="uploads start spread over this many seconds")
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="end the run after this many s (0: 1.5 x ideal + 10)"
    )
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--probe-timeout", type=float, default=30.0)
    parser.add_argument("--slowloris", type=int, default=300, help="attack: slow-header connections")
    parser.add_argument("--stalled", type=int, default=300, help="attack: PATCHes that declare 10 MiB and send nothing")
    parser.add_argument("--hold", type=float, default=40.0, help="attack: seconds the attack holds")
    parser.add_argument("--ops", type=int, default=31, help="attack: other clients (one per --op-interval)")
    parser.add_argument("--op-interval", type=float, default=1.0)
    parser.add_argument(
        "--op-timeout", type=float, default=8.0, help="attack: bound on one other client's create+PATCH"
    )
    parser.add_argument("--trace", default="", help="tus/legacy: write one JSON line a second here (progress)")
    parser.add_argument("--name", default="trickle")
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost"):
        parser.error("127.0.0.1 only")
    if args.size > PATTERN_LEN:
        parser.error(f"--size at most {PATTERN_LEN}")
    nofile = raise_nofile()
    if args.mode == "attack":
        result = asyncio.run(run_attack(args))
    else:
        result = asyncio.run(run_many(args))
    result["nofile"] = nofile
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
