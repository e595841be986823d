from django.apps import AppConfig


class LegacyAppConfig(AppConfig):
    name = "tests.legacyapp"
    label = "legacyapp"
    default_auto_field = "django.db.models.BigAutoField"
