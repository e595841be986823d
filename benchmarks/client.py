"""The one benchmark client, used unchanged against every server.

Standard library only (``http.client``), so it runs under any Python 3.11.
Bodies stream from the source file through one fixed buffer per connection
(``readinto`` + ``send``); no body is ever held whole in memory. A connection
is kept alive as long as the server allows it (http.client reconnects by
itself after a server closes, as gunicorn's sync workers do after each
response).

Modes (each prints one JSON object on stdout):

``tus``     create + PATCH uploads (``--parallel`` of them at once, each on its own connection)
``legacy``  django-chunked-upload chunks (multipart, fields first, Content-Range), then the md5 completion POST
``heads-setup``  create ``--count`` idle uploads holding ``--size`` bytes each (prints them)
``heads``   HEAD those uploads all at once, one open connection each (``--uploads``: heads-setup's output),
            ``--bursts`` times; the figures are the medians over the bursts

Times are ``time.perf_counter`` seconds. ``wall`` runs from the first byte of
the first timed request to the last byte of the last response.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import selectors
import socket
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlsplit

DEFAULT_BUFFER = 256 * 1024
CSRF_TOKEN = "benchbenchbenchbenchbenchbench12"  # 32 chars: a valid Django CSRF secret
TIMEOUT = 600.0


class Failure(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection with a fixed send buffer."""

    def __init__(self, base_url: str, buffer_size: int) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
        self.buffer = bytearray(buffer_size)
        self.requests = 0

    def close(self) -> None:
        self.conn.close()

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        prefix: bytes = b"",
        source: int | None = None,
        offset: int = 0,
        length: int = 0,
        suffix: bytes = b"",
    ) -> tuple[int, dict[str, str], bytes]:
        """Send ``prefix`` + ``length`` bytes of ``source`` (an fd) from ``offset`` + ``suffix``."""
        total = len(prefix) + length + len(suffix)
        conn = self.conn
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if method not in ("HEAD", "GET") or total:
            conn.putheader("Content-Length", str(total))
        conn.endheaders()
        if prefix:
            conn.send(prefix)
        if length:
            view = memoryview(self.buffer)
            position, end = offset, offset + length
            while position < end:
                want = min(len(view), end - position)
                n = os.preadv(source, [view[:want]], position)
                if n <= 0:
                    raise Failure(f"source file ended at {position}")
                conn.send(view[:n])
                position += n
        if suffix:
            conn.send(suffix)
        response = conn.getresponse()
        body = response.read()
        self.requests += 1
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


def tus_upload(
    base_url: str,
    source: int,
    size: int,
    chunk: int,
    filename: str,
    buffer_size: int,
    start_barrier: threading.Barrier | None = None,
) -> dict:
    conn = Connection(base_url, buffer_size)
    path = urlsplit(base_url).path
    metadata = "filename " + base64.b64encode(filename.encode()).decode()
    if start_barrier is not None:
        start_barrier.wait()
    began = time.perf_counter()
    status, headers, body = conn.request(
        "POST", path, {"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Upload-Metadata": metadata}
    )
    if status != 201 or "location" not in headers:
        raise Failure(f"POST {path}: {status} {body[:200]!r}")
    location = urljoin(base_url, headers["location"])
    upload_path = urlsplit(location).path
    offset = 0
    last_latency = 0.0
    while offset < size:
        n = min(chunk, size - offset)
        t0 = time.perf_counter()
        status, headers, body = conn.request(
            "PATCH",
            upload_path,
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            source=source,
            offset=offset,
            length=n,
        )
        last_latency = time.perf_counter() - t0
        if status != 204:
            raise Failure(f"PATCH {upload_path} at {offset}: {status} {body[:200]!r}")
        new_offset = int(headers.get("upload-offset", "-1"))
        if new_offset != offset + n:
            raise Failure(f"PATCH {upload_path} at {offset}+{n}: server says offset {new_offset}")
        offset = new_offset
    ended = time.perf_counter()
    conn.close()
    return {
        "id": upload_path.rstrip("/").rsplit("/", 1)[-1],
        "filename": filename,
        "size": size,
        "requests": conn.requests,
        "began": began,
        "ended": ended,
        "final_latency": last_latency,
    }


