"""Helpers for tests that speak tus over real HTTP to a live gunicorn server.

Besides small conveniences (auth cookie, Redis record, data file), this module
has :class:`RawRequest`: an HTTP/1.1 request written by hand on its own socket,
so a test can hold a request half-sent (headers not yet terminated, or a body
cut short), find out *which gunicorn worker accepted it* and then finish it or
drop the connection.

Which worker holds a connection is read from /proc: the server side of our
TCP connection appears in ``/proc/net/tcp`` with a socket inode once a worker
has ``accept()``-ed it (inode 0 while it waits in the listen backlog), and that
inode is among the file descriptors of exactly one worker process.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import requests
from django.core.files.storage import FileSystemStorage

if TYPE_CHECKING:
    from tests.support.servers import GunicornServer

TUS_VERSION = "1.0.0"
OFFSET_CT = "application/offset+octet-stream"
TUS = {"Tus-Resumable": TUS_VERSION}
HAS_PROC_NET = Path("/proc/net/tcp").is_file()

T = TypeVar("T")


def path_of(url: str) -> str:
    return urlsplit(url).path


def data_path(server: GunicornServer, upload_id: str) -> Path:
    """Where the server's filesystem data store keeps an upload's bytes."""
    return server.upload_dir / upload_id


def data_of(server: GunicornServer, upload_id: str) -> bytes | None:
    path = data_path(server, upload_id)
    return path.read_bytes() if path.exists() else None


def record_key(server: GunicornServer, upload_id: str) -> str:
    return f"{server.key_prefix}:upload:{{{upload_id}}}"


def lock_key(server: GunicornServer, upload_id: str) -> str:
    return f"{server.key_prefix}:lock:{{{upload_id}}}"


def record_of(server: GunicornServer, upload_id: str) -> dict[str, str]:
    """The upload's Redis hash, decoded (empty when there is no record)."""
    client = server.redis_client()
    try:
        raw = client.hgetall(record_key(server, upload_id))
    finally:
        client.close()
    return {k.decode(): v.decode() for k, v in raw.items()}


def is_locked(server: GunicornServer, upload_id: str) -> bool:
    client = server.redis_client()
    try:
        return bool(client.exists(lock_key(server, upload_id)))
    finally:
        client.close()


def poll(check: Callable[[], T | None], what: str, timeout: float = 15.0, interval: float = 0.02) -> T:
    """Call ``check`` until it returns something other than None/False; fail after ``timeout``.

    Bounded waiting for the server to reach a state, never a timing assertion.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(interval)


def cookie_header(session: requests.Session) -> str:
    """The session's cookies as one ``Cookie`` header value (for raw sockets and tuspy)."""
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def auth(session: requests.Session, **extra: str) -> dict[str, str]:
    """Tus-Resumable plus the login cookie, plus ``extra`` headers."""
    return {**TUS, "Cookie": cookie_header(session), **extra}


def patch_headers(session: requests.Session, offset: int, content_length: int) -> dict[str, str]:
    """Headers of a tus PATCH sent by hand (``RawRequest``) for ``session``'s user."""
    return {
        "Tus-Resumable": TUS_VERSION,
        "Cookie": cookie_header(session),
        "Content-Type": OFFSET_CT,
        "Upload-Offset": str(offset),
        "Content-Length": str(content_length),
    }


def head(server: GunicornServer, session: requests.Session, url: str) -> requests.Response:
    """A HEAD on a fresh connection (gunicorn's sync workers close after each response)."""
    return requests.head(url, headers=auth(session), timeout=30)


def head_offset(server: GunicornServer, session: requests.Session, url: str) -> int:
    response = head(server, session, url)
    assert response.status_code == 200, (response.status_code, response.text)
    return int(response.headers["Upload-Offset"])


def create(
    server: GunicornServer,
    session: requests.Session,
    length: int | None,
    metadata: str | None = None,
) -> str:
    """POST a new upload (deferred when ``length`` is None); return its absolute URL."""
    headers = auth(session)
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    if metadata is not None:
        headers["Upload-Metadata"] = metadata
    response = requests.post(server.files_url, headers=headers, timeout=30)
    assert response.status_code == 201, (response.status_code, response.text)
    return response.headers["Location"]


def patch(session: requests.Session, url: str, offset: int, body: bytes, **extra: str) -> requests.Response:
    headers = auth(session, **{"Content-Type": OFFSET_CT, "Upload-Offset": str(offset)}, **extra)
    return requests.patch(url, data=body, headers=headers, timeout=60)


def worker_of_inode(server: GunicornServer, inode: int) -> int | None:
    """The worker pid that has socket ``inode`` among its file descriptors."""
    target = f"socket:[{inode}]"
    for pid in server.worker_pids():
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(fd_dir / name) == target:
                    return pid
            except OSError:
                continue
    return None


