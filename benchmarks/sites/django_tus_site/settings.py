"""django-tus 0.5.0 (Django 3.2) at /files/, its state in Django's cache in Redis (django-redis).

django-tus keeps upload state in Django's cache; the default per-process
LocMemCache breaks with 2 workers, so the cache is Redis (the same private
redis-server the harness gives tusbridge). It reads each PATCH body whole
(``request.body``), which Django refuses beyond DATA_UPLOAD_MAX_MEMORY_SIZE
(2.5 MB), so that limit is lifted as a django-tus site must.
"""

import os

SECRET_KEY = "tusbridge-benchmark-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_tus",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "django_tus_site.urls"
WSGI_APPLICATION = "django_tus_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BENCH_DB_PATH", ":memory:"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"),
    }
}

DATA_UPLOAD_MAX_MEMORY_SIZE = None

_data = os.environ.get("BENCH_UPLOAD_DIR", "/nonexistent")
MEDIA_ROOT = _data
TUS_UPLOAD_DIR = os.path.join(_data, "incoming")
TUS_DESTINATION_DIR = os.path.join(_data, "done")
# Keep the client's file name (the client sends a unique one per upload).
TUS_FILE_NAME_FORMAT = "keep"
TUS_MAX_FILE_SIZE = 8 << 30

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
