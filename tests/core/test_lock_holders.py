"""Locks whose holder died: recognised from the token, and freed by the next request.

The unit tests make tokens in real child processes and let them exit or kill
them. The live test kills a gunicorn worker in the middle of a PATCH, with a
lock TTL far longer than the lock wait: the next request can only succeed if
it recognised the dead holder and removed its lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support.data import upload_id_of
from tests.support.faults import login, settled_offset, tus_create, tus_patch, tus_patch_request
from tests.support.live import HAS_PROC_NET, data_of, is_locked, poll, wait_drained
from tests.support.servers import GunicornServer
from tusbridge.holders import holder_is_gone, new_token

MAKE_TOKEN = "from tusbridge.holders import new_token; print(new_token(), flush=True)"


def token_of_child(code: str) -> tuple[subprocess.Popen[str], str]:
    """A child process that prints a lock token made in it (and then runs the rest of ``code``)."""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, child.stdout.readline().strip()


def test_a_token_of_this_process_is_not_gone() -> None:
    token = new_token()
    assert f":{os.getpid()}:" in token
    assert not holder_is_gone(token)


def test_a_token_of_a_process_that_exited_is_gone() -> None:
    child, token = token_of_child(MAKE_TOKEN)
    child.wait(timeout=30)
    assert holder_is_gone(token)


def test_a_token_of_a_live_process_is_not_gone_until_it_is_killed() -> None:
    child, token = token_of_child(MAKE_TOKEN + "; import time; time.sleep(60)")
    try:
        assert not holder_is_gone(token)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert holder_is_gone(token)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda t: "0" + t, id="other-namespace"),
        pytest.param(lambda t: t.rsplit(":", 1)[1], id="random-only"),
        pytest.param(lambda t: t.replace(":", ":x", 1), id="pid-not-a-number"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_tokens_from_elsewhere_are_never_taken_for_gone(mangle: Callable[[str], str]) -> None:
    """Another machine, container or format: the holder cannot be checked, so its lock waits for the TTL."""
    child, token = token_of_child(MAKE_TOKEN)
    child.wait(timeout=30)
    assert holder_is_gone(token)
    assert not holder_is_gone(mangle(token))


@pytest.mark.live
@pytest.mark.skipif(not HAS_PROC_NET, reason="finds the worker to kill through /proc")
def test_the_lock_of_a_killed_worker_is_freed_by_the_next_request(
    gunicorn_factory: Callable[..., GunicornServer],
) -> None:
    """TTL 60 s, wait 3 s: a HEAD and a PATCH after the kill succeed only if the dead lock was removed."""
    server = gunicorn_factory({"TUSBRIDGE_TEST_LOCK_TTL": "60", "TUSBRIDGE_TEST_LOCK_WAIT": "3"}, worker_class="sync")
    user = login(server, "dead-holder")
    data = os.urandom(3 * 1024 * 1024)
    url = tus_create(server, user, len(data))
    upload_id = upload_id_of(url)
    assert tus_patch(server, user, url, 0, data[:1000]).status == 204

    request = tus_patch_request(server, user, url, 1000, len(data) - 1000)
    pid = request.worker_pid()
    request.send(data[1000:200_000])
    wait_drained(server, request)
    poll(lambda: is_locked(server, upload_id), "the PATCH to hold the upload's lock")
    os.kill(pid, signal.SIGKILL)
    request.close()
    poll(lambda: pid not in server.worker_pids(), f"worker {pid} to be gone")

    offset = settled_offset(url, user, timeout=30)
    assert 1000 <= offset <= 200_000
    assert data_of(server, upload_id)[:offset] == data[:offset]
    assert tus_patch(server, user, url, offset, data[offset:]).status == 204
    assert data_of(server, upload_id) == data
    assert "was locked by a process that is gone" in server.log()
