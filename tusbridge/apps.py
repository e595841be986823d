import sys

from django.apps import AppConfig


class TusbridgeConfig(AppConfig):
    name = "tusbridge"
    verbose_name = "tusbridge resumable uploads"

    def ready(self) -> None:
        from . import checks

        del checks  # imported for its side effect: it registers the system checks
        if "gunicorn.workers" in sys.modules:
            # Served by gunicorn: read request bodies straight from its sockets.
            from . import gunicorn

            gunicorn.install()
