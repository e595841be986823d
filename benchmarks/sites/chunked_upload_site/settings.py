"""django-chunked-upload 2.0.0 (Django 3.2) as its demo mounts it, with anonymous uploads.

Same middleware stack as the tusbridge site. Files go to MEDIA_ROOT (the
library's default storage and ``chunked_uploads/%Y/%m/%d`` path), records to sqlite.
"""

import os

SECRET_KEY = "tusbridge-benchmark-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "chunked_upload",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "chunked_upload_site.urls"
WSGI_APPLICATION = "chunked_upload_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB_PATH", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

MEDIA_ROOT = os.environ.get("BENCH_UPLOAD_DIR", "/nonexistent")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
