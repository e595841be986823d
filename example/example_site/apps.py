"""The example site's app: templates, static files and the list of finished uploads."""

from __future__ import annotations

from django.apps import AppConfig


class ExampleSiteConfig(AppConfig):
    name = "example_site"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import receivers  # noqa: F401  (connects to tusbridge.signals.upload_completed)
