"""tusbridge.gunicorn.workers.ThreadWorker: gthread whose threads wait briefly for a connection's next request.

The probe subclass (tests/support/worker_probe.py) logs every hand-over of a
connection to the thread pool and every wait for a new connection's first
bytes, so these tests see which requests went through gunicorn's main
thread. Long linger times make the outcomes certain
on a slow machine: a thread that should not wait would hold a request up
for longer than the client's timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import cookie_header, create, lock_key, patch, path_of, poll
from tests.support.servers import ROOT, GunicornServer, free_port

pytestmark = pytest.mark.live

PROBE = "tests.support.worker_probe.CountingThreadWorker"


def _server(
    factory: Callable[..., GunicornServer], log: Path, linger: float, threads: int = 4, keep_alive: int = 120
) -> GunicornServer:
    env = {
        "TUSBRIDGE_TEST_HANDOVER_LOG": str(log),
        "TUSBRIDGE_TEST_DATA_WAIT_LOG": str(log.with_name(log.name + ".waits")),
        "TUSBRIDGE_TEST_KEEPALIVE_LINGER": str(linger),
        # The wait never outlasts gunicorn's keep-alive (2 s by default).
        "GUNICORN_CMD_ARGS": f"--keep-alive {keep_alive}",
    }
    return factory(env, workers=1, worker_class=PROBE, threads=threads)


def _handovers(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _data_waits(log: Path) -> int:
    """How often gthread waited for a new connection's first bytes."""
    return _handovers(log.with_name(log.name + ".waits"))


def _get(connection: http.client.HTTPConnection) -> None:
    connection.request("GET", "/test-whoami/")
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert response.getheader("Connection", "").lower() != "close"


def _connect(server: GunicornServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)


def test_back_to_back_requests_stay_with_the_thread_that_answered(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """20 requests on one connection: one hand-over with lingering, one per request without it."""
    for linger, expected in ((5.0, 1), (0.0, 20)):
        log = tmp_path / f"handovers-{linger}"
        server = _server(gunicorn_factory, log, linger)
        connection = _connect(server)
        before = _handovers(log)
        for _ in range(20):
            _get(connection)
        handovers = _handovers(log) - before  # counted before the close, which may make one more
        connection.close()
        assert handovers == expected, f"linger {linger}"


@pytest.mark.parametrize(
    ("linger", "keep_alive", "pause"),
    [
        (0.2, 120, 1.0),  # the linger ran out
        (60, 3, 4.5),  # the wait ended with the keep-alive time (3 s), then the main thread kept it 3 s more
    ],
)
def test_a_quiet_connection_goes_back_to_the_main_thread(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path, linger: float, keep_alive: int, pause: float
) -> None:
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, linger, keep_alive=keep_alive)
    connection = _connect(server)
    before = _handovers(log)
    _get(connection)
    time.sleep(pause)
    _get(connection)
    handovers = _handovers(log) - before
    connection.close()
    assert handovers == 2


def test_the_last_idle_thread_does_not_wait(gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path) -> None:
    """One thread and a linger of 60 s: a second client is still answered at once.

    Were the only thread to wait on the first client's idle connection, the
    second client's request would time out (10 s) long before the linger ends.
    """
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 60.0, threads=1)
    first, second = _connect(server), _connect(server)
    _get(first)
    _get(second)  # first stays open and idle meanwhile
    _get(first)  # handed back to the main thread, not dropped
    first.close()
    second.close()


def test_threads_wait_only_while_another_is_idle(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """Two threads, a linger of 60 s, three clients each keeping its connection open: all are answered.

    The first client's thread waits (the other thread is idle); the second
    client's thread then sees no idle thread and hands its connection back,
    so it is free for the third.
    """
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 60.0, threads=2)
    clients = [_connect(server) for _ in range(3)]
    for client in clients:
        _get(client)
    for client in clients:
        _get(client)
        client.close()


