"""The one upload record that every protocol reads and writes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class State(StrEnum):
    UPLOADING = "uploading"
    COMPLETE = "complete"
    TERMINATED = "terminated"
    EXPIRED = "expired"


def new_upload_id() -> str:
    """128 random bits as 32 lowercase hex digits: URL-safe and unguessable."""
    return secrets.token_hex(16)


# Fields stored as JSON rather than as plain strings.
_JSON_FIELDS = ("metadata", "partials", "extra")
_INT_FIELDS = ("offset", "md5_offset")
_OPTIONAL_INT_FIELDS = ("length",)
_FLOAT_FIELDS = ("created_at", "updated_at", "expires_at")
_OPTIONAL_FLOAT_FIELDS = ("completed_at",)


@dataclass
class UploadRecord:
    """State of one upload, shared by the tus and legacy protocols.

    ``length`` is None while the length is deferred. ``metadata_raw`` is the
    ``Upload-Metadata`` header exactly as received (echoed on HEAD) and
    ``metadata`` its parsed form, values decoded from base64 as text.
    """

    id: str
    owner: str
    protocol: str
    length: int | None
    offset: int = 0
    state: State = State.UPLOADING
    metadata_raw: str = ""
    metadata: dict[str, str | None] = field(default_factory=dict)
    filename: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float = 0.0
    completed_at: float | None = None
    # "" for an ordinary upload, "partial" or "final" with the concatenation extension.
    concat: str = ""
    # Upload-Concat exactly as received, echoed on HEAD.
    concat_raw: str = ""
    # Ids of the partial uploads that make up a final upload, in order.
    partials: list[str] = field(default_factory=list)
    # Where a finished file was handed to (name inside the configured Storage).
    stored_name: str = ""
    # Protocol-specific attributes (e.g. the legacy view's extra attrs).
    extra: dict[str, Any] = field(default_factory=dict)
    # The client's address, for an upload without a logged-in owner: its limits are that address's.
    client: str = ""
    # Saved MD5 state (hex) of the first ``md5_offset`` bytes; current only
    # while md5_offset == offset (see chunked_upload.md5).
    md5_state: str = ""
    md5_offset: int = -1

    @property
    def quota_key(self) -> str:
        """Whose limits the upload counts against: its owner, or its client's address ("" for neither)."""
        if self.owner:
            return self.owner
        return f"@{self.client}" if self.client else ""

    @property
    def deferred(self) -> bool:
        return self.length is None

    @property
    def is_complete(self) -> bool:
        return self.state is State.COMPLETE

    @property
    def remaining(self) -> int | None:
        return None if self.length is None else self.length - self.offset

    def to_redis(self) -> dict[str, str]:
        """Flatten to the string fields of a Redis hash."""
        return {f.name: encode_field(f.name, getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes] | dict[str, str]) -> UploadRecord:
        """Rebuild from a Redis hash (bytes or str keys); fields it does not know are skipped."""
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            known = _DECODERS.get(key)
            if known is not None:
                name, decode = known
                kwargs[name] = decode(value)
        for name in _JSON_FIELDS:
            if kwargs.get(name) is None:
                kwargs.pop(name, None)
        kwargs.setdefault("length", None)
        return cls(**kwargs)


def encode_field(name: str, value: Any) -> str:
    """One record field as the string a Redis hash stores."""
    if name in _JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    if isinstance(value, State):
        return value.value
    if isinstance(value, float):
        return repr(value)
    return str(value)


# Decoders take a field's value as Redis returned it, bytes or str (a client
# set to decode responses): int(), float() and json.loads() read both.


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(value: bytes | str) -> int | None:
    return int(value) if value else None


def _float(value: bytes | str) -> float:
    return float(value) if value else 0.0


def _optional_float(value: bytes | str) -> float | None:
    return float(value) if value else None


def _json(value: bytes | str) -> Any:
    return json.loads(value) if value else None


def _state(value: bytes | str) -> State:
    return State(_text(value))


_BY_NAME: dict[str, Callable[[bytes | str], Any]] = {
    **{f.name: _text for f in fields(UploadRecord)},
    **dict.fromkeys(_JSON_FIELDS, _json),
    **dict.fromkeys(_INT_FIELDS, int),
    **dict.fromkeys(_OPTIONAL_INT_FIELDS, _optional_int),
    **dict.fromkeys(_FLOAT_FIELDS, _float),
    **dict.fromkeys(_OPTIONAL_FLOAT_FIELDS, _optional_float),
    "state": _state,
}

# How each stored field is read back (every field of UploadRecord has one),
# looked up by the field name as bytes or as str.
_DECODERS: dict[bytes | str, tuple[str, Callable[[bytes | str], Any]]] = {
    **{name: (name, decode) for name, decode in _BY_NAME.items()},
    **{name.encode(): (name, decode) for name, decode in _BY_NAME.items()},
}
