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
from typing import Any

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


# A chunk that goes on with a kept lock is hashed after its response, while the
# client prepares the next one, if it is no longer than this; a longer one is
# hashed as it is written. Hashing a large chunk later saves the client nothing
# (its next chunk is on the way already, and waits) and costs a copy of it.
MAX_DEFERRED = 1 << 20


class RunningMD5:
    """The running MD5 of a legacy upload, stored in its record (a ``locking.Tracker``).

    Stored with every advance, so that completion needs no re-read; where
    the server keeps the lock between chunks (``tusbridge.gunicorn.keeping``)
    the next chunk's bytes are hashed after its response, and the state is
    saved when the lock goes back.
    """

    def __init__(self, upload_id: str, md5: ResumableMD5) -> None:
        self.upload_id = upload_id
        self.md5 = md5
        # Bytes waiting to be hashed (None: hash them as they come), how many
        # of this chunk's bytes waited so far, and whether an advance counted
        # the waiting ones already.
        self._waiting: list[bytes] | None = None
        self._waiting_size = 0
        self._waiting_counted = False
        # Bytes at the start of the next writes that were hashed ahead (see ``adopt``).
        self._prehashed = 0
        # Whether ``md5`` took in bytes that no advance counted; whether the
        # record holds its state; whether it still describes an offset at all.
        self._uncounted = False
        self._stored = True
        self._valid = True

    @classmethod
    def new(cls, upload_id: str) -> RunningMD5 | None:
        """For a new upload (None where the state cannot be saved: completion reads the file)."""
        return cls(upload_id, ResumableMD5()) if available() else None

    @classmethod
    def resume(cls, record: Any) -> RunningMD5 | None:
        """For an upload whose record holds the MD5 of all its bytes so far; None otherwise."""
        if record.md5_state and record.md5_offset == record.offset and available():
            return cls(record.id, ResumableMD5(bytes.fromhex(record.md5_state)))
        return None

    def adopt(self, md5: ResumableMD5, base: bytes, covering: int) -> bool:
        """Go on with ``md5``, begun from state ``base`` and fed the next ``covering`` bytes ahead of their write.

        False (and nothing changes) unless ``base`` is this tracker's state with nothing taken in since.
        """
        if self._uncounted or self._waiting or self.md5.state != base:
            return False
        self.md5 = md5
        self._prehashed = covering
        return True

    def update(self, data: bytes | memoryview, /) -> None:
        if self._prehashed:
            skip = min(self._prehashed, len(data))
            self._prehashed -= skip
            data = data[skip:]
            if not data:
                return
        if self._waiting_counted:
            self._hash_waiting()
        if self._waiting is not None and self._waiting_size < MAX_DEFERRED:
            self._waiting.append(data if type(data) is bytes else bytes(data))
            self._waiting_size += len(data)
            return
        self._hash_waiting()
        self._uncounted = True
        self.md5.update(data)

    def fields_for_advance(self, offset: int, *, keeping: bool) -> dict[str, object] | None:
        if not keeping:
            self._hash_waiting()
        # Everything taken in so far is counted by this advance; the next chunk may wait afresh.
        self._uncounted = False
        self._waiting_size = 0
        self._waiting_counted = True
        if self._waiting or not self._valid:
            self._stored = False
            fields = None
        else:
            self._stored = True
            fields = stored_fields(self.md5, offset)
            recent_states.remember(self.upload_id, offset, self.md5.state)
        if keeping and self._waiting is None:
            self._waiting = []  # the client's next chunk is hashed after its response
        elif not keeping:
            self._waiting = None
        return fields

    def unsaved_fields(self, offset: int) -> dict[str, object] | None:
        if self._stored or not self._valid or self._uncounted or self._waiting:
            return None
        return stored_fields(self.md5, offset)

    def settle(self) -> None:
        self._hash_waiting()

    def discard(self) -> None:
        if self._waiting and not self._waiting_counted:
            self._waiting.clear()
            self._waiting_size = 0
        if self._uncounted:
            # The state took in bytes that will not count: it describes no offset of the upload.
            self._valid = False
        self._prehashed = 0

    def _hash_waiting(self) -> None:
        if self._waiting:
            if not self._waiting_counted:
                self._uncounted = True
            for data in self._waiting:
                self.md5.update(data)
            self._waiting.clear()
        self._waiting_counted = False


def hexdigest(record: Any, data: Any, read_size: int) -> str:
    """MD5 of an upload's bytes: from the saved running state when it is current, else one read of ``data``."""
    if record.md5_state and record.md5_offset == record.offset and available():
        return ResumableMD5(bytes.fromhex(record.md5_state)).hexdigest()
    digest = hashlib.md5()
    with data.open(record.id) as fh:
        while piece := fh.read(read_size):
            digest.update(piece)
    return digest.hexdigest()