def test_a_client_that_closes_while_a_thread_waits_is_seen_by_that_thread(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """A client closing its kept-alive connection ends the wait: no second hand-over to find the end."""
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 60.0, threads=2)
    before = _handovers(log)
    for _ in range(10):
        client = _connect(server)
        _get(client)
        client.close()
        time.sleep(0.2)  # the waiting thread sees the end and is idle again before the next client
    last = _connect(server)
    _get(last)
    last.close()
    assert _handovers(log) - before == 11


def test_a_client_closing_a_kept_alive_connection_is_seen_by_the_main_thread(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """No linger, so the connection waits in the main thread; the client's close needs no second hand-over."""
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 0.0)
    connection = _connect(server)
    before = _handovers(log)
    _get(connection)
    assert connection.sock is not None
    connection.sock.shutdown(socket.SHUT_WR)
    assert connection.sock.recv(1) == b""  # the server closed its end too
    connection.close()
    assert _handovers(log) - before == 1


def test_a_new_connection_is_served_without_a_pool_thread_waiting_for_its_request(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """No pool thread waits for a new connection's first bytes (gthread builds a selector per connection).

    One request is on the socket before the worker accepts it (the worker is
    stopped meanwhile); the other client stays silent at first, and the main
    thread watches it until it sends. Each goes to a pool thread once.
    """
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 0.0)
    whoami = _connect(server)
    whoami.request("GET", "/test-whoami/")
    pid = json.loads(whoami.getresponse().read())["pid"]
    whoami.close()
    request = f"GET /test-whoami/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode()

    before = _handovers(log)
    os.kill(pid, signal.SIGSTOP)
    try:
        eager = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        eager.sendall(request)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _read_all(eager).startswith(b"HTTP/1.1 200 ")

    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    time.sleep(0.5)
    slow.sendall(request)
    assert _read_all(slow).startswith(b"HTTP/1.1 200 ")
    assert _data_waits(log) == 0
    assert _handovers(log) - before == 2


