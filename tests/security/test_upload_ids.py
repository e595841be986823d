"""Upload ids are unguessable: 128 random bits as 32 lowercase hex digits, never chosen by the client.

Who may use an id once it is known is in tests/security/test_ownership.py.
"""

from __future__ import annotations

import base64
import re

import pytest
import redis
from django.test import Client

from tests.support.data import payload, upload_id_of
from tests.support.fuzz import count
from tests.support.legacy import FILES, post_chunk
from tests.support.tus import Tus, snapshot

pytestmark = pytest.mark.django_db

ID = re.compile(r"[0-9a-f]{32}")
N = 1000


def assert_random_128_bits(ids: list[str]) -> None:
    """Every id is 32 lowercase hex digits, all differ, and all 128 bits vary.

    With 1000 ids, a random hex digit position shows all 16 values (a position
    missing one happens with probability ~1e-26), and each bit is set in
    40-60% of the ids (6 standard deviations). A UUID (fixed version and
    variant nibbles), a counter, a timestamp or a hash of what the client sent
    fails one of these.
    """
    assert all(ID.fullmatch(i) for i in ids), [i for i in ids if not ID.fullmatch(i)][:5]
    assert len(set(ids)) == len(ids)
    for position in range(32):
        digits = {i[position] for i in ids}
        assert len(digits) == 16, f"hex digit {position} takes only {sorted(digits)}"
    numbers = [int(i, 16) for i in ids]
    for bit in range(128):
        share = sum(n >> bit & 1 for n in numbers) / len(numbers)
        assert 0.4 < share < 0.6, f"bit {bit} is set in {share:.0%} of the ids"


def test_tus_ids_are_128_random_bits(t: Tus) -> None:
    """1000 uploads with the same length and metadata: 1000 unrelated ids."""
    metadata = "filename " + base64.b64encode(b"same.bin").decode()
    ids = [upload_id_of(t.new_upload(1, metadata=metadata)) for _ in range(N)]
    count("upload ids generated (tus)", N)
    assert_random_128_bits(ids)


def test_legacy_ids_are_128_random_bits(client_logged_in: Client) -> None:
    ids = []
    for _ in range(N // 4):
        response = post_chunk(client_logged_in, b"abc", url=FILES, start=0, total=10, filename="same.bin")
        assert response.status_code == 200, response.content
        ids.append(response.json()["upload_id"])
    count("upload ids generated (legacy)", len(ids))
    assert all(ID.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


CHOSEN = "0123456789abcdef0123456789abcdef"


def test_a_client_cannot_choose_its_upload_id(t: Tus, client_logged_in: Client, redis_client: redis.Redis) -> None:
    """No request creates an upload under an id the client names."""
    before = snapshot(redis_client)
    # POST to an upload URL is not creation.
    assert t.create(5, path=f"/files/{CHOSEN}").status_code == 405
    # A legacy first chunk that names an id it does not own creates nothing.
    response = post_chunk(client_logged_in, b"abc", url=FILES, start=0, total=3, upload_id=CHOSEN)
    assert response.status_code == 404
    # PATCH/HEAD on an unknown id do not create it.
    assert t.patch(f"/files/{CHOSEN}", b"abc", 0).status_code == 404
    assert t.head(f"/files/{CHOSEN}").status_code == 404
    assert snapshot(redis_client) == before
    # Metadata that looks like an id is only metadata.
    for key in ("id", "upload_id", "uuid", "filename"):
        url = t.new_upload(3, metadata=f"{key} " + base64.b64encode(CHOSEN.encode()).decode())
        assert CHOSEN not in url
    # The legacy file name is not the id either.
    response = post_chunk(client_logged_in, payload(3), url=FILES, start=None, filename=CHOSEN)
    assert response.status_code == 200 and response.json()["upload_id"] != CHOSEN
    assert list(redis_client.scan_iter(match=f"*{CHOSEN}*")) == []


def test_ids_do_not_depend_on_time_or_order(t: Tus) -> None:
    """Consecutive ids share no prefix beyond chance (no timestamp or counter at the front)."""
    ids = [upload_id_of(t.new_upload(1)) for _ in range(200)]
    shared = sum(1 for a, b in zip(ids, ids[1:], strict=False) if a[:3] == b[:3])
    assert shared <= 3, f"{shared} consecutive pairs share their first 3 hex digits"
