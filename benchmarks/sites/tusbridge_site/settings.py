"""tusbridge as the benchmark serves it: the production set-up the README describes.

gunicorn (2 workers), a private Redis with ``noeviction`` and an append-only
file, the default middleware stack, DEBUG off, no access log. Anonymous uploads
are allowed so the client needs no login. Paths come from the harness.
"""

import os

SECRET_KEY = "tusbridge-benchmark-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tusbridge",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "tusbridge_site.urls"
WSGI_APPLICATION = "tusbridge_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB_PATH", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
        "tusbridge": {"handlers": ["stderr"], "level": "WARNING"},
    },
}

TUSBRIDGE_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")
TUSBRIDGE_UPLOAD_DIR = os.environ.get("BENCH_UPLOAD_DIR", "/nonexistent")
TUSBRIDGE_ALLOW_ANONYMOUS = True
