"""What every benchmark site shares, so that the servers differ only in the upload app.

DEBUG off, Django's default middleware stack (security, sessions, common,
CSRF, auth), sqlite at the path the harness gives, request errors to stderr.
Each site's settings start with ``from common_settings import *``.
"""

import os

SECRET_KEY = "tusbridge-benchmark-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB_PATH", ":memory:"),
    }
}
USE_TZ = True

UPLOAD_DIR = os.environ.get("BENCH_UPLOAD_DIR", "/nonexistent")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
