"""Helpers shared by the fault-injection tests (tests/faults/).

They speak both protocols over raw sockets (``tests.support.live.RawRequest``)
so a test can stop in the middle of a body, find the gunicorn worker that is
reading it and kill that worker, and they read what the server stored (data
file, Redis record) to check that no acknowledged byte was lost and no
unacknowledged byte was counted.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from tests.support.data import sha256
from tests.support.live import (
    OFFSET_CT,
    TUS_VERSION,
    RawRequest,
    RawResponse,
    cookie_header,
    path_of,
    poll,
)
from tests.support.servers import ROOT

if TYPE_CHECKING:
    from tests.support.servers import GunicornServer


def file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Every file of a directory: name -> (size, sha256)."""
    result = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            data = path.read_bytes()
            result[path.name] = (len(data), sha256(data))
    return result


# --- who is asking -------------------------------------------------------------------


@dataclass
class User:
    """A logged-in requests session with what raw requests need from it."""

    session: requests.Session

    @property
    def cookie(self) -> str:
        return cookie_header(self.session)

    @property
    def csrf(self) -> str:
        token = self.session.cookies.get("csrftoken")
        assert token, "the test login must set the csrftoken cookie"
        return token

    def tus(self, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": TUS_VERSION, "Cookie": self.cookie, **extra}


def login(server: GunicornServer, username: str) -> User:
    return User(server.login(username))


# --- tus -------------------------------------------------------------------------


def tus_create(server: GunicornServer, user: User, length: int | None, timeout: float = 30) -> str:
    headers = user.tus()
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    response = requests.post(server.files_url, headers=headers, timeout=timeout)
    assert response.status_code == 201, (response.status_code, response.text)
    return response.headers["Location"]


def tus_head(url: str, user: User, timeout: float = 30) -> requests.Response:
    return requests.head(url, headers=user.tus(), timeout=timeout)


def settled_offset(url: str, user: User, what: str = "HEAD", timeout: float = 60) -> int:
    """HEAD until it answers 200 (a dead worker's lock expires first: 423 meanwhile); the offset."""

    def attempt() -> int | None:
        try:
            response = tus_head(url, user)
        except requests.RequestException:
            return None
        if response.status_code in (423, 503):
            return None
        assert response.status_code == 200, (what, response.status_code, response.text)
        return int(response.headers["Upload-Offset"])

    return poll(attempt, f"{what} of {url} to answer 200", timeout=timeout, interval=0.1)


def tus_patch_request(
    server: GunicornServer, user: User, url: str, offset: int, length: int, **extra: str
) -> RawRequest:
    """A PATCH whose headers are sent but not ended: a worker accepts it and waits."""
    headers = user.tus(
        **{"Content-Type": OFFSET_CT, "Upload-Offset": str(offset), "Content-Length": str(length)}, **extra
    )
    return RawRequest(server, "PATCH", path_of(url), headers)


def tus_patch(server: GunicornServer, user: User, url: str, offset: int, body: bytes, **extra: str) -> RawResponse:
    return tus_patch_request(server, user, url, offset, len(body), **extra).finish(body)


# --- the legacy protocol -----------------------------------------------------------


def multipart(fields: Mapping[str, str], data: bytes, filename: str = "data.bin") -> tuple[str, bytes]:
    """(Content-Type, body) of a jQuery-File-Upload chunk: the fields first, then the file part."""
    boundary = "----tusbridgefault" + secrets.token_hex(16)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def legacy_chunk_request(
    server: GunicornServer,
    user: User,
    upload_id: str | None,
    start: int,
    chunk: bytes,
    total: int,
) -> tuple[RawRequest, bytes]:
    """A legacy chunk POST with its headers sent but not ended, and the body still to send."""
    fields = {"csrfmiddlewaretoken": user.csrf}
    if upload_id:
        fields["upload_id"] = upload_id
    content_type, body = multipart(fields, chunk)
    headers = {
        "Cookie": user.cookie,
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}",
        "X-Requested-With": "XMLHttpRequest",
    }
    return RawRequest(server, "POST", "/files/", headers), body


def legacy_chunk(
    server: GunicornServer, user: User, upload_id: str | None, start: int, chunk: bytes, total: int
) -> RawResponse:
    request, body = legacy_chunk_request(server, user, upload_id, start, chunk, total)
    return request.finish(body)


def legacy_complete(server: GunicornServer, user: User, upload_id: str, digest: str, timeout: float = 30):
    return user.session.post(
        f"{server.files_url}complete/",
        data={"csrfmiddlewaretoken": user.csrf, "upload_id": upload_id, "md5": digest},
        headers={"X-Requested-With": "XMLHttpRequest"},
        timeout=timeout,
    )


def json_of(response: RawResponse) -> Any:
    return json.loads(response.body or b"null")


# --- reading a response that may never come --------------------------------------------


def try_response(request: RawRequest, timeout: float) -> RawResponse | None:
    """The response if the server sent a whole one, else None (the connection died first)."""
    try:
        request.sock.settimeout(timeout)
        reply = http.client.HTTPResponse(request.sock, method=request.method)
        reply.begin()
        body = reply.read()
        return RawResponse(reply.status, reply.headers, body)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        request.close()


# --- the kernel's view of a connection ------------------------------------------------


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for gunicorn's master counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


# --- manage.py with the server's settings ----------------------------------------------


def server_env(server: GunicornServer, upload_dir: Path | None = None) -> dict[str, str]:
    """The environment a manage.py command needs to see what ``server`` sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSBRIDGE_TEST_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "TUSBRIDGE_TEST_REDIS_URL": server.redis.url,
            "TUSBRIDGE_TEST_KEY_PREFIX": server.key_prefix,
            "TUSBRIDGE_TEST_UPLOAD_DIR": str(upload_dir or server.upload_dir),
            "TUSBRIDGE_TEST_DB_PATH": str(server.db_path),
        }
    )
    env.update(server.extra_env)
    return env


def manage(server: GunicornServer, *args: str, upload_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m django <args>`` with the server's settings (what an operator runs)."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=server_env(server, upload_dir),
        capture_output=True,
        text=True,
        timeout=120,
    )


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def send_and_answer(request: RawRequest, body: bytes, timeout: float = 60) -> RawResponse | None:
    """Send ``body`` from a thread while reading the response here.

    A server that refuses a request part-way (507, 500) answers and closes
    without reading the rest of the body; reading while sending gets that
    answer instead of a broken pipe.
    """
    import threading

    request.end_headers()

    def send() -> None:
        try:
            request.sock.sendall(body)
        except OSError:
            pass  # the server stopped reading: its answer says why

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    reply = try_response(request, timeout)
    sender.join(timeout)
    return reply


class PinnedWorker:
    """Keep one of a 2-worker server's workers busy, so every request goes to the other one.

    Needs sync workers (start the server with TUSBRIDGE_TEST_WORKER_CLASS=sync
    where the harness defaults to a threaded worker). A connection whose request
    headers never end holds a sync worker; with
    the other worker's pid known, a test can bring that worker's own state
    (its Redis connection pool) to where it wants before the fault.
    """

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.holder = RawRequest(server, "GET", "/test-whoami/", {"X-Hold": "1"})
        held = self.holder.worker_pid()
        others = [pid for pid in server.worker_pids() if pid != held]
        assert len(others) == 1, "pinning needs a server with exactly 2 workers"
        self.pid = others[0]

    def close(self) -> None:
        self.holder.close()

    def __enter__(self) -> PinnedWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
