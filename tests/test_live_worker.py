"""tusbridge.workers.ThreadWorker: gthread whose threads wait briefly for a connection's next request.

The probe subclass (tests/worker_probe.py) logs every hand-over of a
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
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GunicornServer, free_port

pytestmark = pytest.mark.live

PROBE = "tests.worker_probe.CountingThreadWorker"


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


def test_a_new_connection_with_its_request_waiting_is_served_without_a_wait(
    gunicorn_factory: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    """The request is on the socket before the worker accepts it (the worker is stopped meanwhile): no wait.

    A client that stays silent at first still goes through gthread's wait, and is answered.
    """
    log = tmp_path / "handovers"
    server = _server(gunicorn_factory, log, 0.0)
    whoami = _connect(server)
    whoami.request("GET", "/test-whoami/")
    pid = json.loads(whoami.getresponse().read())["pid"]
    whoami.close()
    request = f"GET /test-whoami/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n".encode()

    before = _data_waits(log)
    os.kill(pid, signal.SIGSTOP)
    try:
        eager = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        eager.sendall(request)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _read_all(eager).startswith(b"HTTP/1.1 200 ")
    assert _data_waits(log) - before == 0

    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    time.sleep(0.5)
    slow.sendall(request)
    assert _read_all(slow).startswith(b"HTTP/1.1 200 ")
    assert _data_waits(log) - before == 1


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
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2"]
            + ["--worker-class", "tusbridge.workers.ThreadWorker", "tests.plain_wsgi:application"],
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
