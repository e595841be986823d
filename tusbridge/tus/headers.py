"""Parsers for the tus request headers. Each raises ValueError with a message a client can act on."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import urlsplit

# Offsets and lengths: plain decimal digits, no sign, small enough for a 64-bit file offset.
_UINT = re.compile(r"[0-9]{1,19}")
_KEY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}


def parse_uint(name: str, value: str | None) -> int:
    """A non-negative integer header (Upload-Offset, Upload-Length)."""
    if value is None:
        raise ValueError(f"{name} header is required")
    if not _UINT.fullmatch(value):
        raise ValueError(f"{name} must be a non-negative integer")
    number = int(value)
    if number > 2**63 - 1:
        raise ValueError(f"{name} is too large")
    return number


def parse_metadata(raw: str) -> dict[str, bytes | None]:
    """Upload-Metadata: comma-separated ``key base64value`` pairs, value optional.

    Keys must be non-empty, printable ASCII without spaces or commas, and
    unique; values must be valid, padded base64. ``None`` stands for a key
    sent without a value.
    """
    result: dict[str, bytes | None] = {}
    if raw.strip() == "":
        raise ValueError("Upload-Metadata must contain at least one key")
    for pair in raw.split(","):
        pair = pair.strip(" \t")
        key, sep, value = pair.partition(" ")
        if not key:
            raise ValueError("Upload-Metadata contains an empty key")
        if not set(key) <= _KEY_CHARS:
            raise ValueError(f"Upload-Metadata key {key!r} contains characters that are not allowed")
        if key in result:
            raise ValueError(f"Upload-Metadata key {key!r} appears more than once")
        if " " in value:
            raise ValueError(f"Upload-Metadata value of {key!r} contains a space")
        if value == "":
            result[key] = None
            continue
        try:
            result[key] = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise ValueError(f"Upload-Metadata value of {key!r} is not valid base64") from None
    return result


def metadata_text(metadata: dict[str, bytes | None]) -> dict[str, str | None]:
    """Metadata values as text for the record (invalid UTF-8 is replaced, the raw header keeps the bytes)."""
    return {k: (None if v is None else v.decode("utf-8", "replace")) for k, v in metadata.items()}


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_concat(value: str) -> tuple[str, list[str]]:
    """Upload-Concat: ``partial``, or ``final;<url> <url> ...`` -> ("final", upload ids in order).

    URLs may be absolute or relative; the upload id is the last path segment.
    """
    if value == "partial":
        return "partial", []
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise ValueError("Upload-Concat contains control characters")
    kind, sep, urls = value.partition(";")
    if kind != "final" or not sep:
        raise ValueError("Upload-Concat must be 'partial' or 'final;<url> <url> ...'")
    ids = []
    for url in urls.split(" "):
        if not url:
            continue
        path = urlsplit(url).path.rstrip("/")
        upload_id = path.rsplit("/", 1)[-1]
        if not _ID.fullmatch(upload_id):
            raise ValueError(f"Upload-Concat names {url!r}, which is not an upload URL")
        ids.append(upload_id)
    if not ids:
        raise ValueError("Upload-Concat: final lists no partial uploads")
    return "final", ids
