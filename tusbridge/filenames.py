"""File names from clients, made safe to use as the last part of a storage path."""

from __future__ import annotations

import unicodedata

_MAX_BYTES = 200
_FALLBACK = "upload"


def safe_filename(name: str | None) -> str:
    """Keep what a person would recognise of ``name`` but nothing that can leave a directory.

    Path separators of any platform end the name's directory part, control
    characters (NUL, CR, LF...) and bidi overrides are dropped, leading dots
    and spaces go (no hidden files, no ``..``), and the result is capped at a
    length every common filesystem accepts.
    """
    if not name:
        return _FALLBACK
    name = unicodedata.normalize("NFC", name)
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    name = name.strip().lstrip(". ")
    encoded = name.encode("utf-8")
    if len(encoded) > _MAX_BYTES:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext.encode()) <= 16 else ""
        keep = _MAX_BYTES - len(ext.encode()) - (1 if ext else 0)
        stem_bytes = (stem if ext else name).encode("utf-8")[:keep]
        name = stem_bytes.decode("utf-8", "ignore") + (f".{ext}" if ext else "")
    return name or _FALLBACK