@pytest.mark.parametrize(("size", "next_answered"), [(24_000, True), (100_000, False)])
def test_a_body_the_application_left_unread_is_drained_within_gunicorns_limit(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path, size: int, next_answered: bool
) -> None:
    """A POST refused without reading its body, then a GET on the same connection.

    Under gunicorn's drain limit (64 KiB) the rest of the body is read and the
    GET answered; over it the connection is closed rather than read on.
    """
    server = _server(gunicorn_factory, tmp_path / "handovers", 0.0)
    connection = _connect(server)
    line = b"GET /nowhere/ HTTP/1.1\r\n"
    connection.request("POST", "/test-whoami/", body=line * (size // len(line)), headers={"Content-Type": "text/plain"})
    refused = connection.getresponse()
    refused.read()
    assert refused.status in (403, 405)
    if next_answered:
        _get(connection)
    else:
        with pytest.raises(http.client.RemoteDisconnected):
            _get(connection)
    connection.close()


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_an_application_without_django_is_served(tmp_path: Path) -> None:
    """The worker class reads tusbridge's settings where Django has them, and serves any other WSGI application."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"]
            + ["--worker-class", "tusbridge.gunicorn.workers.ThreadWorker", "tests.plain_wsgi:application"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        connection = _wait_for_port(port, process)
        for path in ("/first", "/second"):  # the second on the kept-alive connection
            connection.request("GET", path)
            response = connection.getresponse()
            assert (response.status, response.read()) == (200, path.encode()), log.read_text()
        connection.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not start")


# Short requests answered on the main thread ------------------------------------


def _raw(server: GunicornServer, request: str, *parts: bytes) -> socket.socket:
    """A new connection that sent ``request`` (and then ``parts``); nothing read yet."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(request.encode())
    for part in parts:
        time.sleep(0.3)
        sock.sendall(part)
    return sock


def _response_head(sock: socket.socket) -> tuple[str, dict[str, str]]:
    """The status line and headers of the next response (a HEAD's or an OPTIONS' has no body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    status, *lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return status, {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}


def _tus_head(server: GunicornServer, session: requests.Session, url: str, extra: str = "") -> str:
    return (
        f"HEAD {path_of(url)} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTus-Resumable: 1.0.0\r\n"
        f"Cookie: {cookie_header(session)}\r\n{extra}\r\n"
    )


Upload = tuple[GunicornServer, Path, str, requests.Session]


@pytest.fixture
def upload(gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path) -> Upload:
    """A one-worker server with the probe, a logged-in session and an upload holding 4 of its 10 bytes."""
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 0.0)
    session = server.login("main-thread")
    url = create(server, session, 10)
    assert patch(session, url, 0, b"abcd").status_code == 204
    return server, log, url, session


def test_head_and_options_are_answered_on_the_main_thread(upload: Upload) -> None:
    """HEAD and OPTIONS on new and kept-alive connections never go to a pool thread; a GET does."""
    server, log, url, session = upload
    before = _handovers(log)
    sock = _raw(server, _tus_head(server, session, url))
    assert _response_head(sock)[1]["upload-offset"] == "4"
    sock.sendall(_tus_head(server, session, url).encode())  # again, once the main thread polls it
    status, headers = _response_head(sock)
    assert (status, headers["upload-offset"]) == ("HTTP/1.1 200 OK", "4")
    sock.close()
    options = _raw(server, f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n")
    status, headers = _response_head(options)
    assert (status, headers["tus-version"]) == ("HTTP/1.1 204 No Content", "1.0.0")
    options.close()
    assert _handovers(log) == before

    _get(_connect(server))
    assert _handovers(log) == before + 1


def test_a_head_with_a_body_or_unfinished_headers_goes_to_a_pool_thread(
    upload: Upload,
) -> None:
    """The main thread never reads a body or waits for the rest of a request: a pool thread does, and answers."""
    server, log, url, session = upload
    before = _handovers(log)
    with_body = _raw(server, _tus_head(server, session, url, "Content-Length: 3\r\n") + "xyz")
    for again in (False, True):  # then the same again on the kept-alive connection
        if again:
            with_body.sendall(_tus_head(server, session, url, "Content-Length: 3\r\n").encode() + b"xyz")
        status, headers = _response_head(with_body)
        assert (status, headers["upload-offset"]) == ("HTTP/1.1 200 OK", "4")
    with_body.close()
    assert _handovers(log) == before + 2

    request = _tus_head(server, session, url)
    cut = request.index("Tus-Resumable")
    unfinished = _raw(server, request[:cut], request[cut:].encode())
    status, headers = _response_head(unfinished)
    assert (status, headers["upload-offset"]) == ("HTTP/1.1 200 OK", "4")
    unfinished.close()
    assert _handovers(log) == before + 3


def test_a_head_that_must_wait_for_the_upload_moves_off_the_main_thread(
    upload: Upload,
) -> None:
    """While a HEAD waits for another request to let go of its upload, the main thread answers others.

    The lock is held by a holder that never lets go until the test removes
    it, so the HEAD cannot be answered before; on the main thread it would
    keep the OPTIONS unanswered for the whole lock wait (5 s).
    """
    server, log, url, session = upload
    client = server.redis_client()
    try:
        assert client.set(lock_key(server, upload_id_of(url)), "someone-else", nx=True, px=120_000)
        before = _handovers(log)
        waiting = _raw(server, _tus_head(server, session, url))
        poll(lambda: _handovers(log) > before or None, "the HEAD moving to a pool thread")
        options = _raw(server, f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n")
        options.settimeout(3)
        assert _response_head(options)[0] == "HTTP/1.1 204 No Content"
        options.close()
        assert select.select([waiting], [], [], 0)[0] == []  # not answered while the lock is held
        client.delete(lock_key(server, upload_id_of(url)))
    finally:
        client.close()
    for again in (False, True):  # the moved request, then another on the same connection
        if again:
            waiting.sendall(_tus_head(server, session, url).encode())
        status, headers = _response_head(waiting)
        assert (status, headers["upload-offset"]) == ("HTTP/1.1 200 OK", "4")
    waiting.close()
    assert _handovers(log) == before + 1
