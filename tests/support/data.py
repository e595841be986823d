"""Test data and what every kind of test computes on it: payloads, digests, base64, upload ids."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

PayloadKind = Literal["sha256", "random", "hex"]


def payload(size: int, seed: int = 0, *, kind: PayloadKind = "sha256") -> bytes:
    """``size`` deterministic bytes in which a misplaced, repeated or zeroed byte changes every digest.

    The same ``(size, seed, kind)`` always gives the same bytes; ``kind`` picks the pattern:

    - ``"sha256"``: SHA-256 digests of ``"<seed>:<counter>"``, end to end (the legacy tests);
    - ``"random"``: ``random.Random(seed).randbytes(size)`` (the tus and fault-injection tests);
    - ``"hex"``: hex SHA-256 of ``(seed, counter)`` packed as two 64-bit big-endian numbers,
      so printable ASCII only (the live tus tests).
    """
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind not in ("sha256", "hex"):
        raise ValueError(f"unknown payload kind {kind!r}")
    out = bytearray()
    counter = 0
    while len(out) < size:
        if kind == "sha256":
            out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        else:
            out += sha256(struct.pack(">QQ", seed, counter)).encode()
        counter += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while piece := fh.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def b64(value: bytes | str) -> str:
    """Base64 of ``value`` (text as UTF-8), as in an Upload-Metadata value."""
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode("ascii")


def upload_id_of(url: str) -> str:
    """The upload id: the last path segment of an upload URL."""
    return urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
