"""django-chunked-upload 2.0.0 (Django 3.2) as its demo mounts it, with anonymous uploads.

Files go to MEDIA_ROOT (the library's default storage and
``chunked_uploads/%Y/%m/%d`` path), records to sqlite.
"""

from common_settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "chunked_upload"]  # noqa: F405
ROOT_URLCONF = "chunked_upload_site.urls"
WSGI_APPLICATION = "chunked_upload_site.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

MEDIA_ROOT = UPLOAD_DIR  # noqa: F405