def _tcp_rows() -> Iterator[list[str]]:
    """The rows of /proc/net/tcp and /proc/net/tcp6, split into columns."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            yield line.split()


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def accepted_inode(server_port: int, client_port: int) -> int | None:
    """Inode of the server-side socket of our connection once a process accepted it."""
    for columns in _tcp_rows():
        inode = int(columns[9])
        if _port(columns[1]) == server_port and _port(columns[2]) == client_port and inode != 0:
            return inode
    return None


def listening_sockets(port: int) -> int:
    """How many sockets listen on ``port``: one shared, or one per worker with ``--reuse-port``."""
    return sum(1 for columns in _tcp_rows() if columns[3] == "0A" and _port(columns[1]) == port)


#: /proc/net/tcp states of a connection that a process still has to finish with.
_OPEN_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT (the peer closed, we have not)


def server_done_with(server_port: int, client_port: int) -> bool:
    """True once the server closed its side of our connection (it finished the request).

    While the request waits in the backlog or a worker handles it, the server
    side is ESTABLISHED, or CLOSE_WAIT after the client closed; once the worker
    has answered and closed it is LAST_ACK or gone.
    """
    return not any(
        _port(columns[1]) == server_port and _port(columns[2]) == client_port and columns[3] in _OPEN_STATES
        for columns in _tcp_rows()
    )


def wait_server_done(server: GunicornServer, client_port: int) -> None:
    """Bounded wait until the server has finished with the connection from ``client_port``."""
    poll(lambda: server_done_with(server.port, client_port), f"the server to finish with port {client_port}")


def in_flight(server_port: int, client_port: int) -> int | None:
    """Bytes we sent that the worker has not read yet (our send queue plus its receive queue)."""
    ends: dict[str, int] = {}
    for columns in _tcp_rows():
        local, remote = _port(columns[1]), _port(columns[2])
        tx_queue, rx_queue = (int(q, 16) for q in columns[4].split(":"))
        if (local, remote) == (server_port, client_port):
            ends["server-rx"] = rx_queue
        elif (local, remote) == (client_port, server_port):
            ends["client-tx"] = tx_queue
    if len(ends) != 2:
        return None
    return ends["server-rx"] + ends["client-tx"]


def in_flight_all(server_port: int, client_ports: Iterable[int]) -> dict[int, int]:
    """``in_flight`` for several connections from one reading of the kernel's tables (client port -> bytes)."""
    wanted = set(client_ports)
    ends: dict[tuple[int, str], int] = {}
    for columns in _tcp_rows():
        local, remote = _port(columns[1]), _port(columns[2])
        tx_queue, rx_queue = (int(q, 16) for q in columns[4].split(":"))
        if local == server_port and remote in wanted:
            ends[(remote, "server-rx")] = rx_queue
        elif remote == server_port and local in wanted:
            ends[(local, "client-tx")] = tx_queue
    return {
        port: ends[(port, "server-rx")] + ends[(port, "client-tx")]
        for port in wanted
        if (port, "server-rx") in ends and (port, "client-tx") in ends
    }


def wait_drained(server: GunicornServer, request: RawRequest, timeout: float = 30) -> None:
    """Bounded wait until the worker has read every byte sent so far."""
    poll(lambda: in_flight(server.port, request.client_port) == 0, "the worker to read what was sent", timeout)


@dataclass
class RawResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class RawRequest:
    """One HTTP/1.1 request on its own socket, sent piece by piece.

    The constructor sends the request line and headers *without* the blank
    line that ends them, so a worker accepts the connection and then waits;
    ``worker_pid()`` names that worker. ``send``/``finish`` continue the request.
    """

    def __init__(
        self,
        server: GunicornServer,
        method: str,
        path: str,
        headers: Mapping[str, str],
        *,
        terminate_headers: bool = False,
        send_buffer: int | None = None,
    ) -> None:
        self.server = server
        self.method = method
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        if send_buffer is not None:
            # Small: what the client has sent is close to what the server has received.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.client_port = int(self.sock.getsockname()[1])
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head_bytes = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.headers_ended = terminate_headers
        self.sock.sendall(head_bytes + (b"\r\n" if terminate_headers else b""))

    def worker_pid(self, timeout: float = 15.0) -> int:
        """The gunicorn worker that accepted this connection (bounded polling of /proc)."""

        def lookup() -> int | None:
            inode = accepted_inode(self.server.port, self.client_port)
            return None if inode is None else worker_of_inode(self.server, inode)

        return poll(lookup, f"a worker to accept the connection from port {self.client_port}", timeout)

    def end_headers(self) -> None:
        if not self.headers_ended:
            self.sock.sendall(b"\r\n")
            self.headers_ended = True

    def send(self, data: bytes) -> None:
        self.end_headers()
        self.sock.sendall(data)

    def response(self) -> RawResponse:
        """Read the whole response, then close the socket."""
        self.end_headers()
        try:
            reply = http.client.HTTPResponse(self.sock, method=self.method)
            reply.begin()
            body = reply.read()
            return RawResponse(reply.status, reply.headers, body)
        finally:
            self.close()

    def finish(self, body: bytes = b"") -> RawResponse:
        self.send(body)
        return self.response()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class Trickled:
    """How a trickled body ended."""

    response: RawResponse | None  # None: the connection ended without a whole response
    sent: int  # body bytes the kernel took (some may never have reached the server)
    error: str | None  # why the sending or the reading stopped, if not by finishing


