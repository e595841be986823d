"""Lock tokens that name the process holding them, so that a dead holder can be recognised.

A worker killed while it holds an upload's lock (SIGKILL, out of memory)
never releases it: without more, the upload stays locked until the lock's
TTL runs out, and a client that reconnects meanwhile is refused. A token
made here starts with where its process lives: the kernel's boot id and the
process's PID namespace, which together name one set of PIDs on one running
machine, then the PID. A request on the same machine, in the same namespace,
that finds a token whose process is gone may remove that lock at once.
Anything else (another host or container, a PID that is alive again, a
token in another format) is left to the TTL.
"""

from __future__ import annotations

import functools
import os
import secrets
import weakref


@functools.cache
def _namespace() -> str:
    """The boot id and PID-namespace inode of this process, or "" where they cannot be read."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot_id = fh.read().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id}.{pid_namespace}" if boot_id else ""


def new_token() -> str:
    """A lock token: ``<namespace>:<pid>:<random>``, or only random where the namespace is unknown."""
    namespace = _namespace()
    random_part = secrets.token_hex(16)
    if not namespace:
        return random_part
    return f"{namespace}:{os.getpid()}:{random_part}"


class LiveLocks:
    """The lock tokens that requests of this process hold now.

    A token made here that is not among them belongs to a request that has
    ended: its release did not reach the record store (it was down), or the
    store lost the release (a restart from an append-only file that missed
    its last second). Such a lock may be removed at once, by this process or
    when another process asks for it. A holder that is dropped without
    letting go (a request abandoned by its server) leaves the set with it.
    """

    def __init__(self) -> None:
        self._holders: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()
        self._pinned: set[str] = set()

    def add(self, token: str, holder: object) -> None:
        """``token`` is live while ``holder`` exists (and until ``discard``)."""
        self._holders[token] = holder

    def pin(self, token: str) -> None:
        """``token`` is live until ``discard`` (a caller that holds only the token)."""
        self._pinned.add(token)

    def discard(self, token: str) -> None:
        self._holders.pop(token, None)
        self._pinned.discard(token)

    def __contains__(self, token: object) -> bool:
        return token in self._holders or token in self._pinned

    def __len__(self) -> int:
        return len(self._holders) + len(self._pinned)


live_locks = LiveLocks()


def process_of(token: str) -> str:
    """The process that made ``token`` (``<namespace>:<pid>``), or "" for a token that does not say."""
    namespace, _, rest = token.partition(":")
    pid_text, sep, _ = rest.partition(":")
    return f"{namespace}:{pid_text}" if namespace and sep and pid_text.isdigit() else ""


def this_process() -> str:
    """This process, as its tokens name it ("" where the namespace cannot be read)."""
    namespace = _namespace()
    return f"{namespace}:{os.getpid()}" if namespace else ""


def made_here(token: str) -> bool:
    """Whether ``token`` was made by this process."""
    namespace, _, rest = token.partition(":")
    pid_text, _, _ = rest.partition(":")
    return bool(namespace) and namespace == _namespace() and pid_text == str(os.getpid())


def holder_has_ended(token: str) -> bool:
    """True when ``token`` was made here and no request of this process holds it any more."""
    return made_here(token) and token not in live_locks


def holder_is_gone(token: str) -> bool:
    """True only when ``token`` was made in this PID namespace by a process that no longer exists."""
    namespace, _, rest = token.partition(":")
    pid_text, _, _ = rest.partition(":")
    if not namespace or namespace != _namespace() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's process, for one)
        return False
    return False
