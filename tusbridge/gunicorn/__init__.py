"""What tusbridge adds when gunicorn serves it; nothing in the core imports this package.

- ``bodies``: request bodies read straight from gunicorn's socket, with read
  timeouts (plugged into ``tusbridge.bodies.hooks`` by ``install``; Django's
  app config calls it in a process that gunicorn runs);
- ``config``: a gunicorn configuration hook (``post_worker_init``) with
  which uploads in flight also stop when a worker retires by itself
  (``--max-requests``), not only on a stop signal;
- ``workers.ThreadWorker``: a gthread worker with fewer thread hand-overs,
  which answers HEAD and OPTIONS on its main thread (``inline``) and keeps a
  legacy upload's lock between the chunks of one connection (``keeping``);
  both plug into ``tusbridge.locking.hooks`` when the worker starts.

gunicorn is a declared extra: ``pip install tusbridge[gunicorn]``.
"""

from __future__ import annotations


def install() -> None:
    """Read request bodies the gunicorn way, and stop them when the worker is told to stop.

    Called in the worker process once gunicorn installed its signal handlers
    (Django's app config does it when the application loads there).
    """
    from .. import shutdown
    from ..bodies import hooks
    from .bodies import SocketBody, take_buffered, timed_reads

    hooks.direct_body = SocketBody.attach
    hooks.take_buffered = take_buffered
    hooks.timed_reads = timed_reads
    shutdown.on_signals()