def trickle(
    request: RawRequest,
    body: bytes,
    *,
    piece: int = 64 * 1024,
    pause: float = 0.05,
    hurry: threading.Event | None = None,
    hold_last: threading.Event | None = None,
    timeout: float = 120.0,
) -> Trickled:
    """Send ``body`` slowly (``piece`` bytes, then ``pause`` seconds; no pause once ``hurry`` is set)
    from a thread, while reading the response here; then close the connection.

    With ``hold_last``, the last piece waits until that event is set: the
    request stays in flight (silent) until the test says so. The server may
    answer before the body has all arrived (a worker that stops, a refusal):
    sending then stops, and the answer is returned.
    """
    request.end_headers()
    request.sock.settimeout(timeout)
    answered = threading.Event()
    sent = 0
    errors: list[str] = []

    def send() -> None:
        nonlocal sent
        view = memoryview(body)
        try:
            while sent < len(body) and not answered.is_set():
                if hold_last is not None and len(body) - sent <= piece:
                    while not (hold_last.is_set() or answered.wait(0.05)):
                        pass
                    if answered.is_set():
                        break
                part = view[sent : sent + piece]
                request.sock.sendall(part)
                sent += len(part)
                if pause and not (hurry is not None and hurry.is_set()):
                    answered.wait(pause)
        except OSError as exc:
            errors.append(f"send: {exc!r}")

    sender = threading.Thread(target=send, name="trickle", daemon=True)
    sender.start()
    response: RawResponse | None = None
    try:
        reply = http.client.HTTPResponse(request.sock, method=request.method)
        reply.begin()
        response = RawResponse(reply.status, reply.headers, reply.read())
    except (OSError, http.client.HTTPException) as exc:
        errors.append(f"receive: {exc!r}")
    finally:
        answered.set()
        try:  # wakes a sender blocked on a full send buffer
            request.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sender.join(timeout)
        request.close()
    return Trickled(response, sent, "; ".join(errors) or None)


def request_on_other_worker(
    server: GunicornServer,
    avoid_pid: int | None,
    method: str,
    path: str,
    headers: Mapping[str, str],
) -> tuple[RawRequest, int]:
    """Start a request that is served by a worker other than ``avoid_pid``.

    If the first connection lands on ``avoid_pid``, that worker is now busy
    waiting for the rest of the headers, so a second connection must go to
    the other worker; the first one is then dropped before it was a complete
    request (the app never sees it).
    """
    first = RawRequest(server, method, path, headers)
    pid = first.worker_pid()
    if avoid_pid is None or pid != avoid_pid:
        return first, pid
    second = RawRequest(server, method, path, headers)
    try:
        other = second.worker_pid()
    finally:
        first.close()
    assert other != pid, "two connections held at once were accepted by the same sync worker"
    return second, other


# --- the legacy protocol over requests (jQuery-File-Upload's pattern) ------------------


#: The chunk size of the live legacy tests' jQuery-File-Upload pattern.
LEGACY_CHUNK = 100_000


def logged_in(server: GunicornServer, username: str) -> tuple[requests.Session, str]:
    """A session logged in through /test-login/ and its CSRF token (the csrftoken cookie)."""
    session = server.login(username)
    token = session.cookies.get("csrftoken")
    assert token, "login must set the csrftoken cookie"
    return session, token


def send_chunk(
    server: GunicornServer,
    session: requests.Session,
    token: str,
    data: bytes,
    start: int,
    upload_id: str | None,
    filename: str = "movie.mp4",
) -> requests.Response:
    """One jQuery-File-Upload chunk request."""
    piece = data[start : start + LEGACY_CHUNK]
    fields = {"csrfmiddlewaretoken": token}
    if upload_id:
        fields["upload_id"] = upload_id
    return session.post(
        server.files_url,
        data=fields,  # requests writes the fields before the file part
        files={"file": (filename, piece, "application/octet-stream")},
        headers={
            "Content-Range": f"bytes {start}-{start + len(piece) - 1}/{len(data)}",
            "Content-Disposition": f'attachment; filename="{filename}"',
            "X-Requested-With": "XMLHttpRequest",
        },
        timeout=30,
    )


def send_complete(
    server: GunicornServer, session: requests.Session, token: str, upload_id: str, md5: str
) -> requests.Response:
    return session.post(
        f"{server.files_url}complete/",
        data={"csrfmiddlewaretoken": token, "upload_id": upload_id, "md5": md5},
        headers={"X-Requested-With": "XMLHttpRequest"},
        timeout=30,
    )


class LiveStorage(FileSystemStorage):
    """TUSBRIDGE_STORAGE for live servers: a FileSystemStorage in $TUSBRIDGE_LIVE_STORAGE_DIR.

    The test settings have no MEDIA_ROOT, so Django's default storage would
    write into the working directory; this one writes where the test says.
    """

    def __init__(self) -> None:
        super().__init__(location=os.environ["TUSBRIDGE_LIVE_STORAGE_DIR"])
