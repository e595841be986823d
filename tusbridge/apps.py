from django.apps import AppConfig


class TusbridgeConfig(AppConfig):
    name = "tusbridge"
    verbose_name = "tusbridge resumable uploads"

    def ready(self) -> None:
        # Importing registers the system checks with Django's check framework.
        from . import checks  # noqa: F401
