"""tusbridge as the benchmark serves it: the production set-up the README describes.

gunicorn (settings from the harness), a private Redis with ``noeviction``
and an append-only file, Django's default middleware stack, DEBUG off, no
access log. Anonymous uploads are allowed so the client needs no login.
"""

from common_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tusbridge"]  # noqa: F405
ROOT_URLCONF = "tusbridge_site.urls"
WSGI_APPLICATION = "tusbridge_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {  # noqa: F405
    **LOGGING,  # noqa: F405
    "loggers": {**LOGGING["loggers"], "tusbridge": {"handlers": ["stderr"], "level": "WARNING"}},  # noqa: F405
}

TUSBRIDGE_REDIS_URL = REDIS_URL  # noqa: F405
TUSBRIDGE_UPLOAD_DIR = UPLOAD_DIR  # noqa: F405
TUSBRIDGE_ALLOW_ANONYMOUS = True
# Every benchmark client connects from 127.0.0.1: no per-address limits.
TUSBRIDGE_MAX_UPLOADS_PER_ADDRESS = 0
TUSBRIDGE_MAX_BYTES_PER_ADDRESS = 0
TUSBRIDGE_CREATIONS_PER_MINUTE = 0
