"""An MD5 whose running state can be saved between requests.

The legacy protocol's completion request names the md5 of the whole file.
Hashing each chunk as it streams in, and keeping the hash state in the
upload's record, makes completion constant-time instead of a re-read of the
file. hashlib's objects cannot be serialised, but OpenSSL's low-level
``MD5_Init``/``MD5_Update``/``MD5_Final`` keep their whole state in a small
plain struct, which can. Where libcrypto or those functions are missing, or
the struct does not round-trip exactly, ``available()`` is False and callers
read the file once instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import threading
from collections import OrderedDict

# MD5_CTX: A, B, C, D, Nl, Nh (32-bit each), data[16] (32-bit each), num.
_CTX_SIZE = 4 * 6 + 4 * 16 + 4


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("crypto"), "libcrypto.so.3", "libcrypto.so"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            for fn in (lib.MD5_Init, lib.MD5_Update, lib.MD5_Final):
                fn.restype = ctypes.c_int
            lib.MD5_Update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
            return lib
        except (OSError, AttributeError):
            continue
    return None


class ResumableMD5:
    """MD5 over bytes fed across many requests; ``state`` is what to store in between."""

    def __init__(self, state: bytes | None = None) -> None:
        lib = _libcrypto()
        if lib is None:
            raise RuntimeError("libcrypto's MD5 functions are not available")
        self._lib = lib
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            lib.MD5_Init(self._ctx)
        else:
            if len(state) != _CTX_SIZE:
                raise ValueError("not an MD5 state")
            ctypes.memmove(self._ctx, state, _CTX_SIZE)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        if not data:
            return
        if isinstance(data, memoryview) and data.readonly:
            data = data.tobytes()
        elif not isinstance(data, bytes):
            # A writable buffer (a piece of a reused read buffer) is passed without a copy.
            data = (ctypes.c_char * len(data)).from_buffer(data)
        self._lib.MD5_Update(self._ctx, data, len(data))

    @property
    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        """The digest so far; the running state is left as it was."""
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(16)
        self._lib.MD5_Final(out, copy)
        return out.raw.hex()


@functools.cache
def available() -> bool:
    """True when the saved state reproduces hashlib's MD5 exactly on this machine."""
    try:
        sample = bytes(range(256)) * 41  # crosses several 64-byte blocks, ends mid-block
        first = ResumableMD5()
        first.update(sample[:1000])
        second = ResumableMD5(first.state)
        second.update(sample[1000:])
        return second.hexdigest() == hashlib.md5(sample).hexdigest()
    except (RuntimeError, ValueError, OSError):
        return False


class RecentStates:
    """The MD5 states this process stored last, by upload and offset.

    A client sends its next chunk to the process that answered the last one
    more often than not (kept-alive connections). That process can then hash
    the chunk's first bytes from the state it remembers while the request
    for the upload's lock and record is on its way, and keep the result when
    the record shows the same state. A bounded map: forgetting costs only
    the overlap.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._states: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, upload_id: str, offset: int, state: bytes) -> None:
        with self._lock:
            self._states[upload_id] = (offset, state)
            self._states.move_to_end(upload_id)
            if len(self._states) > self._size:
                self._states.popitem(last=False)

    def recall(self, upload_id: str, offset: int) -> bytes | None:
        """The state stored with the upload at ``offset``, if this process stored it."""
        with self._lock:
            entry = self._states.get(upload_id)
        if entry is None or entry[0] != offset:
            return None
        return entry[1]


recent_states = RecentStates()


def stored_fields(md5: ResumableMD5, offset: int) -> dict[str, object]:
    """The record fields that save ``md5`` as the state of an upload's first ``offset`` bytes."""
    return {"md5_state": md5.state.hex(), "md5_offset": offset}
