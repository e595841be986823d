"""Anonymous creations from one address against a live gunicorn: the default limits hold under a flood.

The server allows anonymous uploads with tusbridge's default limits per client
address (TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS 20, TUSBRIDGE_MAX_BYTES_PER_ADDRESS
10 GiB, TUSBRIDGE_CREATIONS_PER_MINUTE 60). A few threads send 1000 tus
creations, each declaring 1 GiB, as fast as they can, all from 127.0.0.1 and
spread over both workers. The byte limit binds first: 10 GiB / 1 GiB = 10.

Checked:

- exactly 10 creations answer 201, every other one 429 with a Retry-After in
  seconds, and nothing else (no 5xx, however the requests race);
- afterwards Redis holds exactly 10 upload records and the upload directory
  exactly 10 data files (and their 10 record copies): refused creations leave
  nothing behind;
- deleting one upload frees its share (a new 1 GiB creation succeeds, the next
  one is refused again), and so does completing one; in the end the records
  are exactly those of the accepted creations.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.data import upload_id_of
from tests.support.live import OFFSET_CT, TUS
from tests.support.servers import GunicornServer
from tusbridge import conf

pytestmark = pytest.mark.live

GIB = 1024**3
ATTEMPTS = 1000
THREADS = 4
EXPECTED = conf.DEFAULTS["MAX_BYTES_PER_ADDRESS"] // GIB  # 10: the byte limit binds before the 20 uploads


def create(http: requests.Session, server: GunicornServer, length: int = GIB) -> requests.Response:
    return http.post(server.files_url, headers={**TUS, "Upload-Length": str(length)}, timeout=60)


def upload_records(server: GunicornServer) -> list[bytes]:
    return [key for key in server.keys() if b":upload:" in key]


def record_state(server: GunicornServer, key: bytes) -> str:
    client = server.redis_client()
    try:
        return (client.hget(key, "state") or b"").decode()
    finally:
        client.close()


def data_files(server: GunicornServer) -> tuple[list[str], list[str]]:
    """(data files, record copies) in the upload directory."""
    names = sorted(path.name for path in server.upload_dir.iterdir())
    return [n for n in names if "." not in n], [n for n in names if n.endswith(".info")]


def test_a_flood_of_anonymous_creations_gets_exactly_the_allowed_share(
    gunicorn_factory: Callable[..., GunicornServer],
) -> None:
    assert EXPECTED == 10 and conf.DEFAULTS["MAX_UPLOADS_PER_ADDRESS"] == 20
    assert conf.DEFAULTS["CREATIONS_PER_MINUTE"] >= EXPECTED + 3  # the creations of this test stay under it
    server = gunicorn_factory({"TUSBRIDGE_TEST_ALLOW_ANONYMOUS": "1"})
    local = threading.local()

    def attempt(_: int) -> tuple[int, str | None, str | None]:
        http = getattr(local, "http", None)
        if http is None:
            http = local.http = requests.Session()
        response = create(http, server)
        return response.status_code, response.headers.get("Retry-After"), response.headers.get("Location")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        answers = list(pool.map(attempt, range(ATTEMPTS)))
    seconds = time.monotonic() - started

    statuses = Counter(status for status, _, _ in answers)
    print(f"\n{ATTEMPTS} creations of 1 GiB from one address in {seconds:.1f} s: {dict(statuses)}")
    assert statuses == {201: EXPECTED, 429: ATTEMPTS - EXPECTED}, statuses
    refused = [(retry, location) for status, retry, location in answers if status == 429]
    assert all(retry is not None and retry.isdigit() and int(retry) >= 1 for retry, _ in refused)
    assert all(location is None for _, location in refused)
    created = [location for status, _, location in answers if status == 201]
    assert all(created) and len(set(created)) == EXPECTED

    # Nothing left by the refused ones.
    ids = sorted(upload_id_of(url) for url in created if url)
    records = upload_records(server)
    data, copies = data_files(server)
    print(f"upload records in Redis: {len(records)}, data files: {len(data)}, record copies: {len(copies)}")
    assert len(records) == EXPECTED
    assert data == ids
    assert copies == [f"{i}.info" for i in ids]

    http = requests.Session()
    # Termination frees a share: one more 1 GiB upload fits, and then no more.
    deleted = http.delete(created[0], headers=TUS, timeout=30)
    assert deleted.status_code == 204, deleted.text
    assert create(http, server).status_code == 201
    assert create(http, server).status_code == 429

    # Completion frees a share too: room for a small upload after another deletion...
    assert http.delete(created[1], headers=TUS, timeout=30).status_code == 204
    small = create(http, server, length=1000)
    assert small.status_code == 201, small.text
    assert create(http, server).status_code == 429  # 9 GiB + 1000 bytes + 1 GiB is past the limit
    done = http.patch(
        small.headers["Location"],
        data=b"x" * 1000,
        headers={**TUS, "Content-Type": OFFSET_CT, "Upload-Offset": "0"},
        timeout=30,
    )
    assert done.status_code == 204 and done.headers["Upload-Offset"] == "1000"
    # ... and once it is complete, a whole 1 GiB fits again.
    assert create(http, server).status_code == 201
    assert create(http, server).status_code == 429
    states = Counter(record_state(server, key) for key in upload_records(server))
    # 10 in progress, the completed one, and the 2 terminated ones (they answer 410 for a while).
    assert states == {"uploading": EXPECTED, "complete": 1, "terminated": 2}, states
