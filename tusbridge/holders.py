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
