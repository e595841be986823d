"""Checksums of request bodies, computed while the body streams in."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Callable
from typing import Protocol


class _Hash(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """CRC-32 (as zlib and the tus clients compute it), big-endian bytes like a hashlib digest."""

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


ALGORITHMS: dict[str, Callable[[], _Hash]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "crc32": _Crc32,
}


class Checksum:
    """A running digest and the value the client said the body has."""

    def __init__(self, algorithm: str, expected: bytes) -> None:
        self.algorithm = algorithm
        self.expected = expected
        self._hash = ALGORITHMS[algorithm]()

    def update(self, data: bytes, /) -> None:
        self._hash.update(data)

    def matches(self) -> bool:
        return hmac.compare_digest(self._hash.digest(), self.expected)


def parse_checksum(value: str) -> Checksum:
    """``Upload-Checksum: <algorithm> <base64 digest>``; ValueError when unusable."""
    algorithm, sep, encoded = value.strip().partition(" ")
    if not sep or not algorithm or not encoded or " " in encoded:
        raise ValueError("Upload-Checksum must be '<algorithm> <base64 digest>'")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Checksum algorithm {algorithm!r} is not supported (supported: {', '.join(ALGORITHMS)})")
    try:
        expected = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("Upload-Checksum digest is not valid base64") from None
    checksum = Checksum(algorithm, expected)
    if len(expected) != len(checksum._hash.digest()):
        raise ValueError(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return checksum
