"""gunicorn settings hooks for tusbridge: ``gunicorn -c python:tusbridge.gunicorn.config ...``.

With them, an upload in flight stops (counting what it has and letting go
of its lock) whenever its worker stops serving: on a stop signal, and when
the worker retires by itself after ``--max-requests``. A project with a
configuration file of its own imports ``post_worker_init`` into it.
"""

from __future__ import annotations

from typing import Any

from .. import shutdown


def post_worker_init(worker: Any) -> None:
    """The worker is about to serve: its requests stop once it is no longer alive."""
    shutdown.watch(lambda: not worker.alive)
