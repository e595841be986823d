from django.apps import AppConfig
from django.core.signals import request_finished, request_started


class TusbridgeConfig(AppConfig):
    name = "tusbridge"
    verbose_name = "tusbridge resumable uploads"

    def ready(self) -> None:
        from . import checks, keeping

        del checks  # imported for its side effect: it registers the system checks
        request_started.connect(keeping.request_started, dispatch_uid="tusbridge.keeping.started")
        request_finished.connect(keeping.request_finished, dispatch_uid="tusbridge.keeping.finished")
