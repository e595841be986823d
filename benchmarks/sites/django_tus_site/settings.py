"""django-tus 0.5.0 (Django 3.2) at /files/, its state in Django's cache in Redis (django-redis).

django-tus keeps upload state in Django's cache; the default per-process
LocMemCache breaks with 2 workers, so the cache is Redis (the same private
redis-server the harness gives tusbridge). It reads each PATCH body whole
(``request.body``), which Django refuses beyond DATA_UPLOAD_MAX_MEMORY_SIZE
(2.5 MB), so that limit is lifted as a django-tus site must.
"""

import os

from common_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "django_tus"]  # noqa: F405
ROOT_URLCONF = "django_tus_site.urls"
WSGI_APPLICATION = "django_tus_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,  # noqa: F405
    }
}

DATA_UPLOAD_MAX_MEMORY_SIZE = None

MEDIA_ROOT = UPLOAD_DIR  # noqa: F405
TUS_UPLOAD_DIR = os.path.join(UPLOAD_DIR, "incoming")  # noqa: F405
TUS_DESTINATION_DIR = os.path.join(UPLOAD_DIR, "done")  # noqa: F405
# Keep the client's file name (the client sends a unique one per upload).
TUS_FILE_NAME_FORMAT = "keep"
TUS_MAX_FILE_SIZE = 8 << 30
