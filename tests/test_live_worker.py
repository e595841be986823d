"""tusbridge.workers.ThreadWorker: gthread whose threads wait briefly for a connection's next request.

The probe subclass (tests/worker_probe.py) logs every hand-over of a
connection to the thread pool, so these tests see which requests went
through gunicorn's main thread. Long linger times make the outcomes certain
on a slow machine: a thread that should not wait would hold a request up
for longer than the client's timeout.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import GunicornServer

pytestmark = pytest.mark.live

PROBE = "tests.worker_probe.CountingThreadWorker"


def _server(
    factory: Callable[..., GunicornServer], log: Path, linger: float, threads: int = 4, keep_alive: int = 120
) -> GunicornServer:
    env = {
        "TUSBRIDGE_TEST_HANDOVER_LOG": str(log),
        "TUSBRIDGE_TEST_KEEPALIVE_LINGER": str(linger),
        # The wait never outlasts gunicorn's keep-alive (2 s by default).
        "GUNICORN_CMD_ARGS": f"--keep-alive {keep_alive}",
    }
    return factory(env, workers=1, worker_class=PROBE, threads=threads)


def _handovers(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


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