def run_tus(args: argparse.Namespace) -> dict:
    source = os.open(args.file, os.O_RDONLY)
    results: list[dict | None] = [None] * args.parallel
    errors: list[str] = []
    barrier = threading.Barrier(args.parallel) if args.parallel > 1 else None

    def one(index: int) -> None:
        try:
            results[index] = tus_upload(
                args.url, source, args.size, args.chunk, f"{args.name}-{index}.bin", args.buffer, barrier
            )
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            errors.append(f"upload {index}: {type(exc).__name__}: {exc}")
            if barrier is not None:
                barrier.abort()

    if args.parallel == 1:
        one(0)
    else:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(args.parallel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    done = [r for r in results if r is not None]
    if errors or len(done) != args.parallel:
        return {"ok": False, "errors": errors or ["not all uploads finished"], "uploads": done}
    began, ended = min(r["began"] for r in done), max(r["ended"] for r in done)
    latencies = sorted(r["final_latency"] for r in done)
    return {
        "ok": True,
        "errors": [],
        "bytes": sum(r["size"] for r in done),
        "requests": sum(r["requests"] for r in done),
        "wall": ended - began,
        # The final PATCH of each upload; for parallel uploads the median one.
        "completion_latency": latencies[len(latencies) // 2],
        "uploads": [{k: r[k] for k in ("id", "filename", "size")} for r in done],
    }


def _multipart(fields: list[tuple[str, str]], file_field: str, filename: str, boundary: str) -> tuple[bytes, bytes]:
    """The bytes before and after a file part, with the form fields first (jQuery-File-Upload's order)."""
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return "".join(parts).encode(), f"\r\n--{boundary}--\r\n".encode()


def run_legacy(args: argparse.Namespace) -> dict:
    source = os.open(args.file, os.O_RDONLY)
    conn = Connection(args.url, args.buffer)
    base = urlsplit(args.url).path.rstrip("/")
    chunk_path, complete_path = f"{base}/chunked_upload/", f"{base}/chunked_upload_complete/"
    filename = f"{args.name}.bin"
    common = {
        "Cookie": f"csrftoken={CSRF_TOKEN}",
        "X-Requested-With": "XMLHttpRequest",
    }
    upload_id = ""
    offset = 0
    began = time.perf_counter()
    try:
        while offset < args.size:
            n = min(args.chunk, args.size - offset)
            boundary = "----benchBoundary" + uuid.uuid4().hex
            fields = [("csrfmiddlewaretoken", CSRF_TOKEN)]
            if upload_id:
                fields.append(("upload_id", upload_id))
            prefix, suffix = _multipart(fields, "file", filename, boundary)
            status, _headers, body = conn.request(
                "POST",
                chunk_path,
                {
                    **common,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Range": f"bytes {offset}-{offset + n - 1}/{args.size}",
                    "Content-Disposition": f'attachment; filename="{filename}"',
                },
                prefix=prefix,
                source=source,
                offset=offset,
                length=n,
                suffix=suffix,
            )
            if status != 200:
                raise Failure(f"chunk at {offset}: {status} {body[:300]!r}")
            data = json.loads(body)
            upload_id = data["upload_id"]
            if int(data["offset"]) != offset + n:
                raise Failure(f"chunk at {offset}+{n}: server says offset {data['offset']}")
            offset += n
        form = f"csrfmiddlewaretoken={CSRF_TOKEN}&upload_id={upload_id}&md5={args.md5}".encode()
        t0 = time.perf_counter()
        status, _headers, body = conn.request(
            "POST", complete_path, {**common, "Content-Type": "application/x-www-form-urlencoded"}, prefix=form
        )
        ended = time.perf_counter()
        if status != 200:
            raise Failure(f"completion: {status} {body[:300]!r}")
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "errors": [f"{type(exc).__name__}: {exc}"], "uploads": []}
    finally:
        conn.close()
    return {
        "ok": True,
        "errors": [],
        "bytes": args.size,
        "requests": conn.requests,
        "wall": ended - began,
        "completion_latency": ended - t0,
        "uploads": [{"id": upload_id, "filename": filename, "size": args.size}],
    }


def run_heads_setup(args: argparse.Namespace) -> dict:
    """Create the idle uploads of ``heads``: ``--size`` bytes of a twice as long upload each."""
    source = os.open(args.file, os.O_RDONLY)
    path = urlsplit(args.url).path
    setup = Connection(args.url, args.buffer)
    uploads = []
    try:
        for index in range(args.count):
            filename = f"{args.name}-{index}.bin"
            metadata = "filename " + base64.b64encode(filename.encode()).decode()
            status, headers, body = setup.request(
                "POST",
                path,
                {"Tus-Resumable": "1.0.0", "Upload-Length": str(2 * args.size), "Upload-Metadata": metadata},
            )
            if status != 201:
                raise Failure(f"POST {path}: {status} {body[:200]!r}")
            upload_path = urlsplit(urljoin(args.url, headers["location"])).path
            status, headers, body = setup.request(
                "PATCH",
                upload_path,
                {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                source=source,
                length=args.size,
            )
            if status != 204:
                raise Failure(f"PATCH {upload_path}: {status} {body[:200]!r}")
            uploads.append((upload_path, filename))
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "errors": [f"setup: {type(exc).__name__}: {exc}"], "uploads": []}
    finally:
        setup.close()
    return {
        "ok": True,
        "errors": [],
        "uploads": [{"path": p, "id": p.rstrip("/").rsplit("/", 1)[-1], "filename": f, "size": args.size}
                    for p, f in uploads],
    }  # fmt: skip


def run_heads(args: argparse.Namespace) -> dict:
    """HEAD every upload that ``heads-setup`` made (``--uploads``, its output) at once, ``--bursts`` times.

    Each figure is the median over the bursts: one burst of 200 HEADs lasts
    a few tens of milliseconds, so a single one mostly measures what else the
    machine was doing at that moment.
    """
    made = json.loads(Path(args.uploads).read_text()) if args.uploads else run_heads_setup(args)
    if not made.get("ok"):
        return made
    uploads = [(u["path"], u["filename"]) for u in made["uploads"]]
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    bursts = []
    for index in range(args.bursts):
        if index:
            time.sleep(0.2)  # the last burst's connections are closed on both ends
        burst = _heads_burst(uploads, host, port, args.size)
        if not burst["ok"]:
            return burst
        bursts.append(burst)
    return {
        "ok": True,
        "errors": [],
        "bytes": 0,
        "requests": len(uploads),  # per burst, so that requests / wall is a median burst's rate
        "bursts": len(bursts),
        **{key: statistics.median(b[key] for b in bursts) for key in ("wall", "completion_latency", "p50", "p99")},
        "uploads": [{"id": p.rstrip("/").rsplit("/", 1)[-1], "filename": f, "size": args.size} for p, f in uploads],
    }


def _heads_burst(uploads: list[tuple[str, str]], host: str, port: int, size: int) -> dict:
    """One HEAD on each upload, every one on its own connection, all sent at once."""
    # All connections are open before the clock starts; one thread then sends every
    # HEAD and timestamps each response as it arrives (selectors), so the latency
    # is the server's, not this client's thread scheduling.
    errors: list[str] = []
    socks = []
    try:
        for _ in uploads:
            sock = socket.create_connection((host, port), timeout=TIMEOUT)
            socks.append(sock)
    except OSError as exc:
        for sock in socks:
            sock.close()
        return {"ok": False, "errors": [f"connect: {exc}"], "uploads": []}
    selector = selectors.DefaultSelector()
    sent: list[float] = [0.0] * len(uploads)
    latencies: list[float | None] = [None] * len(uploads)
    received: list[bytes] = [b""] * len(uploads)
    began = time.perf_counter()
    for index, (sock, (upload_path, _)) in enumerate(zip(socks, uploads, strict=True)):
        request = (f"HEAD {upload_path} HTTP/1.1\r\nHost: {host}:{port}\r\nTus-Resumable: 1.0.0\r\n\r\n").encode()
        sent[index] = time.perf_counter()
        sock.sendall(request)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    pending = len(uploads)
    deadline = began + TIMEOUT
    ended = began
    while pending and time.perf_counter() < deadline:
        for key, _ in selector.select(timeout=1.0):
            index = key.data
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b""
                errors.append(f"HEAD {index}: {exc}")
            received[index] += data
            if b"\r\n\r\n" in received[index] or not data:
                now = time.perf_counter()
                latencies[index] = now - sent[index]
                ended = max(ended, now)
                selector.unregister(key.fileobj)
                # Close at once, as a browser does on a complete response: gunicorn's
                # sync worker lingers (up to 2 s) until the client closes its side.
                key.fileobj.close()
                pending -= 1
    selector.close()
    for sock in socks:
        sock.close()
    for index, raw in enumerate(received):
        head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        fields = dict(
            (line.split(":", 1)[0].strip().lower(), line.split(":", 1)[1].strip()) for line in head[1:] if ":" in line
        )
        if not head[0].startswith("HTTP/1.1 200") or fields.get("upload-offset") != str(size):
            errors.append(f"HEAD {uploads[index][0]}: {head[0]!r} offset {fields.get('upload-offset')}")
    done = sorted(x for x in latencies if x is not None)
    if errors or len(done) != len(uploads):
        return {"ok": False, "errors": errors[:10] or ["HEADs missing"], "uploads": []}

    def pct(q: float) -> float:
        return done[min(len(done) - 1, max(0, round(q * len(done)) - 1))]

    return {
        "ok": True,
        "requests": len(done),
        "wall": ended - began,
        "completion_latency": max(done),
        "p50": pct(0.50),
        "p99": pct(0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["tus", "legacy", "heads-setup", "heads"])
    parser.add_argument("--url", required=True, help="tus collection URL, or the legacy base (…/api/)")
    parser.add_argument("--file", required=True, help="source file; its first --size bytes are uploaded")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--chunk", type=int, default=8 << 20)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--count", type=int, default=200, help="heads: how many idle uploads")
    parser.add_argument("--md5", default="", help="legacy: md5 of the uploaded bytes")
    parser.add_argument("--name", default="bench", help="file name stem sent to the server")
    parser.add_argument("--buffer", type=int, default=DEFAULT_BUFFER, help="send buffer in bytes")
    parser.add_argument("--uploads", default="", help="heads: the JSON that heads-setup printed (else set up first)")
    parser.add_argument("--bursts", type=int, default=5, help="heads: bursts measured (figures are their medians)")
    args = parser.parse_args(argv)
    run = {"tus": run_tus, "legacy": run_legacy, "heads-setup": run_heads_setup, "heads": run_heads}[args.mode]
    try:
        result = run(args)
    except Exception as exc:  # noqa: BLE001
        result = {"ok": False, "errors": [f"{type(exc).__name__}: {exc}"], "uploads": []}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
